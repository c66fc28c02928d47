"""Checks of chapter 07 (fine-tuning)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from course_lib.checks.verdict import UNREADABLE, Check, CheckFailed, call, expect_number, expect_unchanged, generator
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


CHECKS = {c.exercise: c for c in (ComputeMetrics(), WarmupLinearFactor(), ExpectedCalibrationError())}
