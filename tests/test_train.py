"""course_lib.train: metrics against scikit-learn, and the training loop's behaviour."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from sklearn import metrics as skm
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from course_lib import train


def _labels(n=200, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, c, (n,), generator=g)
    predictions = torch.where(torch.rand(n, generator=g) < 0.6, targets, torch.randint(0, c, (n,), generator=g))
    return predictions, targets


@pytest.mark.parametrize("seed", range(3))
def test_metrics_match_scikit_learn(seed):
    predictions, targets = _labels(seed=seed)
    assert train.accuracy(predictions, targets) == pytest.approx(skm.accuracy_score(targets, predictions))
    cm = train.confusion_matrix(predictions, targets, 5)
    assert cm.tolist() == skm.confusion_matrix(targets, predictions, labels=range(5)).tolist()
    p, r, f = train.precision_recall_f1(predictions, targets, 5, average=None)
    sp, sr, sf, _ = skm.precision_recall_fscore_support(targets, predictions, labels=range(5), zero_division=0)
    torch.testing.assert_close(p, torch.tensor(sp), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(r, torch.tensor(sr), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(f, torch.tensor(sf), rtol=1e-12, atol=1e-12)
    macro = train.precision_recall_f1(predictions, targets, 5)
    expected = skm.precision_recall_fscore_support(targets, predictions, average="macro", zero_division=0)[:3]
    assert macro == pytest.approx(expected)


def test_a_class_never_predicted_or_present_scores_zero():
    predictions, targets = torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1])
    p, r, f = train.precision_recall_f1(predictions, targets, 3, average=None)
    assert p.tolist() == pytest.approx([0.5, 1.0, 0.0]) and r.tolist() == pytest.approx([1.0, 0.5, 0.0])
    assert f[2] == 0


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: train.accuracy(torch.zeros(3), torch.zeros(4)), "same shape"),
        (lambda: train.accuracy(torch.zeros(3, 2), torch.zeros(3, 2)), "1-D class indices"),
        (lambda: train.confusion_matrix(torch.tensor([0, 3]), torch.tensor([0, 1]), 3), r"predictions must be in \[0, 2\]"),
        (lambda: train.precision_recall_f1(torch.tensor([0]), torch.tensor([0]), 2, average="micro"), "average must be"),
    ],
)
def test_metrics_reject_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def _blobs(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centres = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.5]])
    return centres[y] + 0.5 * torch.randn(n, 2, generator=g), y


def _loaders():
    x, y = _blobs()
    train_set, val_set = TensorDataset(x[:200], y[:200]), TensorDataset(x[200:], y[200:])
    return (DataLoader(train_set, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0)),
            DataLoader(val_set, batch_size=64))


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3))


def test_fit_learns_and_records_one_entry_per_epoch():
    train_loader, val_loader = _loaders()
    model = _model()
    history = train.fit(model, torch.optim.AdamW(model.parameters(), 1e-2), train_loader, 8,
                        val_loader=val_loader, progress=False)
    assert history.epoch == list(range(1, 9))
    assert all(len(v) == 8 for v in history.as_dict().values())
    assert history.train_loss[-1] < history.train_loss[0] / 3
    assert history.val_accuracy[-1] > 0.9
    assert history.best_epoch == 1 + min(range(8), key=lambda i: history.val_loss[i])
    assert train.evaluate(model, val_loader)["accuracy"] == pytest.approx(history.val_accuracy[-1])


def test_scheduler_steps_once_per_batch():
    train_loader, _ = _loaders()
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step)
    history = train.fit(model, optimizer, train_loader, 2, scheduler=scheduler, progress=False)
    assert history.lr == pytest.approx([0.5**7, 0.5**14])  # 7 batches per epoch


def test_gradient_clipping_bounds_the_update():
    x, y = torch.ones(4, 1) * 1000, torch.zeros(4, dtype=torch.long)
    for clip, bound in ((None, None), (0.01, 0.01 + 1e-6)):
        model = nn.Linear(1, 2)
        before = [p.detach().clone() for p in model.parameters()]
        train.fit(model, torch.optim.SGD(model.parameters(), lr=1.0), [(x, y)], 1, max_grad_norm=clip, progress=False)
        step = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)]).norm()
        if bound is None:
            assert step > 1
        else:
            assert step <= bound


def test_early_stopping_stops_and_restores_the_best_weights():
    train_loader, val_loader = _loaders()
    model = _model()
    # A learning rate this large makes the validation loss get worse after the first epochs.
    history = train.fit(model, torch.optim.SGD(model.parameters(), lr=5.0), train_loader, 30,
                        val_loader=val_loader, early_stopping_patience=2, progress=False)
    assert history.stopped_early and len(history.epoch) < 30
    assert len(history.epoch) - history.best_epoch == 2
    assert train.evaluate(model, val_loader)["loss"] == pytest.approx(min(history.val_loss))


class _DictModel(nn.Module):
    """Takes input_ids and an attention mask, returns an object with .logits (like transformers)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.out = nn.Linear(8, 10)

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(logits=self.out(self.embed(input_ids) * attention_mask[..., None]))


def test_dict_batches_token_logits_and_ignore_index():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 10, (16, 6), generator=g)
    labels = ids.clone()
    labels[:, 4:] = -100  # padding positions
    mask = (labels != -100).long()
    batches = [{"input_ids": ids[i:i + 4], "attention_mask": mask[i:i + 4], "labels": labels[i:i + 4]} for i in range(0, 16, 4)]
    model = _DictModel()
    history = train.fit(model, torch.optim.Adam(model.parameters(), 5e-2), batches, 20, val_loader=batches, progress=False)
    assert history.val_accuracy[-1] == 1.0  # copying tokens is learnable; padding is not counted
    logits, targets = train.predict(model, batches)
    assert logits.shape == (96, 10) and targets.shape == (96,)


def test_to_device_moves_nested_batches():
    batch = {"a": torch.zeros(1), "b": [torch.ones(1), (torch.ones(2), "text")]}
    moved = train.to_device(batch, "cpu")
    assert moved["b"][1][1] == "text" and isinstance(moved["b"][1], tuple)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(epochs=0), ValueError, "epochs must be an int >= 1, got 0"),
        (dict(epochs=1, early_stopping_patience=2), ValueError, "needs a val_loader"),
        (dict(epochs=1, max_grad_norm=0), ValueError, "max_grad_norm must be > 0"),
        (dict(epochs=1, train_loader=[]), ValueError, "train_loader yielded no batches"),
        (dict(epochs=1, train_loader=[(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long), 1)]), ValueError,
         r"a batch must be \(inputs, targets\)"),
        (dict(epochs=1, train_loader=[{"x": torch.zeros(1)}]), ValueError, "must have a 'labels' entry"),
    ],
)
def test_fit_rejects_bad_arguments(kwargs, error, message):
    model = _model()
    args = dict(train_loader=_loaders()[0], progress=False) | kwargs
    with pytest.raises(error, match=message):
        train.fit(model, torch.optim.SGD(model.parameters(), 0.1), **args)


def test_a_diverging_loss_stops_training_with_a_hint():
    model = nn.Linear(1, 2)
    with torch.no_grad():
        model.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        train.fit(model, torch.optim.SGD(model.parameters(), 0.1), [(torch.ones(2, 1), torch.zeros(2, dtype=torch.long))], 1, progress=False)


def test_fit_uses_the_loss_function_given():
    calls = []

    def loss_fn(logits, targets):
        calls.append(logits.shape)
        return F.cross_entropy(logits, targets)

    model = _model()
    train.fit(model, torch.optim.SGD(model.parameters(), 0.1), [_blobs(8)], 1, loss_fn=loss_fn, progress=False)
    assert calls == [(8, 3)]


# ---------------------------------------------------------------------------------------------
# Learning-rate schedule and calibration


@pytest.mark.parametrize("warmup, total", [(0, 10), (3, 10), (10, 10), (7, 50)])
def test_linear_warmup_schedule_matches_transformers(warmup, total):
    from transformers import get_linear_schedule_with_warmup

    def lrs(make):
        optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.5)
        scheduler = make(optimizer)
        seen = []
        for _ in range(total + 2):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return seen

    ours = lrs(lambda o: train.linear_warmup_schedule(o, warmup, total))
    theirs = lrs(lambda o: get_linear_schedule_with_warmup(o, warmup, total))
    assert ours == pytest.approx(theirs, abs=1e-12)
    assert ours[total] == 0 and (warmup == total or max(ours) == pytest.approx(0.5))


@pytest.mark.parametrize("warmup, total, message", [(5, 0, "total_steps must be an int >= 1, got 0"), (11, 10, "warmup_steps must be <= total_steps=10, got 11"),
                                                    (1.5, 10, "warmup_steps must be an int >= 0, got 1.5")])
def test_schedule_rejects_bad_steps(warmup, total, message):
    with pytest.raises(ValueError, match=message):
        train.linear_warmup_schedule(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), warmup, total)


def test_reliability_bins_a_hand_made_example():
    probabilities = torch.tensor([[0.95, 0.05], [0.1, 0.9], [0.35, 0.65], [0.6, 0.4], [0.0, 1.0]])
    targets = torch.tensor([0, 0, 1, 0, 1])
    table = train.reliability(probabilities, targets, n_bins=5)
    assert table["count"].tolist() == [0, 0, 0, 2, 3]  # 0.65, 0.6 | 0.95, 0.9, 1.0
    torch.testing.assert_close(table["confidence"][3:], torch.tensor([0.625, 2.85 / 3], dtype=torch.float64))
    torch.testing.assert_close(table["accuracy"][3:], torch.tensor([1.0, 2 / 3], dtype=torch.float64))
    assert table["accuracy"][:3].isnan().all()
    expected = (2 * abs(1.0 - 0.625) + 3 * abs(2 / 3 - 2.85 / 3)) / 5
    assert train.expected_calibration_error(probabilities, targets, 5) == pytest.approx(expected)


def test_a_calibrated_model_has_a_small_error_and_an_overconfident_one_a_large_one():
    g = torch.Generator().manual_seed(0)
    confidence = 0.5 + 0.5 * torch.rand(20000, generator=g)
    right = torch.rand(20000, generator=g) < confidence  # right exactly as often as it claims
    probabilities = torch.stack([confidence, 1 - confidence], 1)
    targets = torch.where(right, 0, 1)
    assert train.expected_calibration_error(probabilities, targets) < 0.02
    sharpened = torch.softmax(torch.log(probabilities) * 4, 1)
    assert train.expected_calibration_error(sharpened, targets) > 0.1


@pytest.mark.parametrize("probabilities, targets, n_bins, message", [
    (torch.rand(4), torch.zeros(4), 10, r"probabilities must be an \(N, C\) tensor"),
    (torch.rand(4, 2), torch.zeros(3), 10, r"targets must have shape \(4,\)"),
    (torch.rand(4, 2), torch.zeros(4), 0, "n_bins must be an int >= 1, got 0"),
])
def test_reliability_rejects_bad_input(probabilities, targets, n_bins, message):
    with pytest.raises(ValueError, match=message):
        train.reliability(probabilities, targets, n_bins)


def test_reliability_diagram_draws_one_bar_per_filled_bin():
    import matplotlib

    matplotlib.use("Agg")
    from course_lib.plots import plot_reliability

    probabilities = torch.tensor([[0.95, 0.05], [0.09, 0.91], [0.35, 0.65], [0.6, 0.4]])
    ax = plot_reliability(train.reliability(probabilities, torch.tensor([0, 0, 1, 0]), 10))
    bars = ax.containers[0]
    assert [round(bar.get_x(), 6) for bar in bars] == [0.6, 0.9]  # confidences 0.6, 0.65 | 0.91, 0.95
    assert [bar.get_height() for bar in bars] == [1.0, 0.5]
    assert [t.get_text() for t in ax.texts] == ["2", "2"]


def test_train_step_is_zero_grad_backward_clip_step_schedule():
    x, y = _blobs(16)
    ours, theirs = _model(), _model()
    opt_a, opt_b = torch.optim.SGD(ours.parameters(), 0.5), torch.optim.SGD(theirs.parameters(), 0.5)
    sched = torch.optim.lr_scheduler.StepLR(opt_a, step_size=1, gamma=0.5)
    for p in ours.parameters():  # stale gradients must not leak into the step
        p.grad = torch.full_like(p, 100.0)
    loss = train.train_step(opt_a, F.cross_entropy(ours(x), y), scheduler=sched, max_grad_norm=0.1)
    reference = F.cross_entropy(theirs(x), y)
    reference.backward()
    nn.utils.clip_grad_norm_(theirs.parameters(), 0.1)
    opt_b.step()
    assert not loss.requires_grad and loss.item() == pytest.approx(reference.item())
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b)
    assert opt_a.param_groups[0]["lr"] == 0.25


def test_fit_reads_the_loss_once_per_logging_interval(monkeypatch):
    """A value read from the device (`.item()`) makes the CPU wait for it: once every `log_every`
    steps and once per epoch, not several times a step."""
    reads = []
    original = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda self: reads.append(1) or original(self))
    batches = [_blobs(8) for _ in range(12)]  # 12 steps per epoch
    model = _model()
    train.fit(model, torch.optim.SGD(model.parameters(), 0.1), batches, 2, log_every=5, progress=False)
    assert len(reads) == 2 * (12 // 5 + 1)
