"""A Vision Transformer from scratch (Dosovitskiy et al., "An Image is Worth 16x16 Words", 2021).

The image is cut into non-overlapping P×P patches, each flattened and projected to a vector: the
patches are the tokens. A learned *class token* is put in front, learned position embeddings are
added (attention itself knows no order), pre-norm Transformer blocks built on chapter 04's
``MultiHeadAttention`` mix the tokens, and a linear head reads the class token's final vector.
Nothing in it knows that neighbouring pixels belong together: it must learn that from data, which
a CNN has built in.
"""

from __future__ import annotations

import torch
from torch import nn

from course_lib.arguments import require_int
from course_lib.attention import MultiHeadAttention


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, C·P·P): patches in reading order (left to right along the top row,
    then the next row), each flattened channel, then row, then column within the patch — the order
    of a convolution kernel flattened with ``weight.reshape(out_channels, -1)``."""
    p = require_int("patch_size", patch_size)
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        got = f"shape {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B, C, H, W) tensor, got {got}")
    b, c, h, w = images.shape
    if h % p or w % p:
        raise ValueError(f"patch_size={p} must divide the image size {h}×{w}")
    grid = images.reshape(b, c, h // p, p, w // p, p)  # (B, C, rows, P, cols, P)
    return grid.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), c * p * p)


class PatchEmbedding(nn.Module):
    """Patches -> vectors: :func:`patchify` then one ``nn.Linear``. The same numbers as an
    ``nn.Conv2d`` with kernel size = stride = P and weight ``linear.weight.view(d, C, P, P)`` (each
    output position of that convolution sees exactly one patch); :meth:`as_conv` builds it."""

    def __init__(self, in_channels: int, patch_size: int, dim: int) -> None:
        super().__init__()
        self.in_channels, self.patch_size = require_int("in_channels", in_channels), require_int("patch_size", patch_size)
        self.proj = nn.Linear(self.in_channels * self.patch_size ** 2, require_int("dim", dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim == 4 and images.shape[1] != self.in_channels:
            raise ValueError(f"images must have {self.in_channels} channels, got shape {tuple(images.shape)}")
        return self.proj(patchify(images, self.patch_size))

    def as_conv(self) -> nn.Conv2d:
        """The equivalent strided convolution (its output, flattened to (B, N, d), equals forward's)."""
        d, p = self.proj.out_features, self.patch_size
        conv = nn.Conv2d(self.in_channels, d, p, stride=p)
        with torch.no_grad():
            conv.weight.copy_(self.proj.weight.view(d, self.in_channels, p, p))
            conv.bias.copy_(self.proj.bias)
        return conv


class EncoderBlock(nn.Module):
    """x + attention(LayerNorm(x)), then x + MLP(LayerNorm(x)): the pre-norm block of ViT, with
    bidirectional attention (every patch sees every patch)."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, dim),
                                 nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, weights = self.attn(self.norm1(x), need_weights=need_weights)
        x = x + attended
        return x + self.mlp(self.norm2(x)), weights


class ViT(nn.Module):
    """Images (B, C, H, W) -> class logits. ``forward(x, return_attention=True)`` also returns each
    block's attention weights (B, heads, 1 + N, 1 + N); row 0 is the class token's."""

    def __init__(self, image_size: int = 28, patch_size: int = 4, in_channels: int = 1, num_classes: int = 10,
                 dim: int = 64, depth: int = 4, heads: int = 4, mlp_dim: int = 128, dropout: float = 0.0) -> None:
        super().__init__()
        image_size, patch_size = require_int("image_size", image_size), require_int("patch_size", patch_size)
        if image_size % patch_size:
            raise ValueError(f"patch_size={patch_size} must divide image_size={image_size}")
        dim, heads = require_int("dim", dim), require_int("heads", heads)
        if dim % heads:
            raise ValueError(f"heads must divide dim={dim}, got heads={heads}")
        self.image_size, self.patch_size = image_size, patch_size
        self.num_patches = (image_size // patch_size) ** 2
        self.patch_embed = PatchEmbedding(in_channels, patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.num_patches, dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(EncoderBlock(dim, heads, mlp_dim, dropout) for _ in range(require_int("depth", depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, require_int("num_classes", num_classes))

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The input sequence: [class token, patch 1, …, patch N] plus position embeddings, (B, 1 + N, dim)."""
        if images.ndim != 4 or tuple(images.shape[2:]) != (self.image_size, self.image_size):
            raise ValueError(f"images must be (B, C, {self.image_size}, {self.image_size}), got {tuple(images.shape)}")
        patches = self.patch_embed(images)
        cls = self.cls_token.expand(images.shape[0], -1, -1)
        return torch.cat([cls, patches], dim=1) + self.pos_embed

    def forward(self, images: torch.Tensor, return_attention: bool = False):
        x, maps = self.tokens(images), []
        for block in self.blocks:
            x, weights = block(x, need_weights=return_attention)
            maps.append(weights)
        logits = self.head(self.norm(x)[:, 0])
        return (logits, maps) if return_attention else logits


def cls_attention(maps: list[torch.Tensor], grid: int) -> torch.Tensor:
    """The class token's attention to each patch, averaged over heads, per block: (blocks, B, grid, grid).

    Raw attention of one layer is only a hint of what the model uses (mixing across layers is not
    followed here)."""
    if not maps or any(m is None for m in maps):
        raise ValueError("maps must be the attention weights of every block (forward with return_attention=True)")
    rows = torch.stack([m[:, :, 0, 1:].mean(dim=1) for m in maps])  # (blocks, B, N)
    if rows.shape[-1] != grid * grid:
        raise ValueError(f"{rows.shape[-1]} patches do not form a {grid}×{grid} grid")
    return rows.reshape(rows.shape[0], rows.shape[1], grid, grid)
