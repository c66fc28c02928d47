"""Convolution from scratch: im2col, ``conv2d`` as one matrix product, max/average pooling, and a
small CNN.

A convolution slides a small kernel over the image and takes a dot product at every position.
Written out as loops it is slow; *im2col* copies every window of the input into a column of a
matrix, and then one matrix product with the flattened kernels computes every output at once — the
GEMM route of many libraries (others, such as oneDNN for batches on this course's CPUs, compute the
convolution directly without building the matrix). Shapes follow PyTorch: images ``(B, C, H, W)``,
kernels ``(out_channels, in_channels / groups, kH, kW)``. Like ``F.conv2d`` this computes a
*cross-correlation*: the kernel is not flipped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.arguments import require_int


def pair(name: str, value: int | tuple[int, int], at_least: int = 1) -> tuple[int, int]:
    """``value`` as (height, width): an int is used for both."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
        return require_int(name, value[0], at_least=at_least), require_int(name, value[1], at_least=at_least)
    v = require_int(name, value, at_least=at_least)
    return v, v


def output_size(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """Positions a kernel takes along one axis: ``(size + 2·padding − dilation·(kernel − 1) − 1) // stride + 1``
    (the formula in ``nn.Conv2d``'s documentation)."""
    span = dilation * (kernel - 1) + 1
    return (size + 2 * padding - span) // stride + 1


def _check_images(name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        got = f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a (B, C, H, W) tensor, got {got}")
    return x


def im2col(
    x: torch.Tensor,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    pad_value: float = 0.0,
) -> torch.Tensor:
    """Every kernel-sized window of ``x`` (B, C, H, W) as a column: (B, C·kH·kW, L) with L = out_h·out_w,
    rows ordered channel, then kernel row, then kernel column — the layout of ``F.unfold`` (equal to it
    for ``pad_value=0``) and of a kernel flattened with ``weight.reshape(out_channels, -1)``.

    Built from kH·kW strided slices of the padded input, one per kernel offset, so no Python loop runs
    over image positions."""
    x = _check_images("x", x)
    (kh, kw), (sh, sw) = pair("kernel_size", kernel_size), pair("stride", stride)
    (ph, pw), (dh, dw) = pair("padding", padding, at_least=0), pair("dilation", dilation)
    b, c, h, w = x.shape
    out_h, out_w = output_size(h, kh, sh, ph, dh), output_size(w, kw, sw, pw, dw)
    if out_h < 1 or out_w < 1:
        raise ValueError(f"kernel_size {(kh, kw)} with dilation {(dh, dw)} does not fit the padded input "
                         f"{(h + 2 * ph, w + 2 * pw)}")
    padded = F.pad(x, (pw, pw, ph, ph), value=pad_value)
    windows = [
        padded[:, :, i * dh: i * dh + sh * (out_h - 1) + 1: sh, j * dw: j * dw + sw * (out_w - 1) + 1: sw]
        for i in range(kh) for j in range(kw)
    ]
    return torch.stack(windows, dim=2).reshape(b, c * kh * kw, out_h * out_w)


def conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
) -> torch.Tensor:
    """``F.conv2d`` written as im2col and one (batched) matrix product.

    With ``groups`` g the channels split into g independent convolutions (``groups == in_channels``
    is a depthwise convolution, as in MobileNet and EfficientNet)."""
    x = _check_images("x", x)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 4:
        raise ValueError(f"weight must be an (out_channels, in_channels/groups, kH, kW) tensor, got "
                         f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__}")
    groups = require_int("groups", groups)
    out_channels, per_group, kh, kw = weight.shape
    b, c, h, w = x.shape
    if c % groups or out_channels % groups:
        raise ValueError(f"groups={groups} must divide in_channels={c} and out_channels={out_channels}")
    if per_group * groups != c:
        raise ValueError(f"weight expects {per_group * groups} input channels ({per_group} per group × {groups} "
                         f"groups), x has {c}")
    if x.dtype != weight.dtype:
        raise ValueError(f"x and weight must have the same dtype, got {x.dtype} and {weight.dtype}")
    if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (out_channels,)):
        got = tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
        raise ValueError(f"bias must be None or a tensor of shape ({out_channels},), got {got}")
    (sh, sw), (ph, pw), (dh, dw) = pair("stride", stride), pair("padding", padding, at_least=0), pair("dilation", dilation)
    out_h, out_w = output_size(h, kh, sh, ph, dh), output_size(w, kw, sw, pw, dw)
    cols = im2col(x, (kh, kw), (sh, sw), (ph, pw), (dh, dw))  # (B, C·kH·kW, L)
    cols = cols.reshape(b, groups, per_group * kh * kw, out_h * out_w)
    kernels = weight.reshape(groups, out_channels // groups, per_group * kh * kw)
    out = torch.einsum("gok,bgkl->bgol", kernels, cols).reshape(b, out_channels, out_h, out_w)
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def _pool_columns(x: torch.Tensor, kernel_size, stride, padding, pad_value: float) -> tuple[torch.Tensor, int, int]:
    x = _check_images("x", x)
    kernel = pair("kernel_size", kernel_size)
    stride = kernel if stride is None else pair("stride", stride)
    padding = pair("padding", padding, at_least=0)
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(f"padding must be at most kernel_size // 2 = {(kernel[0] // 2, kernel[1] // 2)} for "
                         f"kernel_size {kernel}, got {padding} (as in torch)")
    b, c, h, w = x.shape
    out_h, out_w = (output_size(n, k, s, p) for n, k, s, p in zip((h, w), kernel, stride, padding))
    cols = im2col(x.reshape(b * c, 1, h, w), kernel, stride, padding, pad_value=pad_value)
    return cols.reshape(b, c, kernel[0] * kernel[1], out_h, out_w), out_h, out_w


def max_pool2d(x: torch.Tensor, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
               padding: int | tuple[int, int] = 0) -> torch.Tensor:
    """``F.max_pool2d``: the largest value of each window (padding never wins: it is −∞).
    ``stride`` defaults to the kernel size, so windows do not overlap."""
    cols, _, _ = _pool_columns(x, kernel_size, stride, padding, float("-inf"))
    return cols.amax(dim=2)


def avg_pool2d(x: torch.Tensor, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
               padding: int | tuple[int, int] = 0) -> torch.Tensor:
    """``F.avg_pool2d`` with its defaults: the mean of each window, zero padding counted in it
    (``count_include_pad=True``)."""
    cols, _, _ = _pool_columns(x, kernel_size, stride, padding, 0.0)
    return cols.mean(dim=2)


class Conv2d(nn.Module):
    """A convolution layer on :func:`conv2d`, with ``nn.Conv2d``'s parameters, initialisation and
    state-dict keys (so either loads the other's weights)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], stride=1,
                 padding=0, dilation=1, groups: int = 1, bias: bool = True) -> None:
        super().__init__()
        in_channels, out_channels, groups = (require_int(n, v) for n, v in
                                             (("in_channels", in_channels), ("out_channels", out_channels),
                                              ("groups", groups)))
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
        kh, kw = pair("kernel_size", kernel_size)
        self.stride, self.padding = pair("stride", stride), pair("padding", padding, at_least=0)
        self.dilation, self.groups = pair("dilation", dilation), groups
        reference = nn.Conv2d(in_channels, out_channels, (kh, kw), groups=groups, bias=bias)  # torch's init
        self.weight = nn.Parameter(reference.weight.detach().clone())
        self.bias = nn.Parameter(reference.bias.detach().clone()) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class SmallCNN(nn.Module):
    """Three stages of 3×3 convolution → batch norm → ReLU → 2×2 max-pool, then a linear classifier
    on the flattened feature map. Each stage halves the resolution and widens the channels: early
    layers see edges in small neighbourhoods, later ones combine them over larger areas.

    ``image_size`` is the input's height (= width); ``features(x)`` returns the last feature map
    (what Grad-CAM looks at)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, channels: tuple[int, ...] = (32, 64, 64),
                 image_size: int = 28, dropout: float = 0.1) -> None:
        super().__init__()
        if not channels:
            raise ValueError("channels must name at least one stage")
        layers: list[nn.Module] = []
        size, previous = require_int("image_size", image_size), require_int("in_channels", in_channels)
        for width in channels:
            width = require_int("channels", width)
            layers += [nn.Conv2d(previous, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            previous, size = width, size // 2
        if size < 1:
            raise ValueError(f"{len(channels)} stages halve a {image_size}-pixel image to nothing")
        self.stages = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(previous * size * size, require_int("num_classes", num_classes)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
