"""Figures the chapters share. Each function draws on a given (or new) matplotlib Axes and returns
it, so a notebook can place several in one figure and end the cell with ``plt.show()``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes

from course_lib.arguments import require_int
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
    x, y, dy = x.detach().numpy(), y.detach().numpy(), dy.numpy()
    ax.plot(x, y, label=name)
    ax.plot(x, dy, "--", label=f"d/dx {name}")
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


def plot_history(history: object, axes: Sequence[Axes] | None = None) -> Sequence[Axes]:
    """Loss curves (train and validation) and validation accuracy per epoch, from a
    ``course_lib.train.History``."""
    if axes is None:
        axes = plt.subplots(1, 2, figsize=(10, 3.2))[1]
    loss_ax, acc_ax = axes
    loss_ax.plot(history.epoch, history.train_loss, "o-", label="train")
    if history.val_loss:
        loss_ax.plot(history.epoch, history.val_loss, "s-", label="validation")
    if history.best_epoch is not None:
        loss_ax.axvline(history.best_epoch, color="grey", ls=":", label="best epoch")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    loss_ax.legend()
    if history.val_accuracy:
        acc_ax.plot(history.epoch, history.val_accuracy, "s-", color="tab:green")
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("validation accuracy")
    return axes


def plot_confusion_matrix(
    matrix: torch.Tensor, labels: Sequence[str] | None = None, ax: Axes | None = None
) -> Axes:
    """A confusion matrix (rows: true class, columns: predicted) as a heatmap with counts."""
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"matrix must be square (C, C), got shape {tuple(matrix.shape)}")
    n = matrix.shape[0]
    labels = list(labels) if labels is not None else [str(i) for i in range(n)]
    if len(labels) != n:
        raise ValueError(f"labels must have {n} entries, got {len(labels)}")
    ax = ax if ax is not None else plt.subplots(figsize=(0.5 * n + 2, 0.5 * n + 1.5))[1]
    ax.imshow(matrix.cpu().numpy(), cmap="Blues")
    high = matrix.max().item() / 2
    for i in range(n):
        for j in range(n):
            value = int(matrix[i, j])
            ax.text(j, i, str(value), ha="center", va="center", fontsize=8,
                    color="white" if value > high else "black")
    ax.set_xticks(range(n), labels)
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return ax


def plot_attention(
    weights: torch.Tensor,
    query_tokens: Sequence[str],
    key_tokens: Sequence[str] | None = None,
    ax: Axes | None = None,
    title: str = "",
) -> Axes:
    """One head's attention weights (Tq, Tk) as a heatmap: row i shows where query i looks."""
    key_tokens = query_tokens if key_tokens is None else key_tokens
    if weights.shape != (len(query_tokens), len(key_tokens)):
        raise ValueError(
            f"weights must have shape ({len(query_tokens)}, {len(key_tokens)}) to match the tokens, "
            f"got {tuple(weights.shape)}"
        )
    ax = ax if ax is not None else plt.subplots(figsize=(4, 4))[1]
    ax.imshow(weights.detach().float().cpu().numpy(), cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(key_tokens)), key_tokens, rotation=90)
    ax.set_yticks(range(len(query_tokens)), query_tokens)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    if title:
        ax.set_title(title)
    return ax


def plot_reliability(table: dict[str, torch.Tensor], ax: Axes | None = None, label: str | None = None) -> Axes:
    """A reliability diagram from ``course_lib.train.reliability``: accuracy against confidence per
    bin (bars, with their count above), and the diagonal a calibrated model would follow."""
    ax = ax if ax is not None else plt.subplots(figsize=(4.2, 3.6))[1]
    edges = table["edges"].numpy()
    width = edges[1] - edges[0]
    filled = (table["count"] > 0).numpy()
    ax.bar(edges[:-1][filled], table["accuracy"].numpy()[filled], width=width, align="edge",
           edgecolor="black", alpha=0.7, label=label or "accuracy in bin")
    for left, accuracy, count in zip(edges[:-1][filled], table["accuracy"].numpy()[filled], table["count"].numpy()[filled]):
        ax.text(left + width / 2, accuracy + 0.01, f"{int(count)}", ha="center", va="bottom", fontsize=7)
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.08)
    ax.set_xlabel("confidence (highest probability)")
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize=8)
    return ax


def plot_latencies(results: Sequence[Any], ax: Axes | None = None) -> Axes:
    """Latency distributions of load tests (``course_lib.loadtest.LoadResult``) as horizontal box
    plots on a log scale, with p50, p95 and p99 marked on each."""
    ax = ax if ax is not None else plt.subplots(figsize=(7, 0.5 + 0.45 * len(results)))[1]
    data = [[t * 1e3 for t in r.latencies] for r in results]
    ax.boxplot(data, orientation="horizontal", whis=(1, 99), showfliers=False, widths=0.5)
    for row, r in enumerate(results, start=1):
        for q, marker in ((50, "o"), (95, "s"), (99, "^")):
            ax.plot(r.percentile_ms(q), row, marker, color="C3", ms=5, label=f"p{q}" if row == 1 else None)
    ax.set_yticks(range(1, len(results) + 1), [r.name for r in results])
    ax.set_xscale("log")
    ax.set_xlabel("latency per request (ms, log scale); whiskers at p1 and p99")
    ax.invert_yaxis()
    ax.legend(loc="lower right", fontsize=8)
    return ax


def _show_token(token: str) -> str:
    """A token as it should read on an axis: a space as ␣, a newline as \\n, a tab as \\t, other
    unprintable characters escaped as repr() does (' Paris' -> '␣Paris', '\\n' -> '\\\\n')."""
    if not token:
        return "''"
    escapes = {" ": "␣", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
    return "".join(escapes.get(c, c if c.isprintable() else repr(c)[1:-1]) for c in token)


def plot_next_token_probs(
    tokens: Sequence[str],
    probs: Sequence[float] | torch.Tensor,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """The k most probable next tokens as horizontal bars, the most probable on top, each labelled
    with its probability. Whitespace in the tokens is made visible (' Paris' shows as '␣Paris',
    '\\n' as '\\\\n'). ``probs`` are probabilities of one distribution (e.g. ``torch.topk`` of a
    softmax): each in [0, 1], summing to at most 1; the title defaults to "the k most probable next
    tokens"."""
    if isinstance(tokens, str) or not isinstance(tokens, Sequence) or not all(isinstance(t, str) for t in tokens):
        raise ValueError(f"tokens must be a sequence of strings, got {tokens!r}")
    values = torch.as_tensor(probs.detach().cpu() if isinstance(probs, torch.Tensor) else probs, dtype=torch.float64)
    if values.ndim != 1:
        raise ValueError(f"probs must be one-dimensional (one probability per token), got shape {tuple(values.shape)}")
    if len(tokens) != len(values):
        raise ValueError(f"tokens and probs must have the same length, got {len(tokens)} tokens and {len(values)} probs")
    if not len(tokens):
        raise ValueError("tokens and probs must not be empty")
    if not torch.all((values >= 0) & (values <= 1)):  # NaN fails both
        raise ValueError(f"probs must be probabilities in [0, 1], got {values.tolist()}")
    if values.sum() > 1.01:  # bfloat16 rounding can push a full distribution's sum a little above 1
        raise ValueError(f"probs must come from one distribution (sum <= 1), got sum {values.sum().item():.4g}")
    order = sorted(range(len(tokens)), key=lambda i: -values[i].item())
    shown = [_show_token(tokens[i]) for i in order]
    p = values[order].numpy()
    ax = ax if ax is not None else plt.subplots(figsize=(5.5, 0.8 + 0.32 * len(tokens)))[1]
    rows = range(len(p))
    ax.barh(rows, p, color="#8ab4f8", edgecolor="#1a73e8", height=0.7)
    for row, value in zip(rows, p):
        ax.text(value + 0.01 * max(p.max(), 0.05), row, f"{value:.3f}", ha="left", va="center", fontsize=8)
    ax.set_yticks(rows, shown, family="monospace")
    ax.invert_yaxis()  # the most probable on top
    ax.set_xlim(0, max(p.max(), 0.05) * 1.18)
    ax.set_xlabel("probability")
    ax.set_title(title if title is not None else f"the {len(p)} most probable next tokens", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    return ax


def plot_generation_speed(
    lengths: Sequence[int],
    series: Mapping[str, Sequence[float]],
    ax: Axes | None = None,
) -> Axes:
    """Generation speed in tokens per second against the number of new tokens generated (log x
    axis): one line with markers per series, e.g. ``{"ours, KV cache": [...], "ours, no cache": [...],
    "transformers, KV cache": [...], "transformers, no cache": [...]}``, each with one speed per
    length. Series whose names share the part before the comma share a colour; a series whose name
    contains "no cache" is dashed."""
    if isinstance(lengths, str) or not isinstance(lengths, Sequence) or not lengths:
        raise ValueError(f"lengths must be a non-empty sequence of ints, got {lengths!r}")
    lengths = [require_int(f"lengths[{i}]", n) for i, n in enumerate(lengths)]
    if not isinstance(series, Mapping) or not series:
        raise ValueError(f"series must be a non-empty mapping of name -> tokens/s per length, got {series!r}")
    checked = {}
    for name, speeds in series.items():
        speeds = torch.as_tensor(speeds.detach().cpu() if isinstance(speeds, torch.Tensor) else speeds,
                                 dtype=torch.float64)
        if speeds.shape != (len(lengths),):
            raise ValueError(f"series[{name!r}] must have one speed per length ({len(lengths)}), "
                             f"got shape {tuple(speeds.shape)}")
        if not torch.all(torch.isfinite(speeds) & (speeds > 0)):
            raise ValueError(f"series[{name!r}] must hold finite speeds > 0 (tokens/s), got {speeds.tolist()}")
        checked[str(name)] = speeds.numpy()
    ax = ax if ax is not None else plt.subplots(figsize=(6, 3.8))[1]
    families = list(dict.fromkeys(name.split(",")[0].strip() for name in checked))
    markers = "osD^vP*X"
    for k, (name, speeds) in enumerate(checked.items()):
        family = families.index(name.split(",")[0].strip())
        ax.plot(lengths, speeds, marker=markers[k % len(markers)], ms=5, color=f"C{family}",
                ls="--" if "no cache" in name.lower() else "-", label=name)
    ax.set_xscale("log")
    ax.set_xticks(sorted(set(lengths)), [str(n) for n in sorted(set(lengths))])
    ax.minorticks_off()
    ax.set_ylim(bottom=0)
    ax.set_xlabel("new tokens generated (log scale)")
    ax.set_ylabel("tokens / s")
    ax.set_title("generation speed", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax
