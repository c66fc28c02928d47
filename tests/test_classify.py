"""course_lib.classify: train_classifier on a tiny image problem (which quadrant is bright), its
determinism and augmentation hook, and batched prediction."""

import pytest
import torch
from torch import nn

from course_lib import classify as K
from course_lib.conv import SmallCNN


def _quadrants(n=200, seed=0):
    """n noisy 1×8×8 images; the label is the bright 4×4 quadrant (0 top left, 1 top right, 2 bottom
    left, 3 bottom right)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    x = 0.3 * torch.randn(n, 1, 8, 8, generator=g)
    for i, label in enumerate(labels.tolist()):
        top, left = 4 * (label // 2), 4 * (label % 2)
        x[i, 0, top:top + 4, left:left + 4] += 1.0
    return x, labels


def _model(seed=0):
    torch.manual_seed(seed)
    return SmallCNN(in_channels=1, num_classes=4, channels=(8,), image_size=8)


def _train(seed=0, model_seed=0, epochs=4, **kwargs):
    x, y = _quadrants()
    model = _model(model_seed)
    torch.manual_seed(123)  # dropout draws from the global generator
    result = K.train_classifier(model, x, y, epochs=epochs, batch_size=32, lr=1e-2, seed=seed, progress=False,
                                **kwargs)
    return model, result


def test_learns_the_quadrant_problem():
    model, result = _train()
    x, y = _quadrants(seed=1)  # fresh images
    assert K.accuracy_of(model, x, y) >= 0.95
    assert len(result.history.train_loss) == 4
    assert result.history.train_loss[-1] < result.history.train_loss[0]
    assert result.parameters == K.parameter_count(model) == sum(p.numel() for p in model.parameters())
    assert result.parameters == (9 * 8 + 2 * 8) + (8 * 4 * 4 + 1) * 4
    assert result.seconds > 0 and result.images_seen == 4 * 200
    assert result.images_per_second == pytest.approx(800 / result.seconds)


def test_parameter_count_skips_frozen_parameters():
    model = _model()
    model.stages.requires_grad_(False)
    assert K.parameter_count(model) == (8 * 4 * 4 + 1) * 4


def test_same_seed_same_weights():
    a, _ = _train(epochs=2)
    b, _ = _train(epochs=2)
    c, _ = _train(epochs=2, seed=1)  # another shuffle
    for (name, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        torch.testing.assert_close(pa, pb, atol=0, rtol=0, msg=name)
    assert not all(torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))


def test_mismatched_lengths():
    x, y = _quadrants(20)
    with pytest.raises(ValueError, match="same length"):
        K.train_classifier(_model(), x, y[:-1], epochs=1, progress=False)
    with pytest.raises(ValueError, match="epochs"):
        K.train_classifier(_model(), x, y, epochs=0, progress=False)


def test_augment_sees_every_training_batch():
    seen = []

    def augment(batch):
        seen.append(batch.shape[0])
        return batch

    _train(epochs=2, augment=augment)
    assert seen == [32] * 6 + [8] + [32] * 6 + [8]  # 200 images in batches of 32, two epochs


def test_augment_output_is_what_trains():
    # an augmentation that erases the images leaves nothing to learn: chance accuracy on clean inputs
    model, _ = _train(epochs=3, augment=torch.zeros_like)
    x, y = _quadrants(seed=1)
    assert K.accuracy_of(model, x, y) <= 0.4


def test_prediction_helpers_agree():
    x, y = _quadrants(50, seed=2)
    model = _model()
    for m in model.modules():  # some non-trivial running statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.fill_(0.2)
            m.running_var.fill_(1.5)
    model.train()
    logits = K.predict_logits(model, x, batch_size=7)  # uneven batches, computed in eval mode
    assert model.training  # the caller's mode is restored
    assert logits.shape == (50, 4) and not logits.requires_grad
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(K.predict_logits(model, x), logits, atol=1e-5, rtol=1e-5)
    correct = K.correct_of(model, x, y, batch_size=16)
    assert correct.dtype == torch.bool and correct.shape == (50,)
    assert torch.equal(correct, logits.argmax(-1) == y)
    assert K.accuracy_of(model, x, y, batch_size=9) == pytest.approx(correct.float().mean().item())
    assert not model.training
    assert all(p.grad is None for p in model.parameters())
