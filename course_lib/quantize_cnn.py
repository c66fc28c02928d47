"""Static int8 post-training quantization of chapter 14's CNN with PyTorch's eager-mode API.

Chapter 09 quantized Linear layers dynamically (activation scales computed on the fly). Convolutions
gain most from *static* quantization: each conv → batch norm → ReLU is fused into one int8 kernel,
a few calibration batches record the range of every activation, and the whole network then runs on
int8 tensors between a quantize step at the input and a dequantize step at the output.
``torch.ao.quantization`` is deprecated in favour of torchao's PT2E flow; its warning is silenced here
only.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable

import torch
from torch import nn

from course_lib.conv import SmallCNN


class _Quantizable(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        import torch.ao.quantization as tq

        self.quant, self.model, self.dequant = tq.QuantStub(), model, tq.DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dequant(self.model(self.quant(x)))


def static_int8(model: SmallCNN, calibration: Iterable[torch.Tensor], backend: str = "x86") -> nn.Module:
    """An int8 copy of ``model`` (a :class:`SmallCNN`): conv + batch norm + ReLU fused, activation
    ranges observed on the ``calibration`` batches, weights per output channel. ``model`` is unchanged."""
    if not isinstance(model, SmallCNN):
        raise TypeError(f"model must be a SmallCNN, got {type(model).__name__}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*")
        # the eager API's own deprecation notices (observers' reduce_range, quantized tensor creation)
        warnings.filterwarnings("ignore", message="Please use quant_min and quant_max", category=UserWarning)
        warnings.filterwarnings("ignore", message="torch.quantize_per_tensor, torch.quantize_per_channel",
                                category=UserWarning)
        import torch.ao.quantization as tq

        if backend not in torch.backends.quantized.supported_engines:
            raise ValueError(f"backend must be one of {torch.backends.quantized.supported_engines}, got {backend!r}")
        torch.backends.quantized.engine = backend
        wrapped = _Quantizable(copy.deepcopy(model).eval()).eval()
        stages = wrapped.model.stages
        groups = [[str(i), str(i + 1), str(i + 2)] for i, layer in enumerate(stages) if isinstance(layer, nn.Conv2d)]
        tq.fuse_modules(stages, groups, inplace=True)
        wrapped.qconfig = tq.get_default_qconfig(backend)
        tq.prepare(wrapped, inplace=True)
        seen = 0
        with torch.no_grad():
            for batch in calibration:
                wrapped(batch)
                seen += 1
        if not seen:
            raise ValueError("calibration yielded no batches")
        tq.convert(wrapped, inplace=True)
    return wrapped
