"""Checks of chapter 09 (compression)."""

from __future__ import annotations

import torch

from course_lib.checks.verdict import (
    Check,
    CheckFailed,
    expect_fields,
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


def _int8_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, round_values: bool = True,
                    per_channel: bool = True, per_token: bool = True) -> torch.Tensor:
    """What the int8 layer computes (exactly, in float arithmetic): symmetric int8 weights with one
    scale per output channel, activations with one scale per token, integer products summed,
    rescaled, plus the bias. The flags make the mistakes 9.4 names."""
    w_max = weight.abs().amax(dim=1) if per_channel else weight.abs().max().expand(weight.shape[0])
    w_scale = w_max.clamp_min(1e-12) / 127
    x_max = x.abs().amax(dim=-1, keepdim=True) if per_token else x.abs().max().expand(*x.shape[:-1], 1)
    x_scale = x_max.clamp_min(1e-12) / 127
    to_int = torch.round if round_values else torch.trunc
    qw = to_int(weight / w_scale[:, None]).clamp(-127, 127)
    qx = to_int(x / x_scale).clamp(-127, 127)
    out = (qx.double() @ qw.double().T).float() * x_scale * w_scale
    return out if bias is None else out + bias


class Int8Linear(Check):
    """``MyInt8Linear(linear)``: int8 ``qweight`` (symmetric, one scale per output channel in
    ``weight_scale``, max |w| / 127) made once; ``forward(x)`` quantizes x with one scale per token
    (max |x| over the features / 127), multiplies the integers with int32 accumulation and rescales
    by both scales, then adds the bias. Catches: truncating instead of rounding (``.to(torch.int8)``
    alone), one scale for the whole weight, one scale for the whole batch, the weight kept in
    float, NaN for a row or token of zeros."""

    exercise = "9.4"

    def cases(self) -> list:
        g = generator(94)
        cases = []
        for d_in, d_out, lead, bias in ((16, 8, (4,), True), (32, 12, (2, 5), True), (8, 6, (3,), False)):
            weight = torch.randn(d_out, d_in, generator=g) * torch.logspace(-2, 0, d_out)[:, None]
            weight[-1] = 0.0  # a channel of zeros: its scale must not make NaN
            x = torch.randn(*lead, d_in, generator=g) * torch.logspace(-1, 1, lead[-1])[:, None]
            x.view(-1, d_in)[0] = 0.0  # a token of zeros
            cases.append([weight, torch.randn(d_out, generator=g) if bias else None, x])
        return cases

    def probe(self, int8_class, case):
        weight, bias, x = case
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if bias is not None:
                linear.bias.copy_(bias)
        layer = int8_class(linear)
        with torch.no_grad():
            return {"qweight": layer.qweight, "weight_scale": layer.weight_scale, "output": layer(x)}

    def judge(self, case, got):
        weight, bias, x = case
        qweight, weight_scale, output = expect_fields(got, "qweight", "weight_scale", "output")
        name = f"Linear({weight.shape[1]}, {weight.shape[0]}{'' if bias is not None else ', bias=False'}) on x {shape(x)}"
        scale = weight.abs().amax(dim=1).clamp_min(1e-12) / 127
        expected_q = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
        expect_tensor(weight_scale, scale, f"{name}: weight_scale (one per output channel: max |w| / 127)",
                      mistakes={"one scale serves the whole weight (it must be one per output channel)":
                                (weight.abs().max() / 127).expand(weight.shape[0])})
        if isinstance(qweight, torch.Tensor) and qweight.dtype != torch.int8:
            raise CheckFailed(f"{name}: qweight must be stored as torch.int8 (1 byte per weight), got {qweight.dtype}")
        expect_tensor(qweight, expected_q, f"{name}: qweight", atol=0, rtol=0,
                      mistakes={"the values are truncated toward zero; round them first (torch.round)":
                                torch.trunc(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)})
        mistakes = {"the values are truncated toward zero; round them first (torch.round)":
                    _int8_reference(x, weight, bias, round_values=False),
                    "one scale serves the whole batch (it must be one per token, over the last dimension)":
                    _int8_reference(x, weight, bias, per_token=False)}
        expect_tensor(output, _int8_reference(x, weight, bias), f"{name}: output", atol=1e-5, rtol=1e-5, mistakes=mistakes)


CHECKS = {c.exercise: c for c in (MagnitudeMask(), SymmetricQuantize(), PerChannelScales(), Int8Linear())}
