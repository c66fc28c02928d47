"""A small causal language model (GPT): pre-norm Transformer blocks with causal self-attention from
``course_lib.attention``, learned positions, an output layer that shares the token embedding
matrix (weight tying), sampling with temperature and top-k, and the character-level data it
trains on in chapters 06 and 11.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from course_lib.arguments import require_int
from course_lib.attention import MultiHeadAttention


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int = 128  # the longest context the model sees
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            setattr(self, name, require_int(name, getattr(self, name)))
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")


class Block(nn.Module):
    """x + attention(LayerNorm(x)), then x + MLP(LayerNorm(x)): the pre-norm block of GPT-2."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = MultiHeadAttention(config.n_embd, config.n_head, dropout=config.dropout)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(config.n_embd, 4 * config.n_embd), nn.GELU(),
            nn.Linear(4 * config.n_embd, config.n_embd), nn.Dropout(config.dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal=True)[0]
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Token ids (B, T) -> next-token logits (B, T, vocab_size): position t sees tokens 0..t only."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying: one matrix reads and writes tokens
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.ndim != 2 or idx.is_floating_point():
            raise ValueError(f"idx must be (B, T) integer token ids, got {idx.dtype} {tuple(idx.shape)}")
        if idx.shape[1] > self.config.block_size:
            raise ValueError(f"idx has {idx.shape[1]} tokens, more than block_size={self.config.block_size}")
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(positions))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Extend ``idx`` (B, T) by sampling ``max_new_tokens`` tokens one at a time, each from
        softmax(logits / temperature) restricted to the ``top_k`` most likely; ``temperature=0``
        takes the most likely token (greedy). The context is cropped to the last ``block_size``."""
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and not 1 <= top_k <= self.config.vocab_size:
            raise ValueError(f"top_k must be in [1, {self.config.vocab_size}] or None, got {top_k}")
        was_training = self.training
        self.eval()
        for _ in range(max_new_tokens):
            logits = self(idx[:, -self.config.block_size:])[:, -1, :]
            if temperature == 0:
                next_token = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                next_token = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            idx = torch.cat([idx, next_token], dim=1)
        self.train(was_training)
        return idx


def causal_lm_loss(logits: torch.Tensor, idx: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Cross-entropy of predicting token t+1 from position t: logits[:, :-1] against idx[:, 1:]."""
    if logits.shape[:2] != idx.shape:
        raise ValueError(f"logits (B, T, V) must match idx (B, T), got {tuple(logits.shape)} and {tuple(idx.shape)}")
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), idx[:, 1:].reshape(-1), ignore_index=ignore_index
    )


def character_windows(texts: Sequence[str], block: int) -> tuple[TensorDataset, list[str]]:
    """The texts joined by newlines, as non-overlapping windows of ``block`` character ids, and the
    sorted character vocabulary (the same on every rank, so every rank builds the same model)."""
    corpus = "\n".join(texts)
    chars = sorted(set(corpus))
    index = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([index[c] for c in corpus], dtype=torch.long)
    windows = len(ids) // block
    if windows < 1:
        raise ValueError(f"the texts hold {len(ids)} characters, fewer than one window of block={block}")
    return TensorDataset(ids[: windows * block].view(windows, block)), chars
