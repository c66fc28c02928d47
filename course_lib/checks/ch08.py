"""Checks of chapter 08 (parameter-efficient fine-tuning)."""

from __future__ import annotations

import torch
from torch import nn

from course_lib.checks.verdict import (
    UNREADABLE,
    Check,
    CheckFailed,
    expect_number,
    expect_tensor,
    expect_unchanged,
    generator,
    seeded,
    shape,
)


class LoraForward(Check):
    """``lora_forward(x, weight, bias, A, B, alpha)``: the frozen layer ``x Wᵀ + b`` plus the update
    ``(alpha / r) · x Aᵀ Bᵀ``, with r = A.shape[0]. Catches: a missing 1/r scaling, a dropped bias,
    A and B applied in the wrong order (a shape error), inputs changed in place."""

    exercise = "8.1"

    def cases(self) -> list:
        g = generator(81)
        cases = []
        for batch, d_in, d_out, r, alpha in ((3, 8, 5, 2, 4.0), (2, 16, 16, 4, 4.0), (4, 6, 10, 1, 16.0)):
            x = torch.randn(batch, d_in, generator=g)
            weight, bias = torch.randn(d_out, d_in, generator=g), torch.randn(d_out, generator=g)
            a, b = torch.randn(r, d_in, generator=g), torch.randn(d_out, r, generator=g)
            cases.append((x, weight, bias, a, b, alpha))
        return cases


    def judge(self, case, got):
        x, weight, bias, a, b, alpha = case
        r = a.shape[0]
        expected = x @ weight.T + bias + (alpha / r) * (x @ a.T @ b.T)
        expect_tensor(expect_unchanged(case, got), expected, f"x {shape(x)}, r={r}, alpha={alpha}")


class MergeLoraWeight(Check):
    """``merge(weight, A, B, alpha)``: a new matrix W + (alpha / r) · B A, so the merged layer computes
    what the LoRA layer did. Catches: adding into ``weight`` in place, a missing alpha / r, the
    product A B instead of B A (a shape error)."""

    exercise = "8.3"

    def cases(self) -> list:
        g = generator(82)
        cases = []
        for d_in, d_out, r, alpha in ((8, 5, 2, 4.0), (16, 16, 4, 4.0), (6, 10, 1, 16.0)):
            weight = torch.randn(d_out, d_in, generator=g)
            a, b = torch.randn(r, d_in, generator=g), torch.randn(d_out, r, generator=g)
            cases.append((weight, a, b, alpha))
        return cases


    def judge(self, case, got):
        weight, a, b, alpha = case
        r = a.shape[0]
        expect_tensor(expect_unchanged(case, got), weight + (alpha / r) * (b @ a),
                      f"weight {shape(weight)}, r={r}, alpha={alpha}")


def _freeze_model() -> nn.ModuleDict:
    """The model of 8.3, its weights drawn from seed 83 without touching the caller's random state."""
    return seeded(83, lambda: nn.ModuleDict({
        "encoder": nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 8)),
        "lora_A": nn.Linear(8, 2, bias=False), "classifier": nn.Linear(8, 3),
    }))


class FreezeAllBut(Check):
    """``freeze_all_but(model, keep)``: ``requires_grad`` True exactly for the parameters whose name
    contains one of the strings in ``keep``, False for all others; return how many numbers
    (elements) remain trainable. The model arrives with ``encoder.0.weight`` already frozen, so a
    kept parameter must be switched on too. Catches: only freezing (never unfreezing), only
    unfreezing, counting tensors instead of elements."""

    exercise = "8.2"

    def cases(self) -> list:
        return [["classifier"], ["lora_", "classifier"], ["encoder.0", "encoder.1"], []]

    def probe(self, freeze_all_but, keep):
        model = _freeze_model()
        names = dict(model.named_parameters())
        for p in model.parameters():
            p.requires_grad_(True)
        model.encoder[0].weight.requires_grad_(False)  # frozen before: kept means trainable
        count = freeze_all_but(model, keep)
        return {"count": count, "requires_grad": {n: bool(p.requires_grad) for n, p in names.items()}}

    def judge(self, keep, got):
        names = dict(_freeze_model().named_parameters())
        actual = got.get("requires_grad") if type(got) is dict else None
        if type(actual) is not dict or set(actual) != set(names) or any(type(v) is not bool for v in actual.values()):
            raise CheckFailed(UNREADABLE)
        expected = {n: any(k in n for k in keep) for n in names}
        wrong = sorted(n for n in names if actual[n] != expected[n])
        if wrong:
            raise CheckFailed(f"keep={keep}: requires_grad is wrong for {wrong[:3]}")
        count = sum(p.numel() for n, p in names.items() if expected[n])
        expect_number(got.get("count"), count, f"keep={keep}: the number of trainable elements", atol=0)


CHECKS = {c.exercise: c for c in (LoraForward(), MergeLoraWeight(), FreezeAllBut())}
