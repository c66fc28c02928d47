"""Checks of chapter 09 (compression)."""

from __future__ import annotations

import torch

from course_lib.checks.verdict import (
    Check,
    CheckFailed,
    expect_number,
    expect_tensor,
    expect_unchanged,
    generator,
    shape,
)
from course_lib.plain import type_name


class MagnitudeMask(Check):
    """``magnitude_mask(weight, amount)``: a float 0/1 tensor like ``weight`` with 0 at the
    ``round(amount · weight.numel())`` entries of smallest absolute value (as
    ``torch.nn.utils.prune.l1_unstructured``), 1 elsewhere. Catches: ranking by value instead of
    absolute value (large negative weights pruned), pruning one entry when amount is 0."""

    exercise = "9.1"

    def cases(self) -> list:
        g = generator(91)
        cases = []
        for size, amount in (((6, 5), 0.5), ((10, 20), 0.3), ((4, 4), 0.0), ((3, 7), 1.0)):
            weight = torch.randn(size, generator=g) - 0.2  # negative weights of large size must be kept
            cases.append((weight, amount))
        return cases


    def judge(self, case, got):
        from course_lib.prune import magnitude_mask as reference

        weight, amount = case
        expect_tensor(expect_unchanged(case, got), reference(weight, amount),
                      f"weight {shape(weight)}, amount={amount}", atol=0, rtol=0)


class SymmetricQuantize(Check):
    """``symmetric_quantize(x, bits)`` → ``(q, scale)``: scale = max|x| / (2^(bits-1) - 1) as a 0-dim
    float tensor, q = round(x / scale) clamped to ±(2^(bits-1) - 1), as torch.int8. Catches: the
    unsigned range 2^bits - 1 in the scale, q left as floats, returning q alone."""

    exercise = "9.2"

    def cases(self) -> list:
        g = generator(92)
        return [(torch.randn(size, generator=g) * 3, bits) for size, bits in (((5, 7), 8), ((30,), 8), ((4, 6), 4))]


    def judge(self, case, got):
        from course_lib.quantize import qparams, quantize

        x, bits = case
        described = f"x {shape(x)}, bits={bits}"
        out = expect_unchanged(case, got)
        if not isinstance(out, tuple) or len(out) != 2:
            raise CheckFailed(f"{described}: expected a tuple (q, scale), got {type_name(out)}")
        q, scale = out
        params = qparams(x, bits, symmetric=True)
        expect_number(scale, params.scale.item(), f"{described}: scale", atol=1e-7, rtol=1e-6)
        expect_tensor(q, quantize(x, params), f"{described}: q", atol=0, rtol=0)


class PerChannelScales(Check):
    """``per_channel_scales(weight, bits)``: for a weight (out, in), the symmetric scale of each
    output row, max|row| / (2^(bits-1) - 1), shape (out,). Rows differ in size by three orders of
    magnitude. Catches: the maximum over columns instead of rows, 127 whatever the bits."""

    exercise = "9.3"

    def cases(self) -> list:
        g = generator(93)
        cases = []
        for size, bits in (((4, 9), 8), ((16, 3), 8), ((5, 5), 4)):
            weight = torch.randn(size, generator=g) * torch.logspace(-2, 1, size[0])[:, None]
            cases.append((weight, bits))
        return cases


    def judge(self, case, got):
        from course_lib.quantize import qparams

        weight, bits = case
        expect_tensor(expect_unchanged(case, got), qparams(weight, bits, axis=0).scale,
                      f"weight {shape(weight)}, bits={bits}", atol=1e-8, rtol=1e-5)


CHECKS = {c.exercise: c for c in (MagnitudeMask(), SymmetricQuantize(), PerChannelScales())}
