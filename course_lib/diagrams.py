"""Diagrams as code: the course's pictures of architectures and data flow, drawn with matplotlib so
they are versioned, render offline and are stored as notebook outputs.

Each function draws one labelled schematic (boxes, arrows and text, axes off) and returns the
Figure; a notebook ends the cell with ``plt.show()``. Most diagrams are drawn on a canvas whose data
units are inches (``_panels``), so a box of width 1.4 is 1.4 inches wide whatever the figure, and the
text sizes below can be checked against the boxes they sit in. The colours come from ``PALETTE``.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from numbers import Integral

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyBboxPatch, Rectangle

from course_lib.arguments import require_int

PALETTE = {
    "data": "#fff4e0",  # inputs, outputs and data (as plots.draw_graph)
    "layer": "#e8f0fe",  # learned layers and computation
    "norm": "#e6f4ea",  # normalisation
    "attention": "#fce8e6",  # attention
    "frozen": "#dadce0",  # frozen weights
    "trainable": "#fde293",  # trainable weights
    "system": "#f3e8fd",  # runtimes, services and communication between devices
    "band": "#f5f6f7",  # background of a group of boxes
    "coming": "#ffffff",  # chapters not written yet
    "edge": "#5f6368",  # box edges and arrows
    "link": "#1a73e8",  # extra arrows (a prerequisite that is not the previous chapter) and highlights
    "allowed": "#8ab4f8",  # attention masks: the query may attend to the key
    "accent": "#c5221f",  # warnings: clipping
    "muted": "#9aa0a6",  # dashed, lighter: what is not there (yet)
    "text": "#202124",
}


# ---------------------------------------------------------------------------------------------------
# Drawing helpers


def _panels(count: int, width: float, height: float, titles: Sequence[str] = (),
            ratios: Sequence[float] | None = None) -> tuple[Figure, list[Axes]]:
    """A figure of ``count`` side-by-side panels, axes off, whose data units are inches: each panel
    spans x in [0, width / count] (or its share of ``width`` given by ``ratios``) and y in
    [0, height - title space]."""
    title_space = 0.4 if titles else 0.0
    ratios = list(ratios) if ratios is not None else [1.0] * count
    fig, axes = plt.subplots(1, count, figsize=(width, height), squeeze=False,
                             gridspec_kw={"width_ratios": ratios} if len(set(ratios)) > 1 else None)
    fig.subplots_adjust(left=0, right=1, bottom=0, top=1 - title_space / height, wspace=0)
    for i, ax in enumerate(axes[0]):
        ax.set_xlim(0, width * ratios[i] / sum(ratios))
        ax.set_ylim(0, height - title_space)
        ax.axis("off")
        if i < len(titles):
            ax.set_title(titles[i], fontsize=10.5, fontweight="bold", color=PALETTE["text"])
    return fig, list(axes[0])


def _box(
    ax: Axes,
    xy: tuple[float, float],
    w: float,
    h: float,
    text: str,
    colour: str,
    *,
    fontsize: float = 8.5,
    dashed: bool = False,
    text_colour: str | None = None,
    **text_kwargs: object,
) -> FancyBboxPatch:
    """A rounded box of size ``w`` × ``h`` centred on ``xy`` with ``text`` in its middle."""
    x, y = xy
    patch = FancyBboxPatch(
        (x - w / 2, y - h / 2), w, h, boxstyle=f"round,pad=0,rounding_size={min(0.08, w / 4, h / 4)}",
        facecolor=colour, edgecolor=PALETTE["muted"] if dashed else PALETTE["edge"], linewidth=1,
        linestyle="--" if dashed else "-", zorder=2,
    )
    ax.add_patch(patch)
    if text:
        ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, zorder=3,
                color=text_colour or (PALETTE["muted"] if dashed else PALETTE["text"]), **text_kwargs)
    return patch


def _arrow(
    ax: Axes,
    start: tuple[float, float],
    end: tuple[float, float],
    text: str | None = None,
    *,
    colour: str | None = None,
    dashed: bool = False,
    fontsize: float = 7.5,
    text_offset: tuple[float, float] = (0.0, 0.0),
) -> None:
    """A straight arrow from ``start`` to ``end``; ``text`` sits on its middle (moved by
    ``text_offset``) on a white background."""
    colour = colour or PALETTE["edge"]
    ax.annotate(
        "", xy=end, xytext=start, zorder=1,
        arrowprops=dict(arrowstyle="-|>", color=colour, lw=1.1, shrinkA=0, shrinkB=0, mutation_scale=10,
                        linestyle="--" if dashed else "-"),
    )
    if text:
        x = (start[0] + end[0]) / 2 + text_offset[0]
        y = (start[1] + end[1]) / 2 + text_offset[1]
        ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, color=colour, zorder=3,
                bbox=dict(facecolor="white", edgecolor="none", pad=0.8))


def _route(ax: Axes, points: Sequence[tuple[float, float]], *, colour: str | None = None, dashed: bool = False) -> None:
    """An arrow along a polyline (right-angled connectors): lines through ``points``, the head at the last."""
    colour = colour or PALETTE["edge"]
    xs, ys = zip(*points[:-1])
    ax.plot(xs, ys, color=colour, lw=1.1, ls="--" if dashed else "-", zorder=1, solid_joinstyle="miter")
    _arrow(ax, points[-2], points[-1], colour=colour, dashed=dashed)


def _add(ax: Axes, xy: tuple[float, float], radius: float = 0.14) -> None:
    """A residual addition: the symbol ⊕ on a white disc of ``radius`` (where arrows start and end)."""
    ax.add_patch(Circle(xy, radius, facecolor="white", edgecolor="none", zorder=2))
    ax.text(xy[0], xy[1], "⊕", ha="center", va="center", fontsize=17, color=PALETTE["text"], zorder=3)


def _symbol(value: object, name: str) -> str:
    """A dimension printed in a diagram: an int >= 1 (not a bool), or a non-empty string (a symbol)."""
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, Integral) and not isinstance(value, bool) and value >= 1:
        return str(int(value))
    raise ValueError(f"{name} must be an int >= 1 or a non-empty string, got {value!r}")


# ---------------------------------------------------------------------------------------------------
# 1. The course


# (chapter, title, what you build, band, column); band 3 is "beyond". A chapter still to come has
# nothing to build yet ("") and is drawn dashed.
_CHAPTERS = [
    ("00", "setup", "a checked environment", 0, 0),
    ("01", "tensors", "broadcasting and einsum code", 0, 1),
    ("02", "autograd", "an autograd engine", 0, 2),
    ("03", "neural networks", "an MLP + training loop", 0, 3),
    ("04", "attention", "multi-head attention, a Transformer block", 1, 0),
    ("05", "BERT", "a BERT layer", 1, 1),
    ("06", "pretraining", "a GPT", 1, 2),
    ("07", "fine-tuning", "a fine-tuning loop", 2, 0),
    ("08", "LoRA", "LoRALinear", 2, 1),
    ("09", "compression", "an int8 Linear", 2, 2),
    ("10", "deployment", "a /predict endpoint", 2, 3),
    ("11", "scaling", "DDP by hand", 2, 4),
    ("12", "a generative LLM\n(SmolLM2)", "a Llama decoder + KV cache", 3, 0),
    ("13", "alignment\n(SFT, DPO)", "SFT labels + the DPO loss", 3, 1),
    ("14", "vision\n(CNN, ViT)", "conv2d + a ViT forward", 3, 2),
    ("15", "speech\n(Whisper)", "a mel filterbank + cross-attention", 3, 3),
]
_BANDS = ["foundations\n00–03", "the transformer\n04–06", "adapt and ship\n07–11", "beyond\n12–15"]


def course_map() -> Figure:
    """The course as a map: four bands of chapters (foundations, the transformer, adapt and ship,
    beyond), what you build in each, and arrows for what each chapter needs. The chapters not
    written yet are drawn dashed and marked "coming" (none now)."""
    fig, (ax,) = _panels(1, 10, 5.65, ["The course map: what you build, chapter by chapter"])
    col = [2.15 + 1.72 * k for k in range(5)]  # box centres
    gutter = [c + 0.86 for c in col]  # the free vertical channels right of each column
    left_gutter = col[0] - 0.86
    row = [4.7 - 1.3 * r for r in range(4)]
    bw, bh = 1.42, 0.46

    def lane(r: int, k: int) -> float:  # horizontal channels below row r's "you build" lines
        return row[r] - bh / 2 - 0.44 - 0.1 * k

    for r, label in enumerate(_BANDS):
        top, bottom = row[r] + bh / 2 + 0.1, row[r] - bh / 2 - 0.42
        ax.add_patch(FancyBboxPatch((0.05, bottom), 9.9, top - bottom, boxstyle="round,pad=0,rounding_size=0.08",
                                    facecolor=PALETTE["band"], edgecolor="none", zorder=0))
        ax.text(0.15, row[r], label, ha="left", va="center", fontsize=8.5, fontweight="bold",
                color=PALETTE["text"], linespacing=1.4)

    coming_chapters = {number for number, _, build, _, _ in _CHAPTERS if not build}
    for number, title, build, band, c in _CHAPTERS:
        coming = number in coming_chapters
        _box(ax, (col[c], row[band]), bw, bh, f"{number} {title}", PALETTE["coming" if coming else "layer"],
             fontsize=8, dashed=coming)
        under = "coming" if coming else textwrap.fill(f"you build: {build}", 26)
        ax.text(col[c], row[band] - bh / 2 - 0.04, under, ha="center", va="top", fontsize=6.5,
                color=PALETTE["muted"] if coming else PALETTE["text"], style="italic" if coming else "normal")

    # each chapter to the next: along a row, then "carriage returns" to the next row
    for (_, _, _, band, c), (next_number, _, _, next_band, next_c) in zip(_CHAPTERS, _CHAPTERS[1:]):
        coming = next_number in coming_chapters
        colour = PALETTE["muted"] if coming else PALETTE["edge"]
        if band == next_band:
            _arrow(ax, (col[c] + bw / 2, row[band] + 0.06), (col[next_c] - bw / 2, row[band] + 0.06),
                   colour=colour, dashed=coming)
        else:
            # 06 -> 07 enters right of 05 -> 07 and runs below it, so the two do not cross
            enter, y_lane = (col[0] + 0.45, lane(1, 1)) if band == 1 else (col[0] - 0.25, lane(band, 2))
            _route(ax, [(col[c] + bw / 2, row[band]), (gutter[c], row[band]), (gutter[c], y_lane), (enter, y_lane),
                        (enter, row[next_band] + bh / 2)], colour=colour, dashed=coming)

    # extra prerequisites
    link = PALETTE["link"]
    low = -0.13  # they leave and enter boxes below the row arrows
    _route(ax, [(col[1] - bw / 2, row[1] + low), (gutter[0], row[1] + low), (gutter[0], lane(1, 0)),
                (col[0] + 0.1, lane(1, 0)), (col[0] + 0.1, row[2] + bh / 2)], colour=link)  # 05 -> 07
    for target, k in ((2, 0), (3, 1)):  # 07 -> 09, 07 -> 10
        _route(ax, [(col[0] + bw / 2, row[2] + low), (gutter[0], row[2] + low), (gutter[0], lane(2, k)),
                    (gutter[target - 1], lane(2, k)), (gutter[target - 1], row[2] + low),
                    (col[target] - bw / 2, row[2] + low)], colour=link)
    _route(ax, [(col[0] - bw / 2, row[1]), (left_gutter, row[1]), (left_gutter, row[3]),
                (col[0] - bw / 2, row[3])], colour=link, dashed="12" in coming_chapters)  # 04 -> 12

    legend = [
        ("→", PALETTE["edge"], "the next chapter"),
        ("→", link, "05 → 07: the BERT encoder is fine-tuned"),
        ("→", link, "07 → 09, 10: the saved classifier"),
        ("→", link, "04 → 12: attention, now in a decoder"),
        ("⇢", PALETTE["muted"], "dashed: coming"),
    ]
    for i, (mark, colour, text) in enumerate(legend):
        y = row[1] + 0.28 - 0.17 * i
        ax.text(6.85, y, mark, ha="left", va="center", fontsize=9, color=colour)
        ax.text(7.1, y, text, ha="left", va="center", fontsize=7, color=PALETTE["text"])
    return fig


# ---------------------------------------------------------------------------------------------------
# 2. The Transformer block

_NORMS = ("pre", "post")


def _draw_transformer_block(ax: Axes, norm: str) -> None:
    """Draw one encoder block, input at the top, on a panel of about 4.5 × 6.4 inches."""
    if norm not in _NORMS:
        raise ValueError(f"norm must be 'pre' or 'post', got {norm!r}")
    width = ax.get_xlim()[1]
    x = width / 2
    x_in, out = ("input x  (B, T, D)", "data"), ("output  (B, T, D)", "data")
    ln, mha, drop = ("LayerNorm", "norm"), ("multi-head attention", "attention"), ("dropout", "layer")
    mlp = ("MLP: Linear → GELU → Linear", "layer")
    # nodes from the top; a branch (first node, the "add" it ends in) has the residual drawn around it
    if norm == "pre":  # the LayerNorm inside each branch, before the sublayer
        nodes = [x_in, ln, mha, drop, "add", ln, mlp, drop, "add", out]
        branches = [(1, 4, "attention sublayer"), (5, 8, "MLP sublayer")]
    else:  # the LayerNorm on the main path, after each addition
        nodes = [x_in, mha, drop, "add", ln, mlp, drop, "add", ln, out]
        branches = [(1, 3, "attention sublayer"), (5, 7, "MLP sublayer")]
    top = ax.get_ylim()[1] - 0.35
    pitch = (top - 0.35) / (len(nodes) - 1)
    ys = [top - i * pitch for i in range(len(nodes))]
    bw, bh, radius = 2.3, 0.34, 0.14
    half = [radius if node == "add" else bh / 2 for node in nodes]

    for start, add, label in branches:  # a light background behind each branch, the skip around it
        y_top, y_bottom = ys[start] + bh / 2 + 0.07, ys[add - 1] - bh / 2 - 0.07
        ax.add_patch(FancyBboxPatch((x - bw / 2 - 0.12, y_bottom), bw + 0.24, y_top - y_bottom,
                                    boxstyle="round,pad=0,rounding_size=0.08", facecolor=PALETTE["band"],
                                    edgecolor=PALETTE["muted"], linestyle=":", zorder=0))
        ax.text(x - bw / 2 - 0.28, (y_top + y_bottom) / 2, label, rotation=90, ha="center", va="center",
                fontsize=7.5, color=PALETTE["edge"])
        y_branch = (ys[start - 1] - half[start - 1] + ys[start] + half[start]) / 2
        skip_x = x + bw / 2 + 0.35
        ax.add_patch(Circle((x, y_branch), 0.035, color=PALETTE["edge"], zorder=3))
        _route(ax, [(x, y_branch), (skip_x, y_branch), (skip_x, ys[add]), (x + radius, ys[add])])
        ax.text(skip_x + 0.14, (y_branch + ys[add]) / 2, "residual", rotation=90, ha="center", va="center",
                fontsize=7.5, color=PALETTE["edge"])

    for i, node in enumerate(nodes):
        if node == "add":
            _add(ax, (x, ys[i]), radius)
        else:
            text, colour = node
            _box(ax, (x, ys[i]), bw, bh, text, PALETTE[colour], fontsize=8)
        if i:
            _arrow(ax, (x, ys[i - 1] - half[i - 1]), (x, ys[i] + half[i]))


def transformer_block(norm: str = "pre") -> Figure:
    """A Transformer encoder block as a vertical flow, input at the top: attention and an MLP, each
    in a branch with dropout and a residual addition around it. ``norm="pre"`` puts the LayerNorm
    first inside each branch (GPT-2, our block); ``norm="post"`` after each addition (BERT and the
    2017 Transformer)."""
    if norm not in _NORMS:
        raise ValueError(f"norm must be 'pre' or 'post', got {norm!r}")
    title = {"pre": "pre-norm (GPT-2, our block)", "post": "post-norm (BERT, 2017 Transformer)"}[norm]
    fig, (ax,) = _panels(1, 4.6, 6.8, [title])
    _draw_transformer_block(ax, norm)
    return fig


def transformer_blocks() -> Figure:
    """The pre-norm and the post-norm block side by side, to compare where the LayerNorm sits."""
    fig, axes = _panels(2, 9.2, 6.8, ["pre-norm (GPT-2, our block)", "post-norm (BERT, 2017 Transformer)"])
    for ax, norm in zip(axes, _NORMS):
        _draw_transformer_block(ax, norm)
    return fig


# ---------------------------------------------------------------------------------------------------
# 3. Attention


def _grid(ax: Axes, centre: tuple[float, float], size: float, values: np.ndarray, colour: str) -> None:
    """A small square matrix: one cell per value in [0, 1], darker for larger."""
    n = values.shape[0]
    cell = size / n
    x0, y0 = centre[0] - size / 2, centre[1] + size / 2
    base = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)]) / 255
    for i in range(n):
        for j in range(n):
            shade = 1 - values[i, j] * (1 - base)
            ax.add_patch(Rectangle((x0 + j * cell, y0 - (i + 1) * cell), cell, cell, facecolor=tuple(shade),
                                   edgecolor="white", lw=0.8, zorder=2))
    ax.add_patch(Rectangle((x0, y0 - size), size, size, fill=False, edgecolor=PALETTE["edge"], lw=1, zorder=3))


def attention_shapes(batch: int | str = "B", tokens: int | str = "T", d_model: int | str = "D",
                     heads: int | str = "H") -> Figure:
    """The shapes through multi-head attention, left to right: x, the Q/K/V projections, the split
    into heads, the scores Q Kᵀ / √(D/H), the softmax over keys, weights @ V, the merge of the heads
    and the output projection. The arguments are the symbols (or sizes) printed."""
    b, t, d, h = (_symbol(v, n) for v, n in ((batch, "batch"), (tokens, "tokens"), (d_model, "d_model"),
                                              (heads, "heads")))
    if d.isdigit() and h.isdigit():
        d_model, heads = int(d), int(h)
        if d_model % heads:
            raise ValueError(f"d_model must be divisible by heads, got d_model={d_model}, heads={heads}")
        dh = str(d_model // heads)
        sqrt = f"√{dh}"
    else:
        dh = f"{d}/{h}"
        sqrt = f"√({dh})"
    fig, (ax,) = _panels(1, 10, 4.1, ["Multi-head attention: the shapes"])
    xs = [0.5, 1.7, 3.0, 4.45, 5.85, 7.2, 8.35, 9.45]
    y_q, y_k, y_v = 2.7, 1.7, 0.7
    w, h_box, fs = 0.95, 0.42, 7.5
    btd, bhtd, bhtt = f"({b}, {t}, {d})", f"({b}, {h}, {t}, {dh})", f"({b}, {h}, {t}, {t})"

    def shape(xy: tuple[float, float], text: str, below: float) -> None:
        ax.text(xy[0], xy[1] - below, text, ha="center", va="top", fontsize=7, color=PALETTE["link"])

    _box(ax, (xs[0], y_k), 0.6, h_box, "x", PALETTE["data"], fontsize=9)
    shape((xs[0], y_k), btd, h_box / 2 + 0.04)
    for name, y in (("Q", y_q), ("K", y_k), ("V", y_v)):
        _box(ax, (xs[1], y), w, h_box, f"{name} = x W_{name}", PALETTE["layer"], fontsize=fs)
        shape((xs[1], y), btd, h_box / 2 + 0.04)
        _box(ax, (xs[2], y), w + 0.2, h_box, f"{name}: split heads", PALETTE["layer"], fontsize=fs)
        shape((xs[2], y), bhtd, h_box / 2 + 0.04)
        _route(ax, [(xs[0] + 0.3, y_k), (xs[0] + 0.5, y_k), (xs[0] + 0.5, y), (xs[1] - w / 2, y)])
        _arrow(ax, (xs[1] + w / 2, y), (xs[2] - w / 2 - 0.1, y))
    for x, text in ((xs[1], "three Linear layers"), (xs[2], "view + transpose")):
        ax.text(x, y_q + h_box / 2 + 0.08, text, ha="center", va="bottom", fontsize=7, color=PALETTE["edge"])

    size = 0.75  # the (T, T) matrices, drawn at the height of the Q row
    scores = np.random.default_rng(0).random((5, 5))
    weights = np.exp(3 * scores) / np.exp(3 * scores).sum(1, keepdims=True)
    for x, values, text in ((xs[3], scores, f"scores = Q Kᵀ / {sqrt}"),
                            (xs[4], weights / weights.max(), "softmax over keys")):
        _grid(ax, (x, y_q), size, values, PALETTE["link"])
        ax.text(x, y_q + size / 2 + 0.08, text, ha="center", va="bottom", fontsize=fs)
        shape((x, y_q), bhtt, size / 2 + 0.05)
    ax.text(xs[4], y_q - size / 2 - 0.27, "each row sums to 1", ha="center", va="top", fontsize=7,
            color=PALETTE["edge"], style="italic")
    grid_left = xs[3] - size / 2
    for y_from, y_to in ((y_q, y_q + 0.15), (y_k, y_q - 0.15)):  # Q and K into the scores
        _route(ax, [(xs[2] + w / 2 + 0.1, y_from), (grid_left - 0.15, y_from), (grid_left - 0.15, y_to),
                    (grid_left, y_to)])
    _arrow(ax, (xs[3] + size / 2, y_q), (xs[4] - size / 2, y_q))

    _box(ax, (xs[5], y_k), w + 0.1, h_box, "weights @ V", PALETTE["attention"], fontsize=fs)
    shape((xs[5], y_k), bhtd, h_box / 2 + 0.04)
    _route(ax, [(xs[4] + size / 2, y_q), (xs[5], y_q), (xs[5], y_k + h_box / 2)])
    v_x = xs[5] - (w + 0.1) / 2 - 0.2
    _route(ax, [(xs[2] + w / 2 + 0.1, y_v), (v_x, y_v), (v_x, y_k - 0.1), (xs[5] - (w + 0.1) / 2, y_k - 0.1)])
    ax.text(xs[4], y_v + 0.05, "V", ha="center", va="bottom", fontsize=fs, color=PALETTE["edge"])
    _box(ax, (xs[6], y_k), w - 0.1, h_box, "merge heads", PALETTE["layer"], fontsize=fs)
    shape((xs[6], y_k), btd, h_box / 2 + 0.04)
    _box(ax, (xs[7], y_k), w - 0.05, h_box + 0.12, "output\nprojection", PALETTE["layer"], fontsize=fs)
    shape((xs[7], y_k), btd, h_box / 2 + 0.1)
    _arrow(ax, (xs[5] + (w + 0.1) / 2, y_k), (xs[6] - (w - 0.1) / 2, y_k))
    _arrow(ax, (xs[6] + (w - 0.1) / 2, y_k), (xs[7] - (w - 0.05) / 2, y_k))
    return fig


def attention_masks(n: int = 6, padding: int | None = None) -> Figure:
    """BERT's and GPT's attention masks side by side as n × n grids (1: the query may attend to the
    key), and a padding mask whose last ``padding`` keys are [PAD]: 2 by default (1 when n is 2), no
    third panel when 0."""
    n = require_int("n", n, at_least=2)
    padding = min(2, n - 1) if padding is None else require_int("padding", padding, at_least=0)
    if padding >= n:
        raise ValueError(f"padding must be < n (at least one real token), got padding={padding}, n={n}")
    masks = [("BERT: bidirectional\n(every token sees every token)", np.ones((n, n))),
             ("GPT: causal\n(token i sees tokens ≤ i)", np.tril(np.ones((n, n))))]
    if padding:
        pad = np.ones((n, n))
        pad[:, n - padding:] = 0
        masks.append((f"padding mask\n(the last {padding} keys are [PAD])", pad))
    fig, axes = plt.subplots(1, len(masks), figsize=(3.3 * len(masks), 3.9), layout="constrained")
    cmap = ListedColormap(["white", PALETTE["allowed"]])
    for ax, (title, mask) in zip(axes, masks):
        ax.imshow(mask, cmap=cmap, vmin=0, vmax=1)
        ax.set_xticks(np.arange(-0.5, n, 1), minor=True)
        ax.set_yticks(np.arange(-0.5, n, 1), minor=True)
        ax.grid(which="minor", color=PALETTE["edge"], lw=0.6)
        ax.tick_params(which="minor", length=0)
        keys = [str(j) for j in range(n)]
        if mask is masks[-1][1] and padding:
            keys[n - padding:] = ["PAD"] * padding
        ax.set_xticks(range(n), keys, fontsize=7)
        ax.set_yticks(range(n), [str(i) for i in range(n)], fontsize=7)
        ax.set_xlabel("key (attended to)", fontsize=8)
        ax.set_ylabel("query (attending)", fontsize=8)
        ax.set_title(title, fontsize=9)
    fig.suptitle("blue: the query may attend to the key;  white: masked (score set to -inf before the softmax)",
                 fontsize=8.5)
    return fig


# ---------------------------------------------------------------------------------------------------
# 4. Tokens


def _check_splits(words: object) -> list[tuple[str, list[str]]]:
    """``words`` as a list of (word, pieces); TypeError/ValueError naming ``words`` otherwise."""
    if isinstance(words, (str, bytes)) or not isinstance(words, Sequence):
        raise TypeError(f"words must be a sequence of (word, pieces) pairs, got {type(words).__name__}")
    if not words:
        raise ValueError("words must contain at least one (word, pieces) pair, got an empty sequence")
    checked = []
    for i, pair in enumerate(words):
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise TypeError(f"words[{i}] must be a (word, pieces) pair, got {pair!r}")
        word, pieces = pair
        if not isinstance(word, str):
            raise TypeError(f"words[{i}]: the word must be a string, got {type(word).__name__}")
        if isinstance(pieces, (str, bytes)) or not isinstance(pieces, Sequence):
            raise TypeError(f"words[{i}]: the pieces of {word!r} must be a list of strings, got {pieces!r}")
        if not pieces:
            raise ValueError(f"words[{i}]: the pieces of {word!r} must be a non-empty list of strings, got {pieces!r}")
        if not all(isinstance(p, str) and p for p in pieces):
            raise TypeError(f"words[{i}]: the pieces of {word!r} must all be non-empty strings, got {pieces!r}")
        checked.append((word, list(pieces)))
    return checked


def token_splits(words: Sequence[tuple[str, Sequence[str]]], title: str = "How the tokenizer splits words") -> Figure:
    """Each word with, below it, the pieces the tokenizer split it into as adjacent boxes (pass the
    real tokenizer's output, e.g. ``[(w, tokenizer.tokenize(w)) for w in words]``). Pieces that
    continue a word (WordPiece's ``##``) are coloured differently from pieces that start one."""
    splits = _check_splits(words)
    # inches: one monospace character at 10 pt, a piece's padding, the gap between words, a line's width
    char, pad, gap, width_budget = 0.085, 0.2, 0.35, 9.4

    def piece_width(piece: str) -> float:
        return char * len(piece) + pad

    groups = []  # (word, pieces, piece widths, group width)
    for word, pieces in splits:
        widths = [piece_width(p) for p in pieces]
        groups.append((word, pieces, widths, max(sum(widths), char * 1.1 * len(word) + 0.1)))
    lines: list[list[int]] = [[]]
    used = 0.0
    for i, (*_, group_width) in enumerate(groups):
        if lines[-1] and used + gap + group_width > width_budget:
            lines.append([])
            used = 0.0
        used += (gap if lines[-1] else 0) + group_width
        lines[-1].append(i)
    widest = max(sum(groups[i][3] for i in line) + gap * (len(line) - 1) for line in lines)
    width = max(6.0, widest + 0.6)
    line_height = 1.25
    height = 0.4 + line_height * len(lines) + 0.45
    fig, (ax,) = _panels(1, width, height, [title])
    for row, line in enumerate(lines):
        y_word = height - 0.4 - 0.3 - row * line_height
        y_piece = y_word - 0.6
        line_width = sum(groups[i][3] for i in line) + gap * (len(line) - 1)
        x = (width - line_width) / 2
        for i in line:
            word, pieces, widths, group_width = groups[i]
            centre = x + group_width / 2
            ax.text(centre, y_word, word, ha="center", va="center", fontsize=11, fontweight="bold",
                    color=PALETTE["text"])
            left = centre - sum(widths) / 2
            ax.plot([left, left + sum(widths)], [y_word - 0.25] * 2, color=PALETTE["muted"], lw=1)
            for piece, piece_w in zip(pieces, widths):
                continues = piece.startswith("##")
                _box(ax, (left + piece_w / 2, y_piece), piece_w, 0.4, piece,
                     PALETTE["attention" if continues else "layer"], fontsize=10, family="monospace")
                left += piece_w
            ax.text(centre, y_piece - 0.3, f"{len(pieces)} token{'s' if len(pieces) != 1 else ''}", ha="center",
                    va="top", fontsize=7, color=PALETTE["edge"])
            x += group_width + gap
    ax.text(width / 2, 0.12, "blue: a piece that starts a word;  pink: a piece that continues one (## in WordPiece)",
            ha="center", va="bottom", fontsize=7, color=PALETTE["edge"])
    return fig


# ---------------------------------------------------------------------------------------------------
# 5. GPT


def gpt_architecture() -> Figure:
    """The GPT of chapter 06 as a vertical stack, token ids at the top: token and position
    embeddings, N causal pre-norm blocks, the final LayerNorm, the LM head (its weight tied to the
    token embedding) and the logits, used for the next-token loss or for sampling."""
    fig, (ax,) = _panels(1, 8.6, 6.2, ["GPT: a decoder-only Transformer"])
    x, bw, bh = 4.0, 2.9, 0.42
    x_tok, x_pos, ew = 2.85, 5.15, 1.95
    y_in, y_emb, y_add, y_block, y_ln, y_head, y_logits = 5.3, 4.5, 3.75, 2.95, 2.15, 1.45, 0.65

    def shape(y: float, text: str) -> None:
        ax.text(x + bw / 2 + 0.3, y, text, ha="left", va="center", fontsize=7.5, color=PALETTE["link"])

    _box(ax, (x_tok, y_in), ew, bh - 0.06, "token ids", PALETTE["data"], fontsize=8)
    ax.text(x_tok - ew / 2 - 0.1, y_in, "(B, T)", ha="right", va="center", fontsize=7.5, color=PALETTE["link"])
    _box(ax, (x_pos, y_in), ew, bh - 0.06, "positions 0, 1, …, T-1", PALETTE["data"], fontsize=8)
    _box(ax, (x_tok, y_emb), ew, bh + 0.1, "token embedding\n(vocab × D)", PALETTE["layer"], fontsize=8)
    _box(ax, (x_pos, y_emb), ew, bh + 0.1, "position embedding\n(T_max × D)", PALETTE["layer"], fontsize=8)
    for xe in (x_tok, x_pos):
        _arrow(ax, (xe, y_in - (bh - 0.06) / 2), (xe, y_emb + (bh + 0.1) / 2))
        _route(ax, [(xe, y_emb - (bh + 0.1) / 2), (xe, y_add), (x + (0.14 if xe > x else -0.14), y_add)])
    _add(ax, (x, y_add))
    shape(y_add, "(B, T, D)")

    for k in (2, 1):  # the stack of blocks, drawn as shadows behind the first
        _box(ax, (x + 0.08 * k, y_block + 0.08 * k), bw, bh + 0.1, "", PALETTE["attention"])
    _box(ax, (x, y_block), bw, bh + 0.1, "N × causal Transformer block\n(pre-norm, causal mask)",
         PALETTE["attention"], fontsize=8)
    shape(y_block, "(B, T, D)")
    _box(ax, (x, y_ln), bw, bh, "final LayerNorm", PALETTE["norm"], fontsize=8)
    _box(ax, (x, y_head), bw, bh, "LM head: Linear D → vocab", PALETTE["layer"], fontsize=8)
    _box(ax, (x, y_logits), bw, bh, "logits", PALETTE["data"], fontsize=8)
    ax.text(x - bw / 2 - 0.1, y_logits, "(B, T, vocab)", ha="right", va="center", fontsize=7.5,
            color=PALETTE["link"])
    _arrow(ax, (x, y_add - 0.14), (x, y_block + (bh + 0.1) / 2 + 0.16))
    _arrow(ax, (x, y_block - (bh + 0.1) / 2), (x, y_ln + bh / 2))
    _arrow(ax, (x, y_ln - bh / 2), (x, y_head + bh / 2))
    _arrow(ax, (x, y_head - bh / 2), (x, y_logits + bh / 2))

    tied_x = 0.55
    _route(ax, [(x_tok - ew / 2, y_emb), (tied_x, y_emb), (tied_x, y_head), (x - bw / 2, y_head)],
           colour=PALETTE["link"], dashed=True)
    ax.text(tied_x + 0.1, (y_emb + y_head) / 2, "tied weights\n(the same\nvocab × D\nmatrix)", ha="left",
            va="center", fontsize=7.5, color=PALETTE["link"])

    uses = [(y_head - 0.05, "training: next-token loss\ncross-entropy against the ids\nshifted by one"),
            (y_logits - 0.3, "generation: sampling\nsoftmax(logits[:, -1] / τ),\ntop-k, append, repeat")]
    x_use, w_use = 7.25, 2.3
    for y, text in uses:
        _box(ax, (x_use, y), w_use, 0.68, text, PALETTE["system"], fontsize=7.5)
        _route(ax, [(x + bw / 2, y_logits), (x + bw / 2 + 0.3, y_logits), (x + bw / 2 + 0.3, y),
                    (x_use - w_use / 2, y)])
    return fig


# ---------------------------------------------------------------------------------------------------
# 6. LoRA


def _matrix_sizes(sizes: tuple[int, int, int] | None) -> tuple[float, float, float]:
    """Drawn lengths (inches) of d_in, d_out and r: in proportion when the sizes are known, clamped
    so that the thin side stays visible; a nominal r ≪ d for symbols (``sizes`` None)."""
    big = 1.7
    if sizes is not None:
        d_in, d_out, r = sizes
        largest = max(d_in, d_out)
        return (max(big * d_in / largest, 0.35), max(big * d_out / largest, 0.35),
                min(max(big * r / largest, 0.14), big))
    return big, big, 0.26


def lora_update(d_in: int | str = "d", d_out: int | str = "k", r: int | str = "r") -> Figure:
    """LoRA: the input goes through the frozen W (d_out × d_in) and, in parallel, through A
    (r × d_in, random init) then B (d_out × r, zeros at init), scaled by α/r; the two are added:
    h = W x + (α/r)·B A x. Matrices are drawn in proportion to their shapes."""
    din, dout, rr = _symbol(d_in, "d_in"), _symbol(d_out, "d_out"), _symbol(r, "r")
    sizes = (int(din), int(dout), int(rr)) if all(v.isdigit() for v in (din, dout, rr)) else None
    if sizes is not None and sizes[2] > min(sizes[:2]):
        raise ValueError(f"r must be <= min(d_in, d_out), got r={rr}, d_in={din}, d_out={dout}")
    wi, wo, wr = _matrix_sizes(sizes)
    fig, (ax,) = _panels(1, 10, 5.0, ["LoRA: a frozen W plus a trainable low-rank update"])
    y_top, y_bottom, y_mid = 3.45, 1.35, 2.4
    x_in, x_w, x_a, x_b, x_scale, x_add, x_h = 0.55, 3.1, 2.55, 4.55, 5.9, 7.0, 8.55

    _box(ax, (x_in, y_mid), 0.6, 0.45, "x", PALETTE["data"], fontsize=10)
    ax.text(x_in, y_mid - 0.3, f"({din})", ha="center", va="top", fontsize=7.5, color=PALETTE["link"])
    # frozen W (d_out × d_in): width d_in, height d_out
    ax.add_patch(Rectangle((x_w - wi / 2, y_top - wo / 2), wi, wo, facecolor=PALETTE["frozen"],
                           edgecolor=PALETTE["edge"], hatch="//", lw=1, zorder=2))
    ax.text(x_w, y_top, "W", ha="center", va="center", fontsize=14, fontweight="bold", zorder=3,
            bbox=dict(facecolor=PALETTE["frozen"], edgecolor="none", pad=1))
    ax.text(x_w + wi / 2 + 0.1, y_top + wo / 2 - 0.05, f"frozen\n{dout} × {din}", ha="left", va="top", fontsize=8,
            color=PALETTE["edge"])
    # A (r × d_in): wide and short; B (d_out × r): narrow and tall
    ax.add_patch(Rectangle((x_a - wi / 2, y_bottom - wr / 2), wi, wr, facecolor=PALETTE["trainable"],
                           edgecolor=PALETTE["edge"], lw=1, zorder=2))
    ax.text(x_a, y_bottom - wr / 2 - 0.08, f"A  ({rr} × {din})\nrandom init", ha="center", va="top", fontsize=8)
    ax.add_patch(Rectangle((x_b - wr / 2, y_bottom - wo / 2), wr, wo, facecolor=PALETTE["trainable"],
                           edgecolor=PALETTE["edge"], lw=1, zorder=2))
    ax.text(x_b, y_bottom, "0", ha="center", va="center", fontsize=9, color=PALETTE["edge"], zorder=3)
    ax.text(x_b + wr / 2 + 0.1, y_bottom + wo / 2 - 0.05, f"B  ({dout} × {rr})\nzeros at init", ha="left", va="top",
            fontsize=8)
    ax.text(x_a, y_bottom + wr / 2 + 0.08, "A", ha="center", va="bottom", fontsize=12, fontweight="bold")
    ax.text(x_b, y_bottom + wo / 2 + 0.06, "B", ha="center", va="bottom", fontsize=12, fontweight="bold")

    _route(ax, [(x_in + 0.3, y_mid), (x_in + 0.6, y_mid), (x_in + 0.6, y_top), (x_w - wi / 2, y_top)])
    _route(ax, [(x_in + 0.3, y_mid), (x_in + 0.6, y_mid), (x_in + 0.6, y_bottom), (x_a - wi / 2, y_bottom)])
    _arrow(ax, (x_a + wi / 2, y_bottom), (x_b - wr / 2, y_bottom), "A x", text_offset=(0, 0.17))
    _box(ax, (x_scale, y_bottom), 0.7, 0.45, "× α/r", PALETTE["trainable"], fontsize=9)
    _arrow(ax, (x_b + wr / 2, y_bottom), (x_scale - 0.35, y_bottom), "B A x", text_offset=(0, -0.18))
    _route(ax, [(x_w + wi / 2, y_top), (x_add, y_top), (x_add, y_mid + 0.14)])
    ax.text(x_add + 0.1, (y_top + y_mid) / 2 + 0.2, "W x", ha="left", va="center", fontsize=7.5, color=PALETTE["edge"])
    _route(ax, [(x_scale + 0.35, y_bottom), (x_add, y_bottom), (x_add, y_mid - 0.14)])
    _add(ax, (x_add, y_mid))
    _box(ax, (x_h, y_mid), 2.25, 0.55, "h = W x + (α/r)·B A x", PALETTE["data"], fontsize=9)
    ax.text(x_h, y_mid - 0.35, f"({dout})", ha="center", va="top", fontsize=7.5, color=PALETTE["link"])
    _arrow(ax, (x_add + 0.14, y_mid), (x_h - 1.125, y_mid))

    trainable = f"trainable: r·(d_in + d_out) = {rr}·({din} + {dout})"
    frozen = f"frozen: d_in·d_out = {din}·{dout}"
    if sizes is not None:
        trainable += f" = {sizes[2] * (sizes[0] + sizes[1]):,}"
        frozen += f" = {sizes[0] * sizes[1]:,}"
    ax.text(x_scale - 0.45, 0.5, f"{trainable}\n{frozen}\nB = 0 at init, so h = W x exactly", ha="left",
            va="center", fontsize=8, color=PALETTE["text"],
            bbox=dict(facecolor=PALETTE["band"], edgecolor=PALETTE["muted"], boxstyle="round,pad=0.4"))
    return fig


# ---------------------------------------------------------------------------------------------------
# 7. Quantization


def quantization_grid(bits: int = 3, x_max: float = 1.0) -> Figure:
    """Symmetric round-to-nearest quantization on a number line: the 2^bits - 1 grid points
    q·s (q from -(2^(bits-1) - 1) to 2^(bits-1) - 1, s = x_max / (2^(bits-1) - 1)), example values
    snapping to their nearest grid point, and a value beyond x_max clipped to the last one."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an int in 2..8, got {bits!r}")
    if isinstance(x_max, bool) or not isinstance(x_max, (int, float)) or not math.isfinite(x_max) or x_max <= 0:
        raise ValueError(f"x_max must be a finite number > 0, got {x_max!r}")
    q_max = 2 ** (bits - 1) - 1
    scale = x_max / q_max
    levels = np.arange(-q_max, q_max + 1)
    fig, ax = plt.subplots(figsize=(10, 3.6))
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.9)
    ax.set_title(f"{bits}-bit symmetric quantization: {len(levels)} grid points, round to nearest", fontsize=10.5,
                 fontweight="bold")
    ax.axis("off")
    span = 1.5 * x_max
    ax.set_xlim(-span, span)
    ax.set_ylim(-1.25, 1.6)

    for side in (-1, 1):  # beyond ±x_max: clipped
        ax.add_patch(Rectangle((side * x_max, -0.18) if side > 0 else (-span * 0.97, -0.18), span * 0.97 - x_max, 0.36,
                               facecolor=PALETTE["accent"], alpha=0.08, edgecolor="none"))
        ax.text(side * (x_max + span * 0.97) / 2, -0.3, "clipped", ha="center", va="top", fontsize=7.5,
                color=PALETTE["accent"])
    ax.plot([-span * 0.97, span * 0.97], [0, 0], color=PALETTE["edge"], lw=1, zorder=1)
    ax.plot(levels * scale, np.zeros(len(levels)), "o" if bits <= 5 else "|", ms=6 if bits <= 5 else 9,
            color=PALETTE["link"], label="grid points", zorder=3)
    step = max(1, math.ceil(2 * q_max / 12))  # label at most about 13 levels
    labelled = sorted({int(q) for q in levels if q % step == 0} | {-q_max, q_max})
    for q in labelled:
        if q not in (-q_max, q_max) and abs(q_max - abs(q)) < step / 2:
            continue
        ax.text(q * scale, -0.2, f"{q}", ha="center", va="top", fontsize=7.5, color=PALETTE["link"])
    ax.text(-span * 0.99, -0.2, "level q", ha="left", va="top", fontsize=7.5, color=PALETTE["link"])
    for side in (-1, 1):
        ax.text(side * x_max, -0.55, f"{'-' if side < 0 else '+'}x_max", ha="center", va="top", fontsize=7.5,
                color=PALETTE["edge"])

    if bits <= 5:  # the step between two grid points; too small to draw for more bits
        ax.annotate("", xy=(-scale, 0.22), xytext=(0, 0.22),
                    arrowprops=dict(arrowstyle="<->", color=PALETTE["text"], lw=1, shrinkA=0, shrinkB=0))
        ax.text(-scale / 2, 0.3, "s", ha="center", va="bottom", fontsize=9, color=PALETTE["text"])

    examples = [-0.8, -0.4, 0.45, 0.85, 1.25]  # times x_max; the last one is clipped
    for i, fraction in enumerate(examples):
        value = fraction * x_max
        q = int(np.clip(np.round(value / scale), -q_max, q_max))
        clipped = abs(value) > x_max
        colour = PALETTE["accent"] if clipped else PALETTE["text"]
        ax.plot([value], [0.95], "v", color=colour, ms=6)
        _arrow(ax, (value, 0.9), (q * scale, 0.09), colour=colour)
        label = f"x = {value:.4g}\n→ {'clipped: ' if clipped else ''}{q}·s = {q * scale:.4g}"
        ax.text(value, 1.05, label, ha="center", va="bottom", fontsize=8, color=colour)
    ax.text(0, -0.95, f"scale s = x_max / (2^(bits-1) - 1) = {x_max:g} / {q_max} = {scale:.3g};   "
            f"x ≈ s · clamp(round(x / s), -{q_max}, {q_max})", ha="center", va="center", fontsize=8.5,
            color=PALETTE["text"])
    return fig


# ---------------------------------------------------------------------------------------------------
# 8. Deployment


def deployment_pipeline() -> Figure:
    """Chapter 10's path from a trained model to clients: export (torch.export, ONNX), runtimes
    (PyTorch, ONNX Runtime, ONNX Runtime int8), a FastAPI service and a load test."""
    fig, (ax,) = _panels(1, 10, 4.4, ["Deployment: export, runtime, service"])
    xs, ws = [0.85, 2.85, 4.95, 7.2, 9.2], [1.5, 1.7, 1.8, 2.0, 1.3]
    for x, header in zip(xs, ["model", "export", "runtime", "service", "clients"]):
        ax.text(x, 3.75, header, ha="center", va="center", fontsize=9, fontweight="bold", color=PALETTE["edge"])
    y_mid = 2.0
    _box(ax, (xs[0], y_mid), ws[0], 0.8, "trained model\n(PyTorch)", PALETTE["data"], fontsize=8)
    exports = [(2.75, "torch.export\n(.pt2)"), (1.25, "ONNX\n(.onnx)")]
    for y, text in exports:
        _box(ax, (xs[1], y), ws[1], 0.6, text, PALETTE["layer"], fontsize=8)
        _route(ax, [(xs[0] + ws[0] / 2, y_mid), (xs[0] + ws[0] / 2 + 0.12, y_mid), (xs[0] + ws[0] / 2 + 0.12, y),
                    (xs[1] - ws[1] / 2, y)])
    runtimes = [(3.05, "PyTorch", 0), (2.0, "ONNX Runtime", 1), (0.95, "ONNX Runtime\nint8", 1)]
    for y, text, source in runtimes:
        _box(ax, (xs[2], y), ws[2], 0.55, text, PALETTE["system"], fontsize=8)
        _route(ax, [(xs[1] + ws[1] / 2, exports[source][0]), (xs[1] + ws[1] / 2 + 0.12, exports[source][0]),
                    (xs[1] + ws[1] / 2 + 0.12, y), (xs[2] - ws[2] / 2, y)])
        _route(ax, [(xs[2] + ws[2] / 2, y), (xs[2] + ws[2] / 2 + 0.12, y), (xs[2] + ws[2] / 2 + 0.12, y_mid),
                    (xs[3] - ws[3] / 2, y_mid)])
    ax.text(xs[2], 0.6, "quantized with onnxruntime", ha="center", va="top", fontsize=7, color=PALETTE["edge"],
            style="italic")
    _box(ax, (xs[3], y_mid), ws[3], 1.7, "", PALETTE["system"])
    ax.text(xs[3], y_mid + 0.62, "FastAPI service", ha="center", va="center", fontsize=9, fontweight="bold")
    ax.text(xs[3], y_mid - 0.12, "POST /predict\npydantic request schema\n422 on bad input\none model, loaded once",
            ha="center", va="center", fontsize=7.5, linespacing=1.5)
    _box(ax, (xs[4], y_mid), ws[4], 1.7, "", PALETTE["data"])
    ax.text(xs[4], y_mid + 0.62, "clients", ha="center", va="center", fontsize=9, fontweight="bold")
    ax.text(xs[4], y_mid - 0.12, "load test:\nconcurrent\nrequests\np50 / p95 / p99", ha="center", va="center",
            fontsize=7.5, linespacing=1.5)
    _arrow(ax, (xs[4] - ws[4] / 2, y_mid + 0.3), (xs[3] + ws[3] / 2, y_mid + 0.3))
    _arrow(ax, (xs[3] + ws[3] / 2, y_mid - 0.3), (xs[4] - ws[4] / 2, y_mid - 0.3))
    ax.text(5.0, 0.2, "each step is checked: the exported models give the same logits as eager PyTorch, "
            "the service refuses bad input, the load test measures latency", ha="center", va="center",
            fontsize=7.5, color=PALETTE["edge"])
    return fig


# ---------------------------------------------------------------------------------------------------
# 9. Data parallel training


def _draw_parallel(ax: Axes, world: int, sharded: bool) -> None:
    """One panel of ``ddp_vs_fsdp``: ranks as columns, the steps of a training step from top to bottom."""
    width = ax.get_xlim()[1]
    pitch = (width - 0.4) / world
    xs = [0.2 + pitch * (i + 0.5) for i in range(world)]
    w = pitch - 0.16
    small = w < 0.9
    fs = 7 if not small else 6
    y_data, y_rank, y_gather, y_work, y_reduce, y_step = 3.95, 3.3, 2.62, 2.02, 1.4, 0.8

    def bar(y: float, text: str, faint: bool = False) -> None:
        _box(ax, (width / 2, y), width - 0.3, 0.3, text, "white" if faint else PALETTE["system"], fontsize=7,
             dashed=faint)

    for i, x in enumerate(xs):
        _box(ax, (x, y_data), w, 0.28, f"batch slice {i}" if not small else f"slice {i}", PALETTE["data"], fontsize=fs)
        _box(ax, (x, y_rank), w, 0.62, "", PALETTE["band"])
        ax.text(x, y_rank + 0.17, f"rank {i}" if not small else f"{i}", ha="center", va="center", fontsize=fs + 0.5,
                fontweight="bold")
        seg = (w - 0.16) / world
        for j in range(world):  # the model's parameters, split into `world` shards
            held = not sharded or j == i
            ax.add_patch(Rectangle((x - (w - 0.16) / 2 + j * seg, y_rank - 0.2), seg, 0.18, zorder=3,
                                   facecolor=PALETTE["trainable"] if held else "white",
                                   edgecolor=PALETTE["edge"] if held else PALETTE["muted"], lw=0.8,
                                   linestyle="-" if held else ":"))
        work = "forward + backward\n→ all gradients" if not sharded else "forward + backward\n(layer by layer)"
        _box(ax, (x, y_work), w, 0.42, work if not small else "fwd +\nbwd", PALETTE["layer"], fontsize=fs)
        step = "AdamW step\n(identical)" if not sharded else f"AdamW step\non shard {i}"
        _box(ax, (x, y_step), w, 0.42, step if not small else "step", PALETTE["trainable"], fontsize=fs)
        for y_from, h_from, y_to, h_to in ((y_data, 0.28, y_rank, 0.62), (y_rank, 0.62, y_gather, 0.3),
                                           (y_gather, 0.3, y_work, 0.42), (y_work, 0.42, y_reduce, 0.3),
                                           (y_reduce, 0.3, y_step, 0.42)):
            _arrow(ax, (x, y_from - h_from / 2), (x, y_to + h_to / 2))
    if sharded:
        bar(y_gather, "all-gather parameters before each layer's forward and backward")
        bar(y_reduce, "reduce-scatter: each rank gets its shard of the averaged gradients")
        memory = (f"memory per rank: 16 / {world} = {16 / world:.3g} bytes per parameter\n"
                  "(+ one gathered layer at a time)")
    else:
        bar(y_gather, "no parameter traffic: every rank holds the full model", faint=True)
        bar(y_reduce, "all-reduce: average the gradients (every rank gets all of them)")
        memory = "memory per rank: 16 bytes per parameter on every rank\n(fp32 AdamW: 4 weight + 4 gradient + 8 state)"
    ax.text(width / 2, 0.3, memory, ha="center", va="center", fontsize=7.5, color=PALETTE["text"])


def ddp_vs_fsdp(world: int = 2) -> Figure:
    """DDP and FSDP side by side for ``world`` ranks: what each rank holds (the model's parameters
    as a bar of shards), the collectives of one training step, and the memory per rank."""
    if isinstance(world, bool) or not isinstance(world, int) or not 1 <= world <= 8:
        raise ValueError(f"world must be an int in 1..8, got {world!r}")
    fig, axes = _panels(2, 10, 4.8, [f"DDP ({world} ranks): a full copy on every rank",
                                     f"FSDP ({world} ranks): each rank holds 1/{world}"])
    for ax, sharded in zip(axes, (False, True)):
        _draw_parallel(ax, world, sharded)
    return fig


# ---------------------------------------------------------------------------------------------------
# 10. A small network


def mlp_diagram(sizes: Sequence[int] = (64, 128, 10)) -> Figure:
    """A multilayer perceptron as layers of neurons (at most 8 drawn per layer, the true size
    printed), Linear layers between them and ReLU on the hidden ones, with chapter 03's training
    loop beside it."""
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence) or not 2 <= len(sizes) <= 5:
        raise ValueError(f"sizes must be a sequence of 2 to 5 layer sizes, got {sizes!r}")
    sizes = [require_int(f"sizes[{i}]", s, at_least=1) for i, s in enumerate(sizes)]
    fig, (ax,) = _panels(1, 9.6, 4.7, ["A multilayer perceptron and its training loop"])
    left, right = 0.9, 6.0
    xs = [left + (right - left) * i / (len(sizes) - 1) for i in range(len(sizes))]
    y_centre, spacing, radius = 2.15, 0.36, 0.12

    def slots(size: int) -> list[tuple[float, bool]]:  # (y, is the ⋮) of each drawn neuron
        shown = 8 if size > 8 else size
        ys = [y_centre + ((shown - 1) / 2 - s) * spacing for s in range(shown)]
        return [(y, size > 8 and s == 4) for s, y in enumerate(ys)]

    columns = [slots(s) for s in sizes]
    for i in range(len(sizes) - 1):
        for ya, dots_a in columns[i]:
            for yb, dots_b in columns[i + 1]:
                if not (dots_a or dots_b):
                    ax.plot([xs[i], xs[i + 1]], [ya, yb], color=PALETTE["muted"], lw=0.4, alpha=0.6, zorder=1)
    for i, (x, column) in enumerate(zip(xs, columns)):
        last, first = i == len(sizes) - 1, i == 0
        colour = PALETTE["data"] if first or last else PALETTE["layer"]
        for y, dots in column:
            if dots:
                ax.text(x, y, "⋮", ha="center", va="center", fontsize=12)
            else:
                ax.add_patch(Circle((x, y), radius, facecolor=colour, edgecolor=PALETTE["edge"], lw=0.8, zorder=2))
        name = "inputs" if first else "outputs (logits)" if last else "hidden"
        ax.text(x, 0.55, f"{sizes[i]} {name}", ha="center", va="center", fontsize=8)
    chain = []  # (x, text, colour): Linear between layers, ReLU on each hidden layer
    for i in range(len(sizes) - 1):
        chain.append(((xs[i] + xs[i + 1]) / 2, f"Linear\n{sizes[i]} → {sizes[i + 1]}", PALETTE["layer"]))
        if i < len(sizes) - 2:
            chain.append((xs[i + 1], "ReLU", PALETTE["norm"]))
    y_chain = 3.95
    box_w = [0.7 if text != "ReLU" else 0.42 for _, text, _ in chain]
    for (x, text, colour), bw in zip(chain, box_w):
        _box(ax, (x, y_chain), bw, 0.36, text, colour, fontsize=7)
    for (x0, _, _), w0, (x1, _, _), w1 in zip(chain, box_w, chain[1:], box_w[1:]):
        _arrow(ax, (x0 + w0 / 2, y_chain), (x1 - w1 / 2, y_chain))
    parameters = sum(a * b + b for a, b in zip(sizes, sizes[1:]))
    terms = "\n+ ".join(f"{a}·{b} + {b}" for a, b in zip(sizes, sizes[1:]))  # weights + biases, per layer
    loop = ("training loop, for each batch:\n"
            "zero_grad → forward → loss\n→ backward → step\n\n"
            "model.eval() for validation\n(and torch.no_grad())\n\n"
            f"parameters:\n{terms}\n= {parameters:,}")
    ax.text(6.75, y_centre, loop, ha="left", va="center", fontsize=8, linespacing=1.35,
            bbox=dict(facecolor=PALETTE["band"], edgecolor=PALETTE["muted"], boxstyle="round,pad=0.5"))
    return fig


# ---------------------------------------------------------------------------------------------------
# 11. A generative LLM

# (fill, line) per group of query heads that share one key/value head; cycled when there are more
_GROUP_COLOURS = [(PALETTE["layer"], "#1a73e8"), (PALETTE["attention"], "#c5221f"), (PALETTE["norm"], "#188038"),
                  (PALETTE["system"], "#9334e6"), (PALETTE["trainable"], "#b06000"), ("#e4f7fb", "#12808f")]


def _fits(text: str, width: float, fontsize: float) -> bool:
    """Whether ``text`` fits (with a margin) in a box ``width`` inches wide: about 0.6 em per character."""
    return len(text) * 0.6 * fontsize / 72 + 0.08 <= width


def _label_that_fits(candidates: Sequence[str], width: float, fontsize: float) -> str:
    """The first of ``candidates`` that fits in ``width`` inches at ``fontsize``; "" if none does."""
    return next((text for text in candidates if _fits(text, width, fontsize)), "")


def _heads(n: int) -> str:
    return f"{n} head{'s' if n != 1 else ''}"


def _draw_sharing(ax: Axes, num_heads: int, num_kv_heads: int, left: float, right: float, y_q: float, y_kv: float,
                  size: float) -> None:
    """Small squares: ``num_heads`` query heads at ``y_q``, ``num_kv_heads`` kv heads at ``y_kv``,
    a line from each query head to the kv head it reads (its group, as ``repeat_kv`` orders them)."""
    group = num_heads // num_kv_heads
    pitch = (right - left) / num_heads
    q_x = [left + pitch * (i + 0.5) for i in range(num_heads)]
    kv_x = [sum(q_x[j * group:(j + 1) * group]) / group for j in range(num_kv_heads)]
    side = min(size, 0.75 * pitch)
    for i, x in enumerate(q_x):
        fill, line = _GROUP_COLOURS[(i // group) % len(_GROUP_COLOURS)]
        ax.plot([x, kv_x[i // group]], [y_q - side / 2, y_kv + side / 2], color=line, lw=0.8, zorder=1)
        ax.add_patch(Rectangle((x - side / 2, y_q - side / 2), side, side, facecolor=fill, edgecolor=line, lw=0.7,
                               zorder=2))
    for j, x in enumerate(kv_x):
        fill, line = _GROUP_COLOURS[j % len(_GROUP_COLOURS)]
        ax.add_patch(Rectangle((x - side / 2, y_kv - side / 2), side, side, facecolor=line, edgecolor=line, lw=0.7,
                               zorder=2))


def grouped_query_attention(num_heads: int = 9, num_kv_heads: int = 3) -> Figure:
    """Grouped-query attention: ``num_heads`` query heads (a row, coloured by group) sharing
    ``num_kv_heads`` key/value heads (the row below), a line from each query head to the kv head it
    reads: query heads 0..g-1 share kv head 0, the next g kv head 1, and so on (g = num_heads /
    num_kv_heads, the order ``llama.repeat_kv`` produces). The caption computes the KV-cache saving,
    num_heads / num_kv_heads times smaller; a side panel compares multi-head (kv = heads),
    grouped-query and multi-query (kv = 1) attention. The defaults are SmolLM2-135M's 9 and 3."""
    num_heads = require_int("num_heads", num_heads)
    num_kv_heads = require_int("num_kv_heads", num_kv_heads)
    if num_heads > 32:
        raise ValueError(f"num_heads must be <= 32 to be drawn, got {num_heads}")
    if num_heads % num_kv_heads:
        raise ValueError(f"num_kv_heads must divide num_heads, got num_kv_heads={num_kv_heads}, num_heads={num_heads}")
    group = num_heads // num_kv_heads
    share = "share" if num_kv_heads > 1 else "all share"
    fig, (ax, side) = _panels(2, 10, 4.5, [f"Grouped-query attention: {num_heads} query heads {share} "
                                           f"{num_kv_heads} key/value {_heads(num_kv_heads).split()[1]}",
                                           "Three ways to share K and V"], ratios=[6.5, 3.5])
    left, right, y_q, y_kv, bh = 1.3, 6.3, 3.25, 1.75, 0.42
    pitch = (right - left) / num_heads
    w = pitch - min(0.1, pitch / 5)
    q_x = [left + pitch * (i + 0.5) for i in range(num_heads)]
    kv_x = [sum(q_x[j * group:(j + 1) * group]) / group for j in range(num_kv_heads)]
    kv_w = min(group * pitch - min(0.1, pitch / 5), 1.2)
    fs = 8 if w >= 0.35 else 7
    for y, lines in ((y_q, "query\nheads"), (y_kv, "key/value\nheads")):
        ax.text(0.15, y, lines, ha="left", va="center", fontsize=8.5, fontweight="bold",
                color=PALETTE["text"], linespacing=1.3)
    for i, x in enumerate(q_x):
        fill, line = _GROUP_COLOURS[(i // group) % len(_GROUP_COLOURS)]
        ax.plot([x, kv_x[i // group]], [y_q - bh / 2, y_kv + bh / 2], color=line, lw=1.1, zorder=1)
        patch = _box(ax, (x, y_q), w, bh, _label_that_fits([f"Q{i}", f"{i}"], w, fs), fill, fontsize=fs)
        patch.set_gid(f"query head {i}")
    for j, x in enumerate(kv_x):
        fill, line = _GROUP_COLOURS[j % len(_GROUP_COLOURS)]
        patch = _box(ax, (x, y_kv), kv_w, bh, _label_that_fits([f"K{j}, V{j}", f"KV{j}", f"{j}"], kv_w, fs), fill,
                     fontsize=fs)
        patch.set_edgecolor(line)
        patch.set_linewidth(1.6)
        patch.set_gid(f"kv head {j}")
    ax.text((left + right) / 2, y_q + bh / 2 + 0.12, f"q_proj: {_heads(num_heads)}, each with its own queries",
            ha="center", va="bottom", fontsize=7.5, color=PALETTE["edge"])
    ax.text((left + right) / 2, y_kv - bh / 2 - 0.12,
            f"k_proj, v_proj: {_heads(num_kv_heads)};  repeat_kv(k, {group}) repeats each {group} "
            f"time{'s' if group != 1 else ''} in a row", ha="center", va="top", fontsize=7.5, color=PALETTE["edge"])
    if num_kv_heads > 1 and group > 1:
        rule = f"query heads 0–{group - 1} read kv head 0, {group}–{2 * group - 1} kv head 1, …"
    elif group == 1:
        rule = "every query head has its own kv head (multi-head attention)"
    else:
        rule = f"all {num_heads} query heads read the one kv head (multi-query attention)"
    ax.text((left + right) / 2, y_kv - bh / 2 - 0.36, rule, ha="center", va="top", fontsize=7.5,
            color=PALETTE["edge"], style="italic")
    saving = num_heads / num_kv_heads
    ax.text(ax.get_xlim()[1] / 2, 0.42,
            f"KV cache: each layer keeps K and V of every past token for {_heads(num_kv_heads)}, not {num_heads}\n"
            f"→ {num_heads} / {num_kv_heads} = {saving:g}× smaller than with one kv head per query head",
            ha="center", va="center", fontsize=8.5, color=PALETTE["text"], linespacing=1.4,
            bbox=dict(facecolor=PALETTE["band"], edgecolor=PALETTE["muted"], boxstyle="round,pad=0.4"))

    # the side panel: the three ways to share, for the same number of query heads
    middle = num_kv_heads if 1 < num_kv_heads < num_heads else next(
        (d for d in range(num_heads // 2, 1, -1) if num_heads % d == 0), None)
    variants = [("multi-head (MHA)", num_heads), ("grouped-query (GQA)", middle), ("multi-query (MQA)", 1)]
    variants = [(name, kv) for name, kv in variants if kv is not None]
    if num_heads == 1:
        variants = variants[:1]
    width = side.get_xlim()[1]
    row_h = 3.9 / 3
    for r, (name, kv) in enumerate(variants):
        top = 4.0 - r * row_h
        here = kv == num_kv_heads
        if here:  # the variant the left panel draws
            side.add_patch(FancyBboxPatch((0.12, top - row_h + 0.08), width - 0.24, row_h - 0.1,
                                          boxstyle="round,pad=0,rounding_size=0.08", facecolor=PALETTE["band"],
                                          edgecolor=PALETTE["muted"], zorder=0))
        side.text(0.25, top - 0.14, name + ("  (left)" if here else ""), ha="left", va="center", fontsize=8,
                  fontweight="bold", color=PALETTE["text"])
        cache = "KV cache 1× (the baseline)" if kv == num_heads else f"KV cache {num_heads / kv:g}× smaller"
        side.text(0.25, top - 0.34, f"{_heads(kv)} for K and V;  {cache}", ha="left", va="center", fontsize=7,
                  color=PALETTE["edge"])
        _draw_sharing(side, num_heads, kv, 0.3, width - 0.3, top - 0.62, top - 1.02, 0.14)
    return fig


def _angle_clusters(angles: np.ndarray, gap: float) -> list[list[int]]:
    """Indices of ``angles`` (radians) grouped so that each group spans less than ``gap`` around
    the circle; groups start after the widest empty arc, so a group never straddles it."""
    order = np.argsort(np.mod(angles, 2 * np.pi))
    wrapped = np.mod(angles[order], 2 * np.pi)
    gaps = np.diff(np.append(wrapped, wrapped[0] + 2 * np.pi))
    start = (int(np.argmax(gaps)) + 1) % len(order)
    order = np.roll(order, -start)
    unwrapped = np.unwrap(np.mod(angles[order], 2 * np.pi))
    clusters: list[list[int]] = []
    first = 0.0
    for index, angle in zip(order, unwrapped):
        if clusters and angle - first < gap:
            clusters[-1].append(int(index))
        else:
            clusters.append([int(index)])
            first = angle
    return clusters


def _positions_text(members: Sequence[int]) -> str:
    """Positions as a label: "3", "2, 5" or "0–7" (a run of three or more)."""
    members = sorted(members)
    if len(members) > 2 and members[-1] - members[0] == len(members) - 1:
        return f"{members[0]}–{members[-1]}"
    return ", ".join(str(m) for m in members)


def rotary_rotation(head_dim: int = 64, theta: float = 100000.0, positions: int = 8,
                    pairs: Sequence[int] = (0, 8, 31)) -> Figure:
    """Rotary position embeddings, computed with ``llama.rotary_cos_sin`` and ``llama.apply_rotary``.
    One panel per pair i in ``pairs``: the unit circle and the 2-D vector (x[i], x[i + head_dim/2])
    of a fixed vector x (every pair (1, 0)) after rotation at positions 0..positions-1, coloured and
    labelled by position; the title gives the pair's speed θ^(-2i/head_dim) in radians per position
    (the first pairs turn fast, the last barely move). The last panel: the dot product q·k of two
    fixed vectors rotated to positions m (the query) and n ≤ m (the key), against m − n for three
    m — the points of every m fall on one curve, since the product depends only on the distance.
    The defaults are SmolLM2-135M's head_dim and θ."""
    head_dim = require_int("head_dim", head_dim, at_least=2)
    if head_dim % 2:
        raise ValueError(f"head_dim must be even (rotary embeddings rotate pairs), got {head_dim}")
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not math.isfinite(theta) or theta <= 0:
        raise ValueError(f"theta must be a finite number > 0, got {theta!r}")
    positions = require_int("positions", positions)
    if positions > 16:
        raise ValueError(f"positions must be <= 16 to be drawn, got {positions}")
    half = head_dim // 2
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence) or not 1 <= len(pairs) <= 3:
        raise ValueError(f"pairs must be a sequence of 1 to 3 pair indices, got {pairs!r}")
    pairs = [require_int(f"pairs[{k}]", p, at_least=0) for k, p in enumerate(pairs)]
    for k, p in enumerate(pairs):
        if p >= half:
            raise ValueError(f"pairs[{k}] must be < head_dim / 2 = {half} (pair i is (x[i], x[i + {half}])), got {p}")
    if len(set(pairs)) != len(pairs):
        raise ValueError(f"pairs must not repeat a pair, got {pairs}")

    import torch  # here, not at the top: the other diagrams do not need it

    from course_lib.llama import apply_rotary, rotary_cos_sin, rotary_frequencies

    frequencies = rotary_frequencies(head_dim, theta).double().numpy()
    x = torch.cat((torch.ones(half), torch.zeros(half)))  # every pair (x[i], x[i + half]) = (1, 0)
    cos, sin = rotary_cos_sin(torch.arange(positions), head_dim, theta)
    rotated = apply_rotary(x.expand(positions, head_dim), cos, sin).double().numpy()  # (positions, head_dim)

    fig, axes = plt.subplots(1, len(pairs) + 1, figsize=(10, 3.9), layout="constrained",
                             gridspec_kw={"width_ratios": [1] * len(pairs) + [1.45]})
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, positions))
    for ax, i in zip(axes, pairs):
        points = rotated[:, [i, i + half]]
        ax.add_patch(Circle((0, 0), 1, fill=False, edgecolor=PALETTE["muted"], lw=0.8))
        ax.plot([-1.1, 1.1], [0, 0], color=PALETTE["band"], lw=0.8, zorder=0)
        ax.plot([0, 0], [-1.1, 1.1], color=PALETTE["band"], lw=0.8, zorder=0)
        for p in range(positions):
            ax.annotate("", xy=tuple(points[p]), xytext=(0, 0), arrowprops=dict(
                arrowstyle="-|>", color=colours[p], lw=0.9, shrinkA=0, shrinkB=0, mutation_scale=7))
        ax.scatter(points[:, 0], points[:, 1], c=colours, s=14, zorder=3, label="rotated pair")
        for members in _angle_clusters(np.arctan2(points[:, 1], points[:, 0]), gap=0.24):
            angle = np.arctan2(points[members, 1].mean(), points[members, 0].mean())
            ax.text(1.27 * np.cos(angle), 1.27 * np.sin(angle), _positions_text(members), ha="center",
                    va="center", fontsize=7, color=colours[members[0]])
        ax.set_xlim(-1.5, 1.5)
        ax.set_ylim(-1.5, 1.5)
        ax.set_aspect("equal")
        ax.axis("off")
        turned = (positions - 1) * frequencies[i]
        ax.set_title(f"pair {i}: (x[{i}], x[{i + half}])\n{frequencies[i]:.3g} rad per position", fontsize=9)
        degrees = math.degrees(turned)
        degrees_text = f"{degrees:,.0f}°" if degrees >= 100 else f"{degrees:.3g}°"
        ax.text(0, -1.52, f"by position {positions - 1}: {turned:.3g} rad\n({degrees_text})", ha="center", va="top",
                fontsize=7.5, color=PALETTE["edge"])

    ax = axes[-1]
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(head_dim, generator=generator)
    k = q + 0.7 * torch.randn(head_dim, generator=generator)  # a key that resembles the query
    for m, marker, size in ((8, "o", 7), (24, "s", 4.5), (48, ".", 5)):
        n = torch.arange(m + 1)  # the keys a causal query at position m sees
        cos_m, sin_m = rotary_cos_sin(torch.tensor([m]), head_dim, theta)
        cos_n, sin_n = rotary_cos_sin(n, head_dim, theta)
        scores = (apply_rotary(k.expand(m + 1, head_dim), cos_n, sin_n) @ apply_rotary(q[None], cos_m, sin_m)[0])
        ax.plot((m - n).numpy(), scores.double().numpy(), marker, ms=size, mfc="none" if marker != "." else None,
                ls="none", label=f"m = {m}")
    for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):  # only ticks in view
        axis.set_ticks([t for t in axis.get_ticklocs() if lo <= t <= hi])
    ax.set_xlabel("distance m − n (query − key position)", fontsize=8)
    ax.set_ylabel("q·k after rotation", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title("q·k depends only on m − n:\nevery query position m, one curve", fontsize=9)
    ax.legend(fontsize=7, title="query at", title_fontsize=7, loc="best")
    fig.suptitle(f"Rotary embeddings (head_dim {head_dim}, θ = {theta:g}): pair i of a query or key turns by "
                 f"position × θ^(−2i/{head_dim})", fontsize=10, fontweight="bold")
    return fig


def course_map_svg() -> bytes:
    """:func:`course_map` as SVG bytes that depend only on the drawing (no date, fixed ids), so the
    copy in ``docs/course_map.svg`` that the README shows can be checked for being current."""
    import io

    with plt.rc_context({"svg.hashsalt": "llm-course", "svg.fonttype": "path"}):
        fig = course_map()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
        plt.close(fig)
    return buffer.getvalue()
