"""A key-value cache for decoding, preallocated: each layer's keys and values for every position so
far, so a new token attends to the past without recomputing it.

Without a cache, producing token n means running the whole prefix of n tokens through every layer
again: quadratic work over a generation. With it, each step runs one token and reads the stored
keys and values. The price is memory, computed exactly by :func:`cache_bytes`.
"""

from __future__ import annotations

import math

import torch

from course_lib.arguments import require_int


def cache_bytes(n_layers: int, n_kv_heads: int, head_dim: int, tokens: int, batch: int = 1,
                dtype: torch.dtype = torch.float32) -> int:
    """Bytes a cache of ``tokens`` positions holds: keys and values (2) × layers × kv heads × head
    size × positions × batch × bytes per number. Grouped-query attention shrinks it by the ratio of
    query heads to kv heads."""
    sizes = [require_int(name, value) for name, value in
             (("n_layers", n_layers), ("n_kv_heads", n_kv_heads), ("head_dim", head_dim), ("tokens", tokens), ("batch", batch))]
    return 2 * math.prod(sizes) * torch.empty((), dtype=dtype).element_size()


class KVCache:
    """Keys and values of ``n_layers`` layers in tensors of shape (batch, kv heads, max_len, head
    dim), allocated once. ``length`` counts the positions written; :meth:`update` writes a layer's
    new positions and returns that layer's keys and values up to them; :meth:`advance` moves
    ``length`` on after all layers have been written."""

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        shape = (require_int("batch", batch), require_int("n_kv_heads", n_kv_heads),
                 require_int("max_len", max_len), require_int("head_dim", head_dim))
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(require_int("n_layers", n_layers))]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.length = 0
        self.max_len = max_len

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k`` and ``v`` (batch, kv heads, new, head dim) at positions ``length ..
        length + new`` of ``layer``; return the layer's keys and values for positions 0 .. length + new."""
        start, new = self.length, k.shape[-2]
        if start + new > self.max_len:
            raise ValueError(f"the cache holds max_len={self.max_len} positions; writing {new} more after "
                             f"{start} would overflow it (make a larger cache)")
        if k.shape != v.shape or k.shape[:2] != self.keys[layer].shape[:2] or k.shape[-1] != self.keys[layer].shape[-1]:
            raise ValueError(f"k and v must have shape (batch, kv heads, new, head dim) = "
                             f"{tuple(self.keys[layer].shape[:2])} + (new, {self.keys[layer].shape[-1]}), "
                             f"got {tuple(k.shape)} and {tuple(v.shape)}")
        self.keys[layer][:, :, start:start + new] = k
        self.values[layer][:, :, start:start + new] = v
        return self.keys[layer][:, :, :start + new], self.values[layer][:, :, :start + new]

    def advance(self, new: int) -> None:
        """Count ``new`` positions as written (call once per forward pass, after every layer)."""
        self.length += new

    def reset(self) -> None:
        """Forget every position (the memory stays allocated for the next prompt)."""
        self.length = 0

    @property
    def nbytes(self) -> int:
        """Bytes allocated for keys and values (all ``max_len`` positions, used or not)."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)
