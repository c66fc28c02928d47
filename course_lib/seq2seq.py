"""A small encoder–decoder Transformer ("Attention Is All You Need", 2017) for character sequences:
teacher forcing, greedy and beam-search decoding, exact-match accuracy.

The encoder reads the whole source with bidirectional self-attention; the decoder writes the target
one character at a time with causal self-attention, and in every block **cross-attends** to the
encoder's output — the same structure as Whisper, with characters instead of audio frames.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.arguments import require_int
from course_lib.attention import MultiHeadAttention, split_heads, merge_heads

PAD, BOS, EOS = 0, 1, 2


class CharVocab:
    """Characters to ids and back; ids 0, 1, 2 are padding, begin and end."""

    def __init__(self, texts: list[str]) -> None:
        self.chars = sorted({c for text in texts for c in text})
        self.index = {c: i + 3 for i, c in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars) + 3

    def encode(self, text: str) -> list[int]:
        unknown = sorted({c for c in text if c not in self.index})
        if unknown:
            raise ValueError(f"characters {unknown} are not in the vocabulary")
        return [self.index[c] for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i - 3] for i in ids if i >= 3)


def pad(sequences: list[list[int]]) -> torch.Tensor:
    """Right-padded (B, longest) tensor of ids."""
    longest = max(len(s) for s in sequences)
    return torch.tensor([s + [PAD] * (longest - len(s)) for s in sequences], dtype=torch.long)


class CrossAttention(nn.Module):
    """Queries from the decoder's positions, keys and values from the encoder's output (``memory``);
    padding in the memory is masked out."""

    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor, need_weights: bool = False):
        q = split_heads(self.q(x), self.heads)
        k, v = (split_heads(t, self.heads) for t in self.kv(memory).chunk(2, dim=-1))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(~memory_mask[:, None, None, :], float("-inf"))
        weights = scores.softmax(-1)
        return self.out(merge_heads(weights @ v)), (weights if need_weights else None)


class EncoderBlock(nn.Module):
    def __init__(self, d_model: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(d_model), MultiHeadAttention(d_model, heads, dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, ffn), nn.GELU(), nn.Linear(ffn, d_model), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), attention_mask=mask)[0]
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    def __init__(self, d_model: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.self_attn = nn.LayerNorm(d_model), MultiHeadAttention(d_model, heads, dropout)
        self.norm2, self.cross_attn = nn.LayerNorm(d_model), CrossAttention(d_model, heads)
        self.norm3 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, ffn), nn.GELU(), nn.Linear(ffn, d_model), nn.Dropout(dropout))

    def forward(self, x, memory, memory_mask, need_weights: bool = False):
        x = x + self.self_attn(self.norm1(x), causal=True)[0]
        attended, weights = self.cross_attn(self.norm2(x), memory, memory_mask, need_weights)
        x = x + attended
        return x + self.mlp(self.norm3(x)), weights


class Seq2Seq(nn.Module):
    """Source ids (B, S) and target-so-far ids (B, T) -> next-character logits (B, T, vocab)."""

    def __init__(self, vocab_size: int, d_model: int = 128, heads: int = 4, layers: int = 2, ffn: int = 256,
                 max_len: int = 96, dropout: float = 0.0) -> None:
        super().__init__()
        self.max_len = require_int("max_len", max_len)
        self.embed = nn.Embedding(require_int("vocab_size", vocab_size), d_model, padding_idx=PAD)
        self.positions = nn.Embedding(max_len, d_model)
        self.encoder = nn.ModuleList(EncoderBlock(d_model, heads, ffn, dropout) for _ in range(require_int("layers", layers)))
        self.decoder = nn.ModuleList(DecoderBlock(d_model, heads, ffn, dropout) for _ in range(layers))
        self.norm_memory, self.norm_out = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.shape[1] > self.max_len:
            raise ValueError(f"sequences longer than max_len={self.max_len} (got {ids.shape[1]})")
        return self.embed(ids) + self.positions(torch.arange(ids.shape[1], device=ids.device))

    def encode(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = source != PAD
        x = self._embed(source)
        for block in self.encoder:
            x = block(x, mask)
        return self.norm_memory(x), mask

    def decode(self, target: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor, need_weights: bool = False):
        x, maps = self._embed(target), []
        for block in self.decoder:
            x, weights = block(x, memory, mask, need_weights)
            maps.append(weights)
        logits = self.head(self.norm_out(x))
        return (logits, maps) if need_weights else logits

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.decode(target, *self.encode(source))


def teacher_forcing_batch(sources: list[list[int]], targets: list[list[int]]):
    """(source, decoder input, labels): the decoder reads [BOS] + target and must predict target + [EOS]
    at every position at once — the true previous characters are given, not the model's own guesses."""
    decoder_in = pad([[BOS] + t for t in targets])
    labels = pad([t + [EOS] for t in targets])
    return pad(sources), decoder_in, labels


def loss_on(model: Seq2Seq, source, decoder_in, labels) -> torch.Tensor:
    logits = model(source, decoder_in)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=PAD)


@torch.no_grad()
def greedy_decode(model: Seq2Seq, source: list[int], max_len: int = 64) -> list[int]:
    """The most probable next character, step by step, until EOS (the whole prefix is re-read each
    step: these sequences are short)."""
    model.eval()
    memory, mask = model.encode(torch.tensor([source]))
    out = [BOS]
    for _ in range(max_len):
        token = int(model.decode(torch.tensor([out]), memory, mask)[0, -1].argmax())
        if token == EOS:
            break
        out.append(token)
    return out[1:]


@torch.no_grad()
def beam_search(model: Seq2Seq, source: list[int], beam: int = 4, max_len: int = 64) -> list[int]:
    """Keep the ``beam`` most probable prefixes (by summed log-probability) at every step, extend each
    by every character, keep the best ``beam`` again; finished hypotheses (EOS) wait aside. Returns the
    best finished one. ``beam=1`` is greedy decoding."""
    beam = require_int("beam", beam)
    model.eval()
    memory, mask = model.encode(torch.tensor([source]))
    alive: list[tuple[float, list[int]]] = [(0.0, [BOS])]
    finished: list[tuple[float, list[int]]] = []
    for _ in range(max_len):
        prefixes = torch.tensor([p for _, p in alive])
        logp = model.decode(prefixes, memory.expand(len(alive), -1, -1), mask.expand(len(alive), -1))[:, -1]
        logp = logp.log_softmax(-1)
        candidates = [(score + float(logp[i, t]), prefix + [t]) for i, (score, prefix) in enumerate(alive)
                      for t in logp[i].topk(beam).indices.tolist()]
        candidates.sort(key=lambda c: c[0], reverse=True)
        alive = []
        for score, prefix in candidates:
            if prefix[-1] == EOS:
                finished.append((score, prefix[1:-1]))
            else:
                alive.append((score, prefix))
            if len(alive) == beam:
                break
        if not alive or (finished and max(f[0] for f in finished) >= alive[0][0]):
            break  # no live prefix can still beat the best finished one: log-probabilities only fall
    if not finished:
        finished = [(score, prefix[1:]) for score, prefix in alive]
    return max(finished, key=lambda f: f[0])[1]


@dataclass
class Seq2SeqHistory:
    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    seconds: float = 0.0


def train(model: Seq2Seq, pairs: list[tuple[list[int], list[int]]], steps: int, batch_size: int = 64, lr: float = 1e-3,
          seed: int = 0, log_every: int = 50) -> Seq2SeqHistory:
    """AdamW with a linear warm-up over the first 5% of steps and cosine decay, on random batches."""
    steps, batch_size = require_int("steps", steps), require_int("batch_size", batch_size)
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup))))
    history, start, window = Seq2SeqHistory(), time.perf_counter(), []
    model.train()
    for step in range(1, steps + 1):
        chosen = torch.randint(len(pairs), (batch_size,), generator=g).tolist()
        batch = teacher_forcing_batch([pairs[i][0] for i in chosen], [pairs[i][1] for i in chosen])
        loss = loss_on(model, *batch)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        window.append(loss.item())
        if step % log_every == 0 or step == steps:
            history.step.append(step)
            history.loss.append(sum(window) / len(window))
            window = []
    history.seconds = time.perf_counter() - start
    return history


def exact_match(model: Seq2Seq, pairs: list[tuple[list[int], list[int]]], beam: int = 1) -> float:
    """The share of sources whose decoded output equals the target exactly (greedy when ``beam`` is 1)."""
    hits = sum((greedy_decode(model, s) if beam == 1 else beam_search(model, s, beam)) == t for s, t in pairs)
    return hits / len(pairs)
