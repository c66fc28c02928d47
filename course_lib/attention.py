"""Attention from scratch: scaled dot-product attention, masks, multi-head attention and
positional encodings.

Conventions (the same as ``F.scaled_dot_product_attention`` and Hugging Face):
- a boolean mask is True where attention is **allowed**; a float mask is **added** to the scores
  (0 to keep, -inf to block);
- a padding mask ``(B, T)`` is True for real tokens and False for padding;
- a query whose every key is masked gets **zeros** as output and all-zero weights, not NaN (what
  SDPA returns; ``nn.MultiheadAttention`` returns NaN there), so padding cannot poison a batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.arguments import require_int


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim < 2:
            raise ValueError(f"{name} must have shape (..., T, d), got {tuple(t.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same last dimension, got q {tuple(q.shape)} and k {tuple(k.shape)}")
    if k.shape[:-1] != v.shape[:-1]:
        raise ValueError(f"k and v must agree on all but the last dimension, got k {tuple(k.shape)} and v {tuple(v.shape)}")
    if q.shape[:-2] != k.shape[:-2]:
        raise ValueError(f"q and k must have the same batch dimensions, got q {tuple(q.shape)} and k {tuple(k.shape)}")


def _as_additive(mask: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """A bool or float mask as an additive one, after checking it broadcasts to the scores."""
    try:
        target = torch.broadcast_shapes(mask.shape, scores.shape)
    except RuntimeError:
        target = None
    if target != scores.shape:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to the attention scores' shape "
            f"{tuple(scores.shape)} (..., Tq, Tk)"
        )
    if mask.dtype == torch.bool:
        return torch.zeros((), dtype=scores.dtype, device=scores.device).masked_fill(~mask, float("-inf"))
    if not mask.is_floating_point():
        raise TypeError(f"mask must be bool (True = attend) or floating point (added), got {mask.dtype}")
    return mask.to(scores.dtype)


def causal_mask(size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(T, T) bool: query i may attend to keys 0..i (True on and below the diagonal)."""
    size = require_int("size", size)
    return torch.ones(size, size, dtype=torch.bool, device=device).tril()


def padding_mask(lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """(B, T) bool from sequence lengths: True for the first ``lengths[b]`` positions."""
    if not isinstance(lengths, torch.Tensor) or lengths.ndim != 1 or lengths.is_floating_point():
        raise ValueError(f"lengths must be a 1-D integer tensor, got {getattr(lengths, 'shape', type(lengths).__name__)}")
    if len(lengths) and lengths.min() < 0:
        raise ValueError("lengths must be >= 0")
    longest = int(lengths.max()) if len(lengths) else 0
    max_len = longest if max_len is None else max_len
    if max_len < longest:
        raise ValueError(f"max_len={max_len} is shorter than the longest sequence ({longest})")
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def attention_mask_from_padding(mask: torch.Tensor) -> torch.Tensor:
    """A (B, Tk) padding mask as (B, 1, 1, Tk), which broadcasts over heads and queries."""
    if mask.ndim != 2 or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a (B, T) bool tensor, got {tuple(mask.shape)} {mask.dtype}")
    return mask[:, None, None, :]


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q kᵀ · scale + mask) v, written out; returns ``(output, weights)``.

    q: (..., Tq, d), k: (..., Tk, d), v: (..., Tk, dv). ``scale`` defaults to 1/√d, which keeps
    the scores' variance near 1 so the softmax does not saturate as d grows. ``is_causal`` adds the
    causal mask (aligned to the top-left, as SDPA). Dropout, when ``dropout_p > 0``, drops weights
    after the softmax (pass 0 in evaluation).
    """
    _check_qkv(q, k, v)
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale
    if is_causal:
        allowed = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        scores = scores + _as_additive(allowed, scores)
    if mask is not None:
        scores = scores + _as_additive(mask, scores)
    # A fully masked row is all -inf; softmax would give NaN. Give it zero weights instead.
    blocked = torch.isneginf(scores).all(dim=-1, keepdim=True)
    weights = torch.softmax(scores.masked_fill(blocked, 0.0), dim=-1).masked_fill(blocked, 0.0)
    if dropout_p > 0:
        weights = F.dropout(weights, p=dropout_p)
    return weights @ v, weights


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, T, d_model) -> (B, n_heads, T, d_model / n_heads): each head gets its own slice of
    the features."""
    if x.ndim != 3:
        raise ValueError(f"x must have shape (B, T, d_model), got {tuple(x.shape)}")
    n_heads = require_int("n_heads", n_heads)
    if x.shape[-1] % n_heads:
        raise ValueError(f"n_heads must divide d_model={x.shape[-1]}, got {n_heads}")
    b, t, d = x.shape
    return x.reshape(b, t, n_heads, d // n_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, n_heads, T, d_head) -> (B, T, n_heads * d_head), the inverse of :func:`split_heads`."""
    if x.ndim != 4:
        raise ValueError(f"x must have shape (B, n_heads, T, d_head), got {tuple(x.shape)}")
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention: one fused projection makes q, k and v for every head, each head
    attends in its own d_model/n_heads subspace, and an output projection mixes the heads.

    ``forward(x, attention_mask=None, causal=False, need_weights=False)``: x (B, T, d_model);
    ``attention_mask`` (B, T) bool, True for real tokens. Returns ``(output, weights)``, weights
    (B, n_heads, T, T) or None. Without ``need_weights`` it calls PyTorch's fused
    ``F.scaled_dot_product_attention`` (the fast path), else the explicit path above; both give
    the same output.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        d_model, n_heads = require_int("d_model", d_model), require_int("n_heads", n_heads)
        if d_model % n_heads:
            raise ValueError(f"n_heads must divide d_model={d_model}, got {n_heads}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.d_model, self.n_heads, self.dropout = d_model, n_heads, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out = nn.Linear(d_model, d_model, bias=bias)

    def forward(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        causal: bool = False,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if x.ndim != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must have shape (B, T, {self.d_model}), got {tuple(x.shape)}")
        mask = None
        if attention_mask is not None:
            if attention_mask.shape != x.shape[:2] or attention_mask.dtype != torch.bool:
                raise ValueError(
                    f"attention_mask must be a bool tensor of shape {tuple(x.shape[:2])}, "
                    f"got {attention_mask.dtype} {tuple(attention_mask.shape)}"
                )
            mask = attention_mask_from_padding(attention_mask)
        q, k, v = (split_heads(part, self.n_heads) for part in self.qkv(x).chunk(3, dim=-1))
        dropout = self.dropout if self.training else 0.0
        if need_weights:
            context, weights = scaled_dot_product_attention(q, k, v, mask, dropout, is_causal=causal)
        else:
            if causal and mask is not None:  # SDPA takes one or the other: combine them
                mask, causal = mask & causal_mask(x.shape[1], x.device), False
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal)
            weights = None
        return self.out(merge_heads(context)), weights


def sinusoidal_positions(length: int, d_model: int) -> torch.Tensor:
    """(length, d_model) encodings of "Attention Is All You Need": sin on even features, cos on
    odd ones, wavelengths from 2π to 10000·2π, so every position gets a distinct pattern and
    relative offsets are linear functions of it."""
    length, d_model = require_int("length", length), require_int("d_model", d_model)
    if d_model % 2:
        raise ValueError(f"d_model must be even for sin/cos pairs, got {d_model}")
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    encoding = torch.zeros(length, d_model)
    encoding[:, 0::2] = torch.sin(position * frequency)
    encoding[:, 1::2] = torch.cos(position * frequency)
    return encoding


class SinusoidalPositionalEncoding(nn.Module):
    """Adds fixed sinusoidal position encodings to (B, T, d_model) inputs; nothing to learn, and
    defined for any position up to ``max_len``."""

    def __init__(self, d_model: int, max_len: int = 512) -> None:
        super().__init__()
        self.register_buffer("encoding", sinusoidal_positions(max_len, d_model), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or x.shape[-1] != self.encoding.shape[1] or x.shape[1] > self.encoding.shape[0]:
            raise ValueError(
                f"x must have shape (B, T <= {self.encoding.shape[0]}, {self.encoding.shape[1]}), got {tuple(x.shape)}"
            )
        return x + self.encoding[: x.shape[1]].to(x.dtype)


class LearnedPositionalEmbedding(nn.Module):
    """Adds a learned vector per position (as BERT and GPT-2 do) to (B, T, d_model) inputs."""

    def __init__(self, max_len: int, d_model: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(max_len, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        max_len, d_model = self.embedding.weight.shape
        if x.ndim != 3 or x.shape[-1] != d_model or x.shape[1] > max_len:
            raise ValueError(f"x must have shape (B, T <= {max_len}, {d_model}), got {tuple(x.shape)}")
        return x + self.embedding(torch.arange(x.shape[1], device=x.device))
