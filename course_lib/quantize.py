"""Quantization written out — scale, zero-point, symmetric and asymmetric, per tensor and per
channel — and the measurements that decide whether it pays: model size and latency.

An integer ``q`` stands for the real number ``scale · (q - zero_point)``. Symmetric quantization
maps [-max|x|, max|x|] onto [-(2^(b-1) - 1), 2^(b-1) - 1] with zero-point 0 (what int8 weights
use); asymmetric maps [min(x, 0), max(x, 0)] onto [0, 2^b - 1] with a zero-point that makes 0.0
exact (what activations after ReLU use). Per-channel gives every output row its own scale, so one
large row does not cost the others their precision.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import torch
from torch import nn

from course_lib.arguments import require_int

SUPPORTED_BITS = tuple(range(2, 9))


@dataclass(frozen=True)
class QParams:
    """How reals map to integers: ``real = scale · (q - zero_point)``, q in [qmin, qmax]. ``scale``
    and ``zero_point`` are tensors: one value, or one per channel along ``axis``."""

    scale: torch.Tensor
    zero_point: torch.Tensor
    qmin: int
    qmax: int
    axis: int | None = None

    def _shaped(self, t: torch.Tensor, ndim: int) -> torch.Tensor:
        if self.axis is None:
            return t
        shape = [1] * ndim
        shape[self.axis] = -1
        return t.view(shape)


def qparams(x: torch.Tensor, bits: int = 8, symmetric: bool = True, axis: int | None = None) -> QParams:
    """Scale and zero-point that cover ``x`` (whole tensor, or each slice along ``axis``)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if isinstance(bits, bool) or bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be an int from {SUPPORTED_BITS[0]} to {SUPPORTED_BITS[-1]} (stored in 8-bit integers), got {bits!r}")
    if axis is not None and not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis must be None or in [-{x.ndim}, {x.ndim - 1}] for x of shape {tuple(x.shape)}, got {axis}")
    axis = axis % x.ndim if axis is not None else None
    data = x.detach().float()
    if axis is None:
        low, high = data.min(), data.max()
    else:
        rows = data.movedim(axis, 0).flatten(1)
        low, high = rows.min(dim=1).values, rows.max(dim=1).values
    low, high = low.clamp(max=0), high.clamp(min=0)  # 0.0 must be representable exactly
    tiny = torch.finfo(torch.float32).eps
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        qmin = -qmax
        scale = (torch.maximum(-low, high) / qmax).clamp(min=tiny)
        zero_point = torch.zeros_like(scale, dtype=torch.int64)
    else:
        qmin, qmax = 0, 2**bits - 1
        scale = ((high - low) / (qmax - qmin)).clamp(min=tiny)
        zero_point = (qmin - torch.round(low / scale)).clamp(qmin, qmax).to(torch.int64)
    return QParams(scale, zero_point, qmin, qmax, axis)


def quantize(x: torch.Tensor, params: QParams) -> torch.Tensor:
    """Integers ``clamp(round(x / scale) + zero_point, qmin, qmax)`` (int8, or uint8 for an
    unsigned range)."""
    scale = params._shaped(params.scale, x.ndim)
    zero_point = params._shaped(params.zero_point, x.ndim)
    q = (torch.round(x.float() / scale) + zero_point).clamp(params.qmin, params.qmax)
    return q.to(torch.uint8 if params.qmin >= 0 else torch.int8)


def dequantize(q: torch.Tensor, params: QParams) -> torch.Tensor:
    """The reals the integers stand for: ``scale · (q - zero_point)``, as float32."""
    scale = params._shaped(params.scale, q.ndim)
    zero_point = params._shaped(params.zero_point, q.ndim)
    return scale * (q.to(torch.int64) - zero_point).float()


def fake_quantize(x: torch.Tensor, bits: int = 8, symmetric: bool = True, axis: int | None = None) -> torch.Tensor:
    """``x`` after a quantize / dequantize round trip: what the model computes with."""
    params = qparams(x, bits, symmetric, axis)
    return dequantize(quantize(x, params), params).to(x.dtype)


def quantization_error(x: torch.Tensor, bits: int = 8, symmetric: bool = True, axis: int | None = None) -> dict[str, float]:
    """How much a round trip changes ``x``: the largest and the root-mean-square absolute error,
    and the signal-to-quantization-noise ratio in dB (higher is better; ~6 dB per bit)."""
    error = (fake_quantize(x, bits, symmetric, axis) - x).float()
    signal = x.float().pow(2).mean()
    noise = error.pow(2).mean().clamp(min=1e-30)
    return {"max_abs": error.abs().max().item(), "rms": noise.sqrt().item(),
            "sqnr_db": (10 * torch.log10(signal / noise)).item()}


# ---------------------------------------------------------------------------------------------
# Measuring models


def _serialized_bytes(state: dict) -> int:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getbuffer().nbytes


def state_dict_bytes(model: nn.Module) -> int:
    """Bytes of the model's whole state dict as ``torch.save`` writes it (weights as stored:
    fp32, int8 packed, or a quantized tensor subclass)."""
    return _serialized_bytes(model.state_dict())


def _is_linear(module: nn.Module) -> bool:
    # nn.Linear, torch.ao's dynamic quantized Linear and torchao's (an nn.Linear with a tensor subclass)
    return isinstance(module, nn.Linear) or type(module).__name__ == "Linear"


def linear_bytes(model: nn.Module) -> int:
    """Bytes of the linear layers' weights and biases alone (the part quantization shrinks),
    serialised together as ``torch.save`` would write them."""
    state = {f"{name}.{key}": value for name, module in model.named_modules() if _is_linear(module)
             for key, value in module.state_dict().items()}
    if not state:
        raise ValueError(f"{type(model).__name__} has no linear layers")
    return _serialized_bytes(state)


# ---------------------------------------------------------------------------------------------
# An int8 layer written out


class Int8DynamicLinear(nn.Module):
    """An ``nn.Linear`` with int8 weights (symmetric, one scale per output channel) whose input is
    quantized on every call (symmetric int8, one scale per token), multiplied as integers with int32
    accumulation and rescaled by both scales: dynamic quantization written out, with the scales
    torchao's int8 dynamic layer uses (``torch.ao``'s legacy layer differs: one scale per weight
    tensor, asymmetric activations in a 7-bit range). A channel or token of zeros gives exact zeros
    (its scale is clamped, never 0)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        weight = linear.weight.detach().float()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_scale", weight.abs().amax(dim=1).clamp_min(1e-12) / 127)
        self.register_buffer("qweight", torch.round(weight / self.weight_scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point() or x.shape[-1] != self.in_features:
            raise ValueError(f"x must be a float tensor (..., {self.in_features}), got {x.dtype} {tuple(x.shape)}")
        scale = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / 127
        qx = torch.round(x / scale).clamp(-127, 127).to(torch.int8)
        # int32 accumulation: a sum of in_features products of two int8 values cannot overflow it
        acc = qx.reshape(-1, self.in_features).to(torch.int32) @ self.qweight.to(torch.int32).T
        out = acc.reshape(*x.shape[:-1], self.out_features).to(x.dtype) * scale * self.weight_scale
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


# ---------------------------------------------------------------------------------------------
# The library routes: legacy torch.ao and torchao


def legacy_dynamic_int8(model: nn.Module) -> nn.Module:
    """A copy with every ``nn.Linear`` replaced by ``torch.ao``'s dynamically quantized int8
    Linear (int8 weights per tensor; activations quantized on the fly). Legacy: PyTorch warns it
    will be removed; torchao is the replacement. Its deprecation warning is silenced here only."""
    import copy
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.ao.quantization is deprecated", category=DeprecationWarning)
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)


def import_torchao():
    """``import torchao`` without its import-time log noise (see
    :func:`course_lib.runtime.quiet_import_logs`); warnings raised later still show."""
    from course_lib.runtime import quiet_import_logs

    quiet_import_logs()
    import torchao

    return torchao


def torchao_int8(model: nn.Module, weight_only: bool = False) -> nn.Module:
    """A copy quantized with torchao's ``quantize_``: int8 weights and int8 dynamic activations
    (``Int8DynamicActivationInt8WeightConfig``), or int8 weights only (``Int8WeightOnlyConfig``).
    On the CPU it needs ``torch.compile`` to be fast (the eager path dequantizes as it goes)."""
    import copy

    import_torchao()
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_

    quantized = copy.deepcopy(model).eval()
    quantize_(quantized, Int8WeightOnlyConfig() if weight_only else Int8DynamicActivationInt8WeightConfig())
    return quantized


# ---------------------------------------------------------------------------------------------
# Latency


def fixed_shape_batch(tokenizer, texts: list[str], batch: int, length: int) -> dict[str, torch.Tensor]:
    """``batch`` real sentences (repeated if needed) tokenised and padded or truncated to exactly
    ``length`` tokens: a fixed shape, so every variant is timed on the same work."""
    batch = require_int("batch", batch)
    if not texts:
        raise ValueError("texts must not be empty")
    chosen = [texts[i % len(texts)] for i in range(batch)]
    return dict(tokenizer(chosen, padding="max_length", truncation=True, max_length=length, return_tensors="pt"))


def measure_latency(variants: dict[str, nn.Module], inputs: dict[str, torch.Tensor], warmup: int = 3,
                    repeat: int = 10) -> list:
    """Forward-pass times of several models on the same inputs, interleaved side by side
    (:func:`course_lib.bench.compare`); the first variant is the baseline of the ratios."""
    from course_lib.bench import compare

    def forward(model: nn.Module):
        def run():
            with torch.inference_mode():
                return model(**inputs)
        return run

    return compare({name: forward(model) for name, model in variants.items()}, warmup=warmup, repeat=repeat)
