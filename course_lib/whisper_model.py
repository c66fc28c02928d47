"""Whisper written out: an audio encoder, a text decoder with cross-attention, and greedy decoding
with a KV cache — small enough to read in one sitting, and equal to ``transformers``' model.

The encoder turns 30 s of log-mel frames (80 × 3000) into 1,500 vectors: two 1-D convolutions (the
second with stride 2) and GELU, fixed sinusoidal positions, pre-norm Transformer blocks. The decoder
is a GPT-like stack over text tokens with one addition in every block: **cross-attention**, whose
queries come from the text and whose keys and values come from the encoder's output — the only place
where the text looks at the audio. Module names follow ``transformers``, so its state dict loads
as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class WhisperDims:
    n_mels: int = 80
    d_model: int = 384
    heads: int = 6
    encoder_layers: int = 4
    decoder_layers: int = 4
    ffn: int = 1536
    vocab: int = 51864
    audio_positions: int = 1500
    text_positions: int = 448

    @classmethod
    def from_config(cls, config) -> "WhisperDims":
        return cls(config.num_mel_bins, config.d_model, config.encoder_attention_heads, config.encoder_layers,
                   config.decoder_layers, config.encoder_ffn_dim, config.vocab_size, config.max_source_positions,
                   config.max_target_positions)


class Attention(nn.Module):
    """Multi-head attention with Whisper's projections (the key has no bias). ``source`` is what the
    keys and values are made from: the input itself (self-attention) or the audio (cross-attention)."""

    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, d_model // heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.head_dim).transpose(1, 2)  # (B, H, T, Dh)

    def keys_values(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split(self.k_proj(source)), self.split(self.v_proj(source))

    def forward(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, causal: bool = False,
                need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        q = self.split(self.q_proj(x)) * self.head_dim ** -0.5
        scores = q @ keys.transpose(-1, -2)  # (B, H, Tq, Tk)
        if causal and x.shape[1] > 1:  # new queries see the cached past and the new tokens up to themselves
            past = keys.shape[2] - x.shape[1]
            allowed = torch.ones(x.shape[1], keys.shape[2], dtype=torch.bool, device=x.device).tril(past)
            scores = scores.masked_fill(~allowed, float("-inf"))
        weights = scores.softmax(dim=-1)
        out = (weights @ values).transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
        return self.out_proj(out), (weights if need_weights else None)


class EncoderLayer(nn.Module):
    def __init__(self, dims: WhisperDims) -> None:
        super().__init__()
        self.self_attn_layer_norm = nn.LayerNorm(dims.d_model)
        self.self_attn = Attention(dims.d_model, dims.heads)
        self.final_layer_norm = nn.LayerNorm(dims.d_model)
        self.fc1, self.fc2 = nn.Linear(dims.d_model, dims.ffn), nn.Linear(dims.ffn, dims.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.self_attn_layer_norm(x)
        x = x + self.self_attn(h, *self.self_attn.keys_values(h))[0]
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))


class Encoder(nn.Module):
    def __init__(self, dims: WhisperDims) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(dims.n_mels, dims.d_model, 3, padding=1)
        self.conv2 = nn.Conv1d(dims.d_model, dims.d_model, 3, stride=2, padding=1)
        self.embed_positions = nn.Embedding(dims.audio_positions, dims.d_model)
        self.layers = nn.ModuleList(EncoderLayer(dims) for _ in range(dims.encoder_layers))
        self.layer_norm = nn.LayerNorm(dims.d_model)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, 3000) -> (B, 1500, d_model)."""
        x = F.gelu(self.conv2(F.gelu(self.conv1(mel)))).transpose(1, 2)
        x = x + self.embed_positions.weight[: x.shape[1]]
        for layer in self.layers:
            x = layer(x)
        return self.layer_norm(x)


class DecoderLayer(nn.Module):
    def __init__(self, dims: WhisperDims) -> None:
        super().__init__()
        self.self_attn_layer_norm = nn.LayerNorm(dims.d_model)
        self.self_attn = Attention(dims.d_model, dims.heads)
        self.encoder_attn_layer_norm = nn.LayerNorm(dims.d_model)
        self.encoder_attn = Attention(dims.d_model, dims.heads)
        self.final_layer_norm = nn.LayerNorm(dims.d_model)
        self.fc1, self.fc2 = nn.Linear(dims.d_model, dims.ffn), nn.Linear(dims.ffn, dims.d_model)

    def forward(self, x: torch.Tensor, cache: "LayerCache", need_weights: bool = False):
        h = self.self_attn_layer_norm(x)
        k, v = self.self_attn.keys_values(h)
        cache.keys = k if cache.keys is None else torch.cat([cache.keys, k], dim=2)
        cache.values = v if cache.values is None else torch.cat([cache.values, v], dim=2)
        x = x + self.self_attn(h, cache.keys, cache.values, causal=True)[0]
        attended, weights = self.encoder_attn(self.encoder_attn_layer_norm(x), cache.audio_keys, cache.audio_values,
                                              need_weights=need_weights)
        x = x + attended
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x)))), weights


@dataclass
class LayerCache:
    """One decoder block's memory: the self-attention's keys and values of every token so far (grown
    one token per step) and the cross-attention's keys and values of the audio (computed once)."""

    audio_keys: torch.Tensor
    audio_values: torch.Tensor
    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None


@dataclass
class DecoderCache:
    layers: list[LayerCache]
    length: int = 0
    cross_weights: list[torch.Tensor] = field(default_factory=list)  # per step: (layers, B, H, new, 1500)


class Decoder(nn.Module):
    def __init__(self, dims: WhisperDims) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(dims.vocab, dims.d_model)
        self.embed_positions = nn.Embedding(dims.text_positions, dims.d_model)
        self.layers = nn.ModuleList(DecoderLayer(dims) for _ in range(dims.decoder_layers))
        self.layer_norm = nn.LayerNorm(dims.d_model)

    def start(self, audio: torch.Tensor) -> DecoderCache:
        """A cache for decoding against ``audio`` (the encoder's output): each block's cross-attention
        keys and values, computed once for the whole transcript."""
        return DecoderCache([LayerCache(*layer.encoder_attn.keys_values(audio)) for layer in self.layers])

    def forward(self, tokens: torch.Tensor, cache: DecoderCache, need_weights: bool = False) -> torch.Tensor:
        """Logits (B, T, vocab) for the new ``tokens`` (B, T), appending their keys and values to ``cache``."""
        positions = torch.arange(cache.length, cache.length + tokens.shape[1], device=tokens.device)
        x = self.embed_tokens(tokens) + self.embed_positions(positions)
        step_weights = []
        for layer, layer_cache in zip(self.layers, cache.layers):
            x, weights = layer(x, layer_cache, need_weights)
            step_weights.append(weights)
        cache.length += tokens.shape[1]
        if need_weights:
            cache.cross_weights.append(torch.stack(step_weights))
        return self.layer_norm(x) @ self.embed_tokens.weight.T  # the output layer shares the embedding


class Whisper(nn.Module):
    def __init__(self, dims: WhisperDims) -> None:
        super().__init__()
        self.dims = dims
        self.encoder, self.decoder = Encoder(dims), Decoder(dims)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "Whisper":
        """Load a ``transformers`` Whisper folder (config.json + model.safetensors) into this code."""
        from safetensors.torch import load_file
        from transformers import WhisperConfig

        folder = Path(folder)
        model = cls(WhisperDims.from_config(WhisperConfig.from_pretrained(folder)))
        state = {name.removeprefix("model."): tensor for name, tensor in load_file(folder / "model.safetensors").items()
                 if name != "proj_out.weight"}
        model.load_state_dict(state, strict=True)
        return model.eval()


@torch.no_grad()
def greedy(model: Whisper, mel: torch.Tensor, prompt: list[int], end: int, max_new_tokens: int = 100,
           suppress: list[int] = (), begin_suppress: list[int] = (), need_weights: bool = False):
    """Greedy decoding of one clip (mel (n_mels, 3000) or (1, n_mels, 3000)): encode once, feed the
    prompt, then one token per step through the KV cache, never choosing a ``suppress`` token (nor a
    ``begin_suppress`` one first), until ``end``. Returns the new tokens (without ``end``) and the
    cache (its ``cross_weights`` hold the cross-attention of each step when ``need_weights``)."""
    mel = mel[None] if mel.ndim == 2 else mel
    if mel.ndim != 3 or mel.shape[0] != 1:
        raise ValueError(f"mel must be one clip, (n_mels, frames) or (1, n_mels, frames), got {tuple(mel.shape)}")
    if len(prompt) + max_new_tokens > model.dims.text_positions:
        raise ValueError(f"the prompt ({len(prompt)} tokens) plus max_new_tokens ({max_new_tokens}) must fit in "
                         f"{model.dims.text_positions} text positions")
    cache = model.decoder.start(model.encoder(mel))
    blocked = torch.zeros(model.dims.vocab, dtype=torch.bool)
    blocked[list(suppress)] = True
    logits = model.decoder(torch.tensor([prompt], device=mel.device), cache, need_weights)[0, -1]
    tokens: list[int] = []
    for step in range(max_new_tokens):
        logits = logits.masked_fill(blocked.to(logits.device), float("-inf"))
        if step == 0 and begin_suppress:
            logits[list(begin_suppress)] = float("-inf")
        token = int(logits.argmax())
        if token == end:
            break
        tokens.append(token)
        logits = model.decoder(torch.tensor([[token]], device=mel.device), cache, need_weights)[0, -1]
    return tokens, cache


def cross_attention_step(x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, q_proj: nn.Linear,
                         out_proj: nn.Linear, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What a decoder block's cross-attention does for its newest token, written flat: ``x`` (B, 1, d),
    the audio's cached ``keys``/``values`` (B, heads, T, d/heads) -> (output (B, 1, d), weights
    (B, heads, 1, T)). No mask: text may look at every audio frame. Equal to ``Attention.forward``."""
    b, t, d = x.shape
    q = q_proj(x).view(b, t, heads, d // heads).transpose(1, 2) * (d // heads) ** -0.5
    weights = (q @ keys.transpose(-1, -2)).softmax(dim=-1)
    return out_proj((weights @ values).transpose(1, 2).reshape(b, t, d)), weights
