"""Pictures for chapter 14: grids of images, convolution filters, heat maps laid over images."""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure


def _array(image) -> np.ndarray:
    return image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)


def _grid(n: int, cols: int, size: float) -> tuple[Figure, np.ndarray]:
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows + 0.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes


def show_images(images: Sequence, titles: Sequence[str] | None = None, cols: int = 8, size: float = 1.4,
                cmap: str = "gray") -> Figure:
    """A grid of images ((H, W) grey or (H, W, 3) RGB), each with an optional title."""
    fig, axes = _grid(len(images), cols, size)
    for i, (ax, image) in enumerate(zip(axes.flat, images)):
        ax.imshow(_array(image), cmap=cmap)
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    fig.tight_layout()
    return fig


def show_filters(weight: torch.Tensor, cols: int = 8, size: float = 0.9) -> Figure:
    """First-layer kernels (out, in, k, k), averaged over input channels, each on a blue–red scale
    centred at zero (red: the filter responds to brightness there, blue: to darkness)."""
    kernels = _array(weight.float().mean(dim=1))
    fig, axes = _grid(len(kernels), cols, size)
    for ax, kernel in zip(axes.flat, kernels):
        limit = np.abs(kernel).max() or 1.0
        ax.imshow(kernel, cmap="RdBu_r", vmin=-limit, vmax=limit)
    fig.tight_layout()
    return fig


def show_heatmaps(images: Sequence, maps: Sequence, titles: Sequence[str] | None = None, cols: int = 5,
                  size: float = 2.4, alpha: float = 0.5) -> Figure:
    """Each image with its heat map (values in [0, 1], same height and width) laid over it."""
    fig, axes = _grid(len(images), cols, size)
    for i, (ax, image, heat) in enumerate(zip(axes.flat, images, maps)):
        picture = _array(image)
        ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None)
        ax.imshow(_array(heat), cmap="jet", alpha=alpha, vmin=0, vmax=1,
                  extent=(-0.5, picture.shape[1] - 0.5, picture.shape[0] - 0.5, -0.5))
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    fig.tight_layout()
    return fig


def plot_accuracy_vs_size(sizes: Sequence[int], accuracies: dict[str, Sequence[float]], ax=None):
    """Test accuracy against the number of training images (log scale), one line per model."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, values in accuracies.items():
        ax.plot(sizes[:len(values)], [100 * v for v in values], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("training images")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    return ax
