"""Checks of chapter 08 (parameter-efficient fine-tuning)."""

from __future__ import annotations

import torch
from torch import nn

from course_lib.checks.verdict import (
    UNREADABLE,
    Check,
    CheckFailed,
    expect_fields,
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


def _base_linear(d_in: int, d_out: int) -> nn.Linear:
    return seeded(84 + d_in + d_out, lambda: nn.Linear(d_in, d_out))


def _peft_output(d_in: int, d_out: int, r: int, alpha: float, a: torch.Tensor, b: torch.Tensor,
                 x: torch.Tensor) -> torch.Tensor:
    """peft's LoRA layer around the same base layer, with the given A and B: its output on ``x``."""
    from peft import LoraConfig, inject_adapter_in_model

    model = inject_adapter_in_model(LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=["0"]),
                                    nn.Sequential(_base_linear(d_in, d_out)))
    with torch.no_grad():
        model[0].lora_A["default"].weight.copy_(a)
        model[0].lora_B["default"].weight.copy_(b)
        return model.eval()(x)


class LoRALinearModule(Check):
    """``MyLoRALinear(base, r, alpha)``: ``base_layer`` frozen, ``lora_A`` (r, in) random like
    ``nn.Linear`` (kaiming_uniform_ with a=√5), ``lora_B`` (out, r) zero, ``scaling`` = alpha / r;
    forward = base(x) + scaling · x Aᵀ Bᵀ, equal to peft's LoRA layer with the same A and B;
    ``merge()`` folds scaling · B A into base_layer.weight and ``unmerge()`` takes it out again. Catches: B
    initialised random (the wrapped layer no longer starts as the base layer), A zero (nothing
    learns), the base left trainable, alpha not divided by r, merge without the scaling, unmerge
    that does not restore the weight."""

    exercise = "8.4"

    def cases(self) -> list:
        g = generator(84)
        cases = []
        for d_in, d_out, r, alpha in ((16, 8, 4, 8.0), (12, 20, 2, 16.0)):
            cases.append([torch.randn(3, d_in, generator=g), d_out, r, alpha,
                          torch.randn(r, d_in, generator=g) * 0.3, torch.randn(d_out, r, generator=g) * 0.3])
        return cases

    def probe(self, lora_class, case):
        x, d_out, r, alpha, a, b = case
        layer = lora_class(_base_linear(x.shape[1], d_out), r, alpha)
        got = {"A": layer.lora_A.detach().clone(), "B": layer.lora_B.detach().clone(),
               "trainable": {n: bool(p.requires_grad) for n, p in layer.named_parameters()}}
        with torch.no_grad():
            got["initial"] = layer(x)
            layer.lora_A.copy_(a)
            layer.lora_B.copy_(b)
            got["output"] = layer(x)
            layer.merge()
            got["merged_weight"], got["merged"] = layer.base_layer.weight.detach().clone(), layer(x)
            layer.unmerge()
            got["unmerged_weight"], got["unmerged"] = layer.base_layer.weight.detach().clone(), layer(x)
        return got

    def judge(self, case, got):
        x, d_out, r, alpha, a, b = case
        d_in = x.shape[1]
        name = f"MyLoRALinear(Linear({d_in}, {d_out}), r={r}, alpha={alpha})"
        init_a, init_b, trainable, initial, output, merged_weight, merged, unmerged_weight, unmerged = expect_fields(
            got, "A", "B", "trainable", "initial", "output", "merged_weight", "merged", "unmerged_weight", "unmerged")
        base = _base_linear(d_in, d_out)
        expected_trainable = {"base_layer.weight": False, "base_layer.bias": False, "lora_A": True, "lora_B": True}
        if trainable != expected_trainable:
            raise CheckFailed(f"{name}: requires_grad by parameter name should be {expected_trainable}, got {trainable}")
        expect_tensor(init_a, torch.zeros(r, d_in), f"{name}: lora_A", atol=float("inf"), rtol=0)
        expect_tensor(init_b, torch.zeros(d_out, r), f"{name}: lora_B at initialisation must be zero (so the wrapped "
                      "layer starts exactly as the base layer)", atol=0, rtol=0)
        bound = 1 / d_in**0.5
        if not init_a.abs().max() > 0 or init_a.abs().max() > bound * (1 + 1e-6):
            raise CheckFailed(f"{name}: lora_A must start random within ±1/√{d_in} (nn.init.kaiming_uniform_ with "
                              "a=math.sqrt(5)); with A and B both zero their gradients are zero and nothing learns")
        with torch.no_grad():
            expect_tensor(initial, base(x), f"{name}: output at initialisation (must equal the base layer's)")
            scaling = alpha / r
            expected = _peft_output(d_in, d_out, r, alpha, a, b, x)
            wrong = base(x) + alpha * (x @ a.T @ b.T)
            expect_tensor(output, expected, f"{name}: output with A and B set (peft's LoRA layer gives the reference)",
                          mistakes={"the update is scaled by alpha instead of alpha / r": wrong})
            expect_tensor(merged_weight, base.weight + scaling * (b @ a), f"{name}: base_layer.weight after merge()",
                          mistakes={"the merged update lacks the scaling alpha / r": base.weight + b @ a})
            expect_tensor(merged, expected, f"{name}: output after merge() (the LoRA branch must be skipped once merged)")
            expect_tensor(unmerged_weight, base.weight, f"{name}: base_layer.weight after merge() then unmerge()", atol=1e-6)
            expect_tensor(unmerged, expected, f"{name}: output after unmerge()")


CHECKS = {c.exercise: c for c in (LoraForward(), MergeLoraWeight(), FreezeAllBut(), LoRALinearModule())}
