"""Pruning written out: magnitude masks (per layer and global), sparsity reports, and structured
pruning of BERT's feed-forward neurons and attention heads that really makes the matrices smaller.

Unstructured pruning zeroes individual weights: the matrices keep their shape, so dense kernels do
the same work (no speed-up without sparse kernels). Structured pruning removes whole rows and
columns — a neuron of the feed-forward layer, a head of an attention layer — and the smaller
matrices are faster. The masks follow ``torch.nn.utils.prune``'s rule (``round(amount · n)``
weights of smallest magnitude; ties broken by ``torch.topk``), so the two can be compared exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn


def _check_amount(amount: float) -> None:
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0 <= amount <= 1:
        raise ValueError(f"amount must be a fraction in [0, 1], got {amount!r}")


def magnitude_mask(weight: torch.Tensor, amount: float) -> torch.Tensor:
    """A 0/1 mask like ``weight`` that zeroes the ``round(amount · n)`` entries of smallest |w|."""
    _check_amount(amount)
    mask = torch.ones_like(weight)
    n_prune = round(amount * weight.numel())
    if n_prune:
        smallest = torch.topk(weight.detach().abs().flatten(), n_prune, largest=False).indices
        mask.view(-1)[smallest] = 0
    return mask


def global_magnitude_masks(weights: Mapping[str, torch.Tensor], amount: float) -> dict[str, torch.Tensor]:
    """Masks for several tensors at once, with one threshold for all: the ``round(amount · N)``
    smallest |w| over all N entries go, so layers with many small weights lose more of them."""
    _check_amount(amount)
    if not weights:
        raise ValueError("weights must name at least one tensor")
    flat = torch.cat([w.detach().abs().flatten() for w in weights.values()])
    masks = torch.ones_like(flat)
    n_prune = round(amount * flat.numel())
    if n_prune:
        masks[torch.topk(flat, n_prune, largest=False).indices] = 0
    out, start = {}, 0
    for name, w in weights.items():
        out[name] = masks[start:start + w.numel()].view_as(w).to(w.dtype)
        start += w.numel()
    return out


def linear_weights(model: nn.Module, skip: Iterable[str] = ("classifier",)) -> dict[str, nn.Linear]:
    """The model's ``nn.Linear`` layers by name, leaving out those under ``skip`` (the task head)."""
    skip = tuple(skip)
    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and not any(name == s or name.startswith(s + ".") for s in skip)}


@torch.no_grad()
def prune_model(model: nn.Module, amount: float, scope: str = "layer", skip: Iterable[str] = ("classifier",)) -> nn.Module:
    """Zero the smallest-magnitude weights of every linear layer in place (``scope="layer"``: the
    same fraction in each; ``"global"``: one threshold for all). Biases are kept."""
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    layers = linear_weights(model, skip)
    if scope == "layer":
        masks = {name: magnitude_mask(m.weight, amount) for name, m in layers.items()}
    else:
        masks = global_magnitude_masks({name: m.weight for name, m in layers.items()}, amount)
    for name, m in layers.items():
        m.weight.mul_(masks[name])
    return model


def sparsity_report(model: nn.Module, skip: Iterable[str] = ()) -> list[dict[str, float | int | str]]:
    """Per linear layer: its name, size and the fraction of weights that are exactly zero; the
    last row (``"all linear layers"``) totals them."""
    rows, zeros_total, size_total = [], 0, 0
    for name, m in linear_weights(model, skip).items():
        zeros, size = int((m.weight == 0).sum()), m.weight.numel()
        rows.append({"layer": name, "weights": size, "zeros": zeros, "sparsity": zeros / size})
        zeros_total, size_total = zeros_total + zeros, size_total + size
    if not rows:
        raise ValueError("the model has no linear layers to report on")
    rows.append({"layer": "all linear layers", "weights": size_total, "zeros": zeros_total,
                 "sparsity": zeros_total / size_total})
    return rows


# ---------------------------------------------------------------------------------------------
# Structured pruning of BERT (transformers' BertModel layout)


def _keep_rows(layer: nn.Linear, index: torch.Tensor) -> nn.Linear:
    smaller = nn.Linear(layer.in_features, len(index), bias=layer.bias is not None,
                        device=layer.weight.device, dtype=layer.weight.dtype)
    with torch.no_grad():
        smaller.weight.copy_(layer.weight[index])
        if layer.bias is not None:
            smaller.bias.copy_(layer.bias[index])
    return smaller


def _keep_columns(layer: nn.Linear, index: torch.Tensor) -> nn.Linear:
    smaller = nn.Linear(len(index), layer.out_features, bias=layer.bias is not None,
                        device=layer.weight.device, dtype=layer.weight.dtype)
    with torch.no_grad():
        smaller.weight.copy_(layer.weight[:, index])
        if layer.bias is not None:
            smaller.bias.copy_(layer.bias)
    return smaller


def _encoder_layers(model: nn.Module) -> nn.ModuleList:
    encoder = getattr(getattr(model, "bert", model), "encoder", None)
    if encoder is None or not hasattr(encoder, "layer"):
        raise TypeError(f"expected a BERT model, transformers' or course_lib.bert's (with .encoder.layer), got {type(model).__name__}")
    return encoder.layer


def neuron_scores(model: nn.Module) -> list[torch.Tensor]:
    """Per layer, each feed-forward neuron's importance: the norm of its input weights times the
    norm of its output weights (a neuron with either near zero contributes little)."""
    return [layer.intermediate.dense.weight.detach().norm(dim=1) * layer.output.dense.weight.detach().norm(dim=0)
            for layer in _encoder_layers(model)]


@torch.no_grad()
def prune_ffn_neurons(model: nn.Module, amount: float, scores: list[torch.Tensor] | None = None) -> nn.Module:
    """Remove the ``round(amount · d_ff)`` least important neurons of every feed-forward layer in
    place: rows of ``intermediate.dense`` and the matching columns of ``output.dense`` go, so both
    matrices shrink."""
    _check_amount(amount)
    layers = _encoder_layers(model)
    scores = scores if scores is not None else neuron_scores(model)
    if len(scores) != len(layers):
        raise ValueError(f"scores must have one tensor per layer ({len(layers)}), got {len(scores)}")
    for layer, score in zip(layers, scores):
        d_ff = layer.intermediate.dense.out_features
        if score.shape != (d_ff,):
            raise ValueError(f"each score tensor must have shape ({d_ff},), got {tuple(score.shape)}")
        keep = max(1, d_ff - round(amount * d_ff))
        index = score.topk(keep).indices.sort().values
        layer.intermediate.dense = _keep_rows(layer.intermediate.dense, index)
        layer.output.dense = _keep_columns(layer.output.dense, index)
    return model


def head_scores(model: nn.Module) -> list[torch.Tensor]:
    """Per layer, each attention head's importance: the norm of its value rows times the norm of
    its columns in the output projection."""
    scores = []
    for layer in _encoder_layers(model):
        attention = layer.attention.self
        size = attention.attention_head_size
        value = attention.value.weight.detach().view(-1, size, attention.value.in_features)
        output = layer.attention.output.dense.weight.detach().view(-1, attention.num_attention_heads, size)
        scores.append(value.flatten(1).norm(dim=1) * output.transpose(0, 1).flatten(1).norm(dim=1))
    return scores


@torch.no_grad()
def prune_heads(model: nn.Module, heads: Mapping[int, Iterable[int]]) -> nn.Module:
    """Remove the given heads (``{layer index: [head indices]}``) in place: their rows of the
    query, key and value projections and their columns of the attention output projection. At
    least one head must stay in every layer."""
    layers = _encoder_layers(model)
    for index, chosen in heads.items():
        if not 0 <= index < len(layers):
            raise ValueError(f"layer index {index} is out of range for {len(layers)} layers")
        attention = layers[index].attention.self
        n, size = attention.num_attention_heads, attention.attention_head_size
        chosen = sorted(set(chosen))
        if any(not 0 <= h < n for h in chosen):
            raise ValueError(f"layer {index} has heads 0..{n - 1}, got {chosen}")
        kept = [h for h in range(n) if h not in chosen]
        if not kept:
            raise ValueError(f"cannot remove all {n} heads of layer {index}")
        rows = torch.cat([torch.arange(h * size, (h + 1) * size) for h in kept]).to(attention.query.weight.device)
        for name in ("query", "key", "value"):
            setattr(attention, name, _keep_rows(getattr(attention, name), rows))
        output = layers[index].attention.output
        output.dense = _keep_columns(output.dense, rows)
        attention.num_attention_heads = len(kept)
        attention.all_head_size = len(kept) * size
    return model


def lowest_heads(scores: list[torch.Tensor], amount: float) -> dict[int, list[int]]:
    """The ``round(amount · all heads)`` heads of lowest score over the whole model, as
    ``{layer: [heads]}``, never all heads of one layer."""
    _check_amount(amount)
    flat = torch.cat(scores)
    per_layer = len(scores[0])
    chosen: dict[int, list[int]] = {}
    for position in flat.argsort().tolist():
        if sum(len(v) for v in chosen.values()) >= round(amount * len(flat)):
            break
        layer, head = divmod(position, per_layer)
        if len(chosen.get(layer, [])) < per_layer - 1:
            chosen.setdefault(layer, []).append(head)
    return {layer: sorted(h) for layer, h in sorted(chosen.items())}
