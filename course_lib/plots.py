"""Figures the chapters share. Each function draws on a given (or new) matplotlib Axes and returns
it, so a notebook can place several in one figure and end the cell with ``plt.show()``.
"""

from __future__ import annotations

from collections.abc import Callable

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes

from course_lib.autograd import Value, topological_order


def plot_function_and_derivative(
    fn: Callable[[torch.Tensor], torch.Tensor],
    name: str,
    lo: float = -4.0,
    hi: float = 4.0,
    points: int = 401,
    ax: Axes | None = None,
) -> Axes:
    """Plot ``fn`` and its derivative, the derivative computed by autograd (not by hand)."""
    if not lo < hi:
        raise ValueError(f"lo must be < hi, got lo={lo}, hi={hi}")
    ax = ax if ax is not None else plt.subplots(figsize=(5, 3.2))[1]
    x = torch.linspace(lo, hi, points, requires_grad=True)
    y = fn(x)
    (dy,) = torch.autograd.grad(y.sum(), x)
    ax.plot(x.detach(), y.detach(), label=name)
    ax.plot(x.detach(), dy, "--", label=f"d/dx {name}")
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_xlabel("x")
    ax.legend()
    return ax


def draw_graph(root: Value, ax: Axes | None = None) -> Axes:
    """Draw the computation graph behind ``root``: one box per value (label, data, grad), arrows
    from inputs to the operation's result, inputs on the left and ``root`` on the right.
    """
    order = topological_order(root)
    depth: dict[int, int] = {}
    for node in order:  # inputs come first, so parents already have a depth
        depth[id(node)] = 1 + max((depth[id(p)] for p in node.parents), default=-1)
    columns: dict[int, list[Value]] = {}
    for node in order:
        columns.setdefault(depth[id(node)], []).append(node)
    position = {}
    for col, nodes in columns.items():
        for row, node in enumerate(nodes):
            position[id(node)] = (col, row - (len(nodes) - 1) / 2)

    if ax is None:
        width = 2.2 * len(columns) + 1
        height = 1.2 * max(len(n) for n in columns.values()) + 1
        ax = plt.subplots(figsize=(width, height))[1]
    for node in order:
        x, y = position[id(node)]
        for parent in node.parents:
            px, py = position[id(parent)]
            ax.annotate(
                "", xy=(x - 0.38, y), xytext=(px + 0.38, py),
                arrowprops=dict(arrowstyle="->", color="grey"),
            )
        title = f"{node.label} " if node.label else ""
        op = f"[{node.op}] " if node.op else ""
        ax.text(
            x, y, f"{op}{title}\ndata {node.data:.4g}\ngrad {node.grad:.4g}",
            ha="center", va="center", fontsize=8,
            bbox=dict(boxstyle="round", fc="#e8f0fe" if node.parents else "#fff4e0", ec="grey"),
        )
    xs = [p[0] for p in position.values()]
    ys = [p[1] for p in position.values()]
    ax.set_xlim(min(xs) - 0.6, max(xs) + 0.6)
    ax.set_ylim(min(ys) - 0.8, max(ys) + 0.8)
    ax.axis("off")
    return ax
