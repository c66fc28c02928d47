"""Interactive explorers for JupyterLab. Each degrades to a static figure when the notebook runs
headless (``course_lib.runtime.headless()``: papermill, nbval, the grader), so executed copies
hold a picture instead of a widget nobody can move.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import matplotlib.pyplot as plt
import torch

from course_lib.plots import plot_attention
from course_lib.runtime import headless

# attend(sentence) -> (tokens, one (n_heads, T, T) weight tensor per layer)
AttendFn = Callable[[str], tuple[Sequence[str], Sequence[torch.Tensor]]]


def _weights(attend: AttendFn, sentence: str) -> tuple[list[str], list[torch.Tensor]]:
    tokens, layers = attend(sentence)
    tokens, layers = list(tokens), [w.detach().float().cpu() for w in layers]
    if not layers or any(w.ndim != 3 or w.shape[1:] != (len(tokens), len(tokens)) for w in layers):
        raise ValueError(
            f"attend must return tokens and a list of (n_heads, {len(tokens)}, {len(tokens)}) tensors, "
            f"got shapes {[tuple(w.shape) for w in layers]}"
        )
    return tokens, layers


def plot_all_heads(
    tokens: Sequence[str], layers: Sequence[torch.Tensor], max_layers: int = 2, max_heads: int = 4
) -> None:
    """The first layers (rows) and heads (columns) of one sentence, as the static fallback; at most
    ``max_layers`` × ``max_heads`` panels, so a 12-head model does not make a giant figure."""
    n_layers, n_heads = min(len(layers), max_layers), min(layers[0].shape[0], max_heads)
    fig, axes = plt.subplots(n_layers, n_heads, figsize=(3.2 * n_heads, 3.2 * n_layers), squeeze=False)
    for layer, row in enumerate(axes):
        for head, ax in enumerate(row):
            plot_attention(layers[layer][head], tokens, ax=ax, title=f"layer {layer}, head {head}")
    fig.tight_layout()
    plt.show()


def attention_explorer(attend: AttendFn, sentences: Sequence[str], interactive: bool | None = None):
    """Pick a sentence, a layer and a head; see where each token attends.

    Returns the ipywidgets box to display (the last expression of a cell), or ``None`` after
    drawing the first heads of the first layers for the first sentence when headless (or
    ``interactive=False``).
    """
    if not sentences:
        raise ValueError("sentences must not be empty")
    tokens, layers = _weights(attend, sentences[0])
    if interactive is None:
        interactive = not headless()
    if not interactive:
        plot_all_heads(tokens, layers)
        return None

    import ipywidgets as widgets

    sentence = widgets.Dropdown(options=list(sentences), description="sentence")
    layer = widgets.IntSlider(value=0, min=0, max=len(layers) - 1, description="layer")
    head = widgets.IntSlider(value=0, min=0, max=layers[0].shape[0] - 1, description="head")

    def draw(sentence: str, layer: int, head: int) -> None:
        tokens, weights = _weights(attend, sentence)
        plot_attention(weights[layer][head], tokens, title=f"layer {layer}, head {head}")
        plt.show()

    plot = widgets.interactive_output(draw, {"sentence": sentence, "layer": layer, "head": head})
    return widgets.VBox([widgets.HBox([sentence, layer, head]), plot])


def _draw_quantization(weight: torch.Tensor, bits: int, per_channel: bool, symmetric: bool) -> None:
    """Left: a slice of the weights before and after the round trip; right: SQNR against bits."""
    from course_lib.quantize import fake_quantize, quantization_error

    axis = 0 if per_channel else None
    row = weight[0, :64].float()
    rounded = fake_quantize(weight, bits, symmetric, axis)[0, :64]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.2))
    left.plot(row.numpy(), "o", ms=3, label="fp32")
    left.step(range(len(rounded)), rounded.numpy(), where="mid", lw=1, label=f"int{bits} round trip")
    left.set_xlabel("weight index (first row, first 64)")
    left.set_title(f"{bits} bits, {'per channel' if per_channel else 'per tensor'}, "
                   f"{'symmetric' if symmetric else 'asymmetric'}")
    left.legend(fontsize=8)
    all_bits = list(range(2, 9))
    for channel, style in ((False, "o-"), (True, "s-")):
        sqnr = [quantization_error(weight, b, symmetric, 0 if channel else None)["sqnr_db"] for b in all_bits]
        right.plot(all_bits, sqnr, style, label="per channel" if channel else "per tensor")
    right.axvline(bits, color="grey", ls=":")
    right.set_xlabel("bits")
    right.set_ylabel("signal-to-noise (dB), higher is better")
    right.legend(fontsize=8)
    fig.tight_layout()
    plt.show()


def quantization_explorer(weight: torch.Tensor, bits: int = 4, interactive: bool | None = None):
    """Choose bits, per-tensor or per-channel, symmetric or not; see the rounding of a real weight
    matrix and the error it costs. Opens at ``bits`` (4: at 8 the steps are too fine to see), per
    channel, symmetric; that static figure alone when headless."""
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        raise ValueError(f"weight must be a 2-D tensor (out, in), got {getattr(weight, 'shape', type(weight).__name__)}")
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an int from 2 to 8, got {bits!r}")
    weight = weight.detach().float().cpu()
    if interactive is None:
        interactive = not headless()
    if not interactive:
        _draw_quantization(weight, bits, True, True)
        return None

    import ipywidgets as widgets

    slider = widgets.IntSlider(value=bits, min=2, max=8, description="bits")
    per_channel = widgets.Checkbox(value=True, description="per channel")
    symmetric = widgets.Checkbox(value=True, description="symmetric")
    plot = widgets.interactive_output(
        lambda bits, per_channel, symmetric: _draw_quantization(weight, bits, per_channel, symmetric),
        {"bits": slider, "per_channel": per_channel, "symmetric": symmetric})
    return widgets.VBox([widgets.HBox([slider, per_channel, symmetric]), plot])
