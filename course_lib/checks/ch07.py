"""Checks of chapter 07 (fine-tuning)."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F

from course_lib.checks.verdict import (
    UNREADABLE,
    Check,
    CheckFailed,
    call,
    expect_fields,
    expect_number,
    expect_unchanged,
    generator,
    seeded,
)
from course_lib.plain import type_name


def _as_number(value: Any) -> Any:
    """Probe side: a value with ``.item()`` (a NumPy scalar or 0-d array, a one-element tensor)
    becomes the Python number ``.item()`` gives, as the old check did before comparing, so a
    ``compute_metrics`` that returns NumPy numbers (``np.float32`` does not cross the wall as a
    float) still passes. A value whose ``.item()`` fails (an array of many numbers) stays as it is
    and reaches the judge as a non-number."""
    if hasattr(value, "item"):
        try:
            return value.item()
        except Exception:  # noqa: BLE001 (the judge reports the value's type instead)
            return value
    return value


class ComputeMetrics(Check):
    """``compute_metrics(eval_prediction)``: NumPy logits (N, C) in ``.predictions`` and labels in
    ``.label_ids`` → ``{"accuracy": ..., "f1": ...}`` with F1 averaged over the classes (macro).
    The probe builds the ``EvalPrediction`` from the case's tensors and turns NumPy numbers in the
    returned dict into Python numbers (see :func:`_as_number`). Catches: a missing ``"f1"``, F1
    replaced by accuracy, a bare number instead of a dict."""

    exercise = "7.1"

    def cases(self) -> list:
        g = generator(71)
        cases = []
        for n, c in ((40, 2), (60, 3)):
            labels = torch.randint(0, c, (n,), generator=g)
            logits = torch.randn(n, c, generator=g) + 1.5 * F.one_hot(labels, c)
            cases.append((f"{n} predictions of {c} classes", logits, labels))
        cases.append(("a model that always predicts class 0", torch.tensor([[2.0, -1.0]] * 6),
                      torch.tensor([0, 1, 1, 0, 1, 1])))
        return cases

    def probe(self, compute_metrics, case):
        from transformers import EvalPrediction

        _, logits, labels = case
        out = compute_metrics(EvalPrediction(predictions=logits.numpy(), label_ids=labels.numpy()))
        if isinstance(out, dict):
            return {key: _as_number(value) for key, value in out.items()}
        return out

    def judge(self, case, got):
        from course_lib.finetune import classification_metrics

        name, logits, labels = case
        if type(got) is not dict:
            raise CheckFailed(f"{name}: expected a dict like {{'accuracy': ..., 'f1': ...}}, got {type_name(got)}")
        for key, value in classification_metrics(logits, labels).items():
            if key not in got:
                raise CheckFailed(f"{name}: the dict has no {key!r} entry (its keys: {sorted(got)})")
            expect_number(got[key], value, f"{name}, {key!r}", atol=1e-6)


def _steps(warmup: int, total: int) -> list[int]:
    return sorted({0, 1, warmup // 2, warmup, warmup + 1, (warmup + total) // 2, total - 1, total, total + 5})


class WarmupLinearFactor(Check):
    """``warmup_linear_factor(step, warmup_steps, total_steps)``: the learning-rate multiplier,
    step / warmup_steps during warm-up, then falling linearly to 0 at total_steps (never below).
    One case per (warmup_steps, total_steps); the probe returns the learner's factor at every step
    of the case, in order. Catches: going negative after total_steps, warm-up off by one step,
    decaying over total_steps instead of total_steps - warmup_steps."""

    exercise = "7.2"

    def cases(self) -> list:
        return [(warmup, total, _steps(warmup, total)) for warmup, total in ((10, 100), (0, 50), (3, 7))]

    def probe(self, warmup_linear_factor, case):
        warmup, total, steps = case
        return [warmup_linear_factor(step, warmup, total) for step in steps]

    def judge(self, case, got):
        from transformers import get_linear_schedule_with_warmup

        warmup, total, steps = case
        if type(got) is not list or len(got) != len(steps):
            raise CheckFailed(UNREADABLE)
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        reference = get_linear_schedule_with_warmup(optimizer, warmup, total).lr_lambdas[0]
        for step, value in zip(steps, got):
            expect_number(value, reference(step), f"step={step}, warmup_steps={warmup}, total_steps={total}", atol=1e-9)


class ExpectedCalibrationError(Check):
    """``ece(probabilities, labels, n_bins)``: bin predictions by confidence (highest probability)
    into n_bins equal bins of [0, 1]; the |accuracy - mean confidence| of each bin, weighted by
    the fraction of predictions in it, summed. Catches: an unweighted mean over the bins, the
    probability of a fixed class as the confidence, changed inputs."""

    exercise = "7.3"

    def cases(self) -> list:
        g = generator(73)
        cases = [("a hand-made example of 5",
                  torch.tensor([[0.95, 0.05], [0.1, 0.9], [0.35, 0.65], [0.6, 0.4], [0.0, 1.0]]),
                  torch.tensor([0, 0, 1, 0, 1]), 5)]
        for n, c, bins in ((200, 2, 10), (300, 4, 15)):
            probabilities = torch.softmax(3 * torch.randn(n, c, generator=g), -1)
            cases.append((f"{n} predictions of {c} classes, n_bins={bins}", probabilities,
                          torch.randint(0, c, (n,), generator=g), bins))
        return cases

    def probe(self, ece, case):
        return call(ece, *case[1:])

    def judge(self, case, got):
        from course_lib.train import expected_calibration_error

        name, probabilities, labels, bins = case
        expect_number(expect_unchanged(case[1:], got), expected_calibration_error(probabilities, labels, bins),
                      name, atol=1e-6)


class _TinyClassifier(torch.nn.Module):
    """A stand-in for a transformers classifier: ``model(**batch)`` with input_ids, attention_mask and
    labels returns an object with ``.loss`` and ``.logits``; a LayerNorm and dropout as BERT has."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(30, 8)
        self.norm = torch.nn.LayerNorm(8)
        self.dropout = torch.nn.Dropout(0.3)
        self.classifier = torch.nn.Linear(8, 2)

    def forward(self, input_ids, attention_mask, labels=None):  # noqa: ANN001, ANN201 (the transformers call)
        mask = attention_mask[..., None].float()
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1)
        logits = self.classifier(self.dropout(self.norm(pooled)))
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return SimpleNamespace(loss=loss, logits=logits)


def _batches(case: list, split: str) -> list[dict[str, torch.Tensor]]:
    ids, mask, labels = case[split]
    return [{"input_ids": i, "attention_mask": m, "labels": y} for i, m, y in zip(ids.split(4), mask.split(4), labels.split(4))]


def _loop_reference(case: dict, per_epoch_schedule: bool = False, clip: bool = True, eval_mode: bool = True,
                    zero: bool = True) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """7.4's recipe on the check's model, optionally with one mistake: (history, parameters after)."""
    from course_lib.finetune import adamw
    from course_lib.train import linear_warmup_schedule

    model = seeded(74, _TinyClassifier)
    epochs, lr, warmup_ratio, max_norm = case["epochs"], case["lr"], case["warmup_ratio"], case["max_grad_norm"]
    train, val = _batches(case, "train"), _batches(case, "validation")
    optimizer = adamw(model, lr, 0.01)
    total = epochs * len(train)
    scheduler = linear_warmup_schedule(optimizer, math.ceil(warmup_ratio * total), total)
    history = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(case["seed"])
        for epoch in range(1, epochs + 1):
            model.train()
            losses = []
            for batch in train:
                loss = model(**batch).loss
                loss.backward()
                if clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
                optimizer.step()
                if not per_epoch_schedule:
                    scheduler.step()
                if zero:
                    optimizer.zero_grad()
                losses.append(loss.item())
            if per_epoch_schedule:
                scheduler.step()
            if eval_mode:
                model.eval()
            with torch.no_grad():
                outs = [model(**batch) for batch in val]
            logits = torch.cat([o.logits for o in outs])
            labels = torch.cat([b["labels"] for b in val])
            history.append({"epoch": epoch, "train_loss": sum(losses) / len(losses),
                            "val_loss": F.cross_entropy(logits, labels).item(),
                            "val_accuracy": (logits.argmax(-1) == labels).float().mean().item()})
    return history, {k: v.detach().clone() for k, v in model.state_dict().items()}


class FineTuningLoop(Check):
    """``fine_tune_loop(model, train_batches, val_batches, epochs, lr, warmup_ratio, max_grad_norm)``:
    ``finetune.adamw(model, lr, 0.01)``; a ``LambdaLR`` with 7.2's factor, warm-up over
    ceil(warmup_ratio · total) steps, stepped after every optimizer step; per batch: forward
    (``model(**batch).loss``), backward, clip the gradient norm, step, schedule, zero the gradients;
    after each epoch, validation in ``eval()`` mode without gradients; returns one dict per epoch with
    epoch, train_loss (mean of the batch losses), val_loss (over all validation samples) and
    val_accuracy. Catches: the schedule stepped once per epoch, no clipping, validation with dropout
    on, gradients never zeroed."""

    exercise = "7.4"

    def cases(self) -> list:
        g = generator(74)
        cases = []
        for n_train, n_val, epochs, seed in ((16, 8, 2, 1), (12, 12, 3, 2)):
            case: dict[str, Any] = {"epochs": epochs, "lr": 0.05, "warmup_ratio": 0.25, "max_grad_norm": 0.1, "seed": seed}
            for split, n in (("train", n_train), ("validation", n_val)):
                ids = torch.randint(1, 30, (n, 6), generator=g)
                mask = (torch.arange(6)[None] < torch.randint(2, 7, (n, 1), generator=g)).long()
                case[split] = [ids, mask, (ids[:, 0] > 15).long()]
            cases.append(case)
        return cases

    def probe(self, fine_tune_loop, case):
        model = seeded(74, _TinyClassifier)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(case["seed"])
            history = fine_tune_loop(model, _batches(case, "train"), _batches(case, "validation"), case["epochs"],
                                     case["lr"], case["warmup_ratio"], case["max_grad_norm"])
        return {"history": history, "parameters": {k: v.detach().clone() for k, v in model.state_dict().items()}}

    def judge(self, case, got):
        history, parameters = expect_fields(got, "history", "parameters")
        name = f"{case['epochs']} epochs of {len(case['train'][0]) // 4} batches"
        expected, weights = _loop_reference(case)
        if type(parameters) is not dict or set(parameters) != set(weights) or not all(
                isinstance(p, torch.Tensor) and p.shape == weights[k].shape for k, p in parameters.items()):
            raise CheckFailed(UNREADABLE)
        if not all(torch.allclose(parameters[k], weights[k], atol=1e-5, rtol=1e-4) for k in weights):
            for hint, variant in (("the scheduler steps once per epoch; step it after every optimizer.step()",
                                   {"per_epoch_schedule": True}),
                                  ("the gradient norm is never clipped; call torch.nn.utils.clip_grad_norm_ "
                                   "before optimizer.step()", {"clip": False}),
                                  ("the gradients are never zeroed; call optimizer.zero_grad() every step", {"zero": False}),
                                  ("validation runs with dropout on (its random draws change the next epoch's "
                                   "masks); call model.eval() before validating", {"eval_mode": False})):
                wrong = _loop_reference(case, **variant)[1]
                if all(torch.allclose(parameters[k], wrong[k], atol=1e-5, rtol=1e-4) for k in weights):
                    raise CheckFailed(f"{name}: the weights after training are what you get when {hint}")
            raise CheckFailed(f"{name}: the weights after training differ from the reference recipe (adamw, the "
                              "warm-up/decay schedule stepped every batch, clipping, zeroed gradients)")
        if type(history) is not list or len(history) != len(expected):
            raise CheckFailed(f"{name}: expected a list of {len(expected)} dicts, one per epoch, got "
                              f"{len(history) if type(history) is list else type_name(history)}")
        in_train_mode = _loop_reference(case, eval_mode=False)[0]
        for row, want, wrong in zip(history, expected, in_train_mode):
            if type(row) is not dict or not set(want) <= set(row):
                raise CheckFailed(f"{name}: each epoch's dict needs the keys {sorted(want)}")
            for key in want:
                value = row[key]
                if key.startswith("val") and isinstance(value, float) and not math.isclose(value, want[key], rel_tol=1e-4) \
                        and math.isclose(value, wrong[key], rel_tol=1e-4, abs_tol=1e-9):
                    raise CheckFailed(f"{name}, epoch {want['epoch']}: {key} is that of the model with dropout on; "
                                      "call model.eval() before validating (and model.train() before the next epoch)")
                expect_number(value, want[key], f"{name}, epoch {want['epoch']}: {key}", atol=1e-6, rtol=1e-4)


CHECKS = {c.exercise: c for c in (ComputeMetrics(), WarmupLinearFactor(), ExpectedCalibrationError(), FineTuningLoop())}
