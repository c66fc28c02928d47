"""A Llama-style decoder written from scratch: RMSNorm, rotary position embeddings, grouped-query
attention, the SwiGLU MLP, pre-norm blocks and a tied output layer — the architecture of Llama,
Mistral, Qwen and SmolLM2. Parameter names follow ``transformers``' ``LlamaForCausalLM`` (without
its ``model.`` prefix), so its checkpoints load by name and every piece can be compared with it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.arguments import require_int
from course_lib.kv_cache import KVCache


@dataclass
class LlamaConfig:
    """The sizes of a Llama-style decoder; the defaults are SmolLM2-135M's."""

    vocab_size: int = 49152
    hidden_size: int = 576
    intermediate_size: int = 1536
    num_layers: int = 30
    num_heads: int = 9
    num_kv_heads: int = 3
    head_dim: int = 64
    rope_theta: float = 100000.0
    rms_norm_eps: float = 1e-5
    max_positions: int = 8192
    tie_word_embeddings: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim", "max_positions"):
            setattr(self, name, require_int(name, getattr(self, name)))
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_kv_heads ({self.num_kv_heads}) must divide num_heads ({self.num_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even (rotary embeddings rotate pairs), got {self.head_dim}")

    @classmethod
    def from_hf(cls, config) -> LlamaConfig:
        """The sizes read from a ``transformers`` ``LlamaConfig`` or its ``config.json`` as a dict."""
        get = (lambda key: config.get(key)) if isinstance(config, dict) else (lambda key: getattr(config, key, None))
        if get("model_type") not in (None, "llama"):
            raise ValueError(f"config must describe a llama model, got model_type={get('model_type')!r}")
        missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                               "num_attention_heads", "rms_norm_eps", "max_position_embeddings") if get(k) is None]
        if missing:
            raise ValueError(f"config lacks {', '.join(missing)}: it is not a Llama configuration")
        if get("hidden_act") not in (None, "silu"):
            raise ValueError(f"only the SiLU-gated MLP is implemented, got hidden_act={get('hidden_act')!r}")
        rope = get("rope_parameters") or {}
        for scaling in (rope, get("rope_scaling") or {}):  # rope_scaling: configs written before transformers 5
            if scaling.get("rope_type", scaling.get("type", "default")) != "default":
                raise ValueError("only the original rotary embeddings are implemented, got rope type "
                                 f"{scaling.get('rope_type', scaling.get('type'))!r}")
        heads = get("num_attention_heads")
        return cls(
            vocab_size=get("vocab_size"), hidden_size=get("hidden_size"),
            intermediate_size=get("intermediate_size"), num_layers=get("num_hidden_layers"),
            num_heads=heads, num_kv_heads=get("num_key_value_heads") or heads,
            head_dim=get("head_dim") or get("hidden_size") // heads,
            rope_theta=float(rope.get("rope_theta", get("rope_theta") or 10000.0)),
            rms_norm_eps=float(get("rms_norm_eps")), max_positions=get("max_position_embeddings"),
            tie_word_embeddings=bool(get("tie_word_embeddings")),
        )


class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) · weight: LayerNorm without the mean subtraction and the bias —
    cheaper, and just as stable for these models. Computed in float32 whatever the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(require_int("dim", dim)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


def rotary_frequencies(head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """The head_dim / 2 angular speeds θ^(-2i/head_dim): pair i turns by this many radians per position,
    fast for the first pairs, slow for the last."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


def rotary_cos_sin(positions: torch.Tensor, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of position × frequency, shape (*positions.shape, head_dim), each frequency
    written twice (``[f, f]``) for the half-rotation layout of :func:`apply_rotary`."""
    angles = positions.float()[..., None] * rotary_frequencies(head_dim, theta).to(positions.device)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension: feature i is paired with
    feature i + head_dim / 2."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate every pair (x[i], x[i + d/2]) of ``x`` (..., T, d) by its position's angle: the dot
    product of a rotated query and key then depends on their distance only. ``cos`` and ``sin``
    (T, d) or (B, T, d) broadcast over the heads."""
    if cos.ndim == 3:  # (B, T, d) -> (B, 1, T, d) for (B, heads, T, d)
        cos, sin = cos[:, None], sin[:, None]
    return x * cos + rotate_half(x) * sin


class RotaryEmbedding(nn.Module):
    """cos and sin for every position up to ``max_positions``, computed once (a buffer that is not
    saved with the weights) and looked up by position."""

    def __init__(self, head_dim: int, max_positions: int, theta: float = 10000.0) -> None:
        super().__init__()
        cos, sin = rotary_cos_sin(torch.arange(require_int("max_positions", max_positions)), head_dim, theta)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (cos, sin) rows of ``positions``, each (*positions.shape, head_dim)."""
        if positions.numel() and int(positions.max()) >= self.cos.shape[0]:
            raise ValueError(f"positions go up to {int(positions.max())}, beyond max_positions={self.cos.shape[0]}")
        return self.cos[positions], self.sin[positions]


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, kv heads, T, d) -> (B, kv heads · n_rep, T, d), each kv head repeated ``n_rep`` times in a
    row, so query heads 0..n_rep-1 share kv head 0 (grouped-query attention)."""
    n_rep = require_int("n_rep", n_rep)
    if n_rep == 1:
        return x
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, t, d).reshape(b, h * n_rep, t, d)


def _causal_mask(queries: int, keys: int, device: torch.device) -> torch.Tensor:
    """True where query i (the last ``queries`` of ``keys`` positions) may see key j: j <= i + offset."""
    offset = keys - queries
    return torch.ones(queries, keys, dtype=torch.bool, device=device).tril(diagonal=offset)


class GroupedQueryAttention(nn.Module):
    """Causal self-attention with ``num_heads`` query heads sharing ``num_kv_heads`` key/value heads;
    rotary embeddings on queries and keys; an optional KV cache."""

    def __init__(self, config: LlamaConfig, layer: int = 0) -> None:
        super().__init__()
        self.layer = layer
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        self.q_proj = nn.Linear(config.hidden_size, config.num_heads * config.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, config.num_kv_heads * config.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, config.num_kv_heads * config.head_dim, bias=False)
        self.o_proj = nn.Linear(config.num_heads * config.head_dim, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None,
                key_padding: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, hidden) at the positions whose ``cos``/``sin`` are given; ``key_padding`` (B, keys)
        is True for real tokens, over the cached positions and these T."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        rep = self.num_heads // self.num_kv_heads
        k, v = repeat_kv(k, rep), repeat_kv(v, rep)
        if key_padding is None and t == 1:  # one new token may see every key: no mask needed
            out = F.scaled_dot_product_attention(q, k, v)
        elif key_padding is None and k.shape[-2] == t:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            allowed = _causal_mask(t, k.shape[-2], x.device)
            if key_padding is not None:
                allowed = allowed & key_padding[:, None, None, :]
                # a padding query sees nothing; let it see everything instead (its output is never
                # used), because some GPU kernels return NaN for a fully masked row
                allowed = allowed | ~allowed.any(-1, keepdim=True)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))


class SwiGLU(nn.Module):
    """down(silu(gate(x)) · up(x)): a gated MLP; the gate decides, feature by feature, how much of
    ``up(x)`` passes."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderBlock(nn.Module):
    """x + attention(RMSNorm(x)), then x + SwiGLU(RMSNorm(x)): the pre-norm block of Llama."""

    def __init__(self, config: LlamaConfig, layer: int = 0) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = GroupedQueryAttention(config, layer)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None,
                key_padding: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, key_padding)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):
    """Token ids (B, T) -> next-token logits (B, T, vocab). With a :class:`KVCache`, the ids are the
    tokens after the ``cache.length`` already cached, and their positions continue from there."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderBlock(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = RotaryEmbedding(config.head_dim, config.max_positions, config.rope_theta)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight  # one matrix reads and writes tokens

    def new_cache(self, batch: int = 1, max_len: int | None = None) -> KVCache:
        """An empty cache, in the model's dtype and on its device, for ``batch`` sequences of up to
        ``max_len`` positions (default: the whole context)."""
        c = self.config
        max_len = c.max_positions if max_len is None else require_int("max_len", max_len)
        if max_len > c.max_positions:
            raise ValueError(f"max_len must be <= max_positions={c.max_positions}, got {max_len}")
        return KVCache(c.num_layers, batch, c.num_kv_heads, max_len, c.head_dim,
                       dtype=self.embed_tokens.weight.dtype, device=self.embed_tokens.weight.device)

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None,
                attention_mask: torch.Tensor | None = None, last_only: bool = False) -> torch.Tensor:
        """``attention_mask`` (B, cached + T), 1 for real tokens and 0 for padding, covers the cached
        positions too. Put padding on the left (a sequence's real tokens then come last, and new
        tokens follow them); right padding is right only in one forward without a cache (training).
        ``last_only`` computes the logits of the last position only (B, 1, vocab): all that
        generation needs, and the output layer is a large share of a small model's work."""
        hidden = self.hidden_states(input_ids, cache, attention_mask)
        return self.lm_head(hidden[:, -1:] if last_only else hidden)

    def hidden_states(self, input_ids: torch.Tensor, cache: KVCache | None = None,
                      attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The last block's output after the final RMSNorm (B, T, hidden), before the output layer:
        a loss on a few positions (fine-tuning on the answer only) applies ``lm_head`` to those alone."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.is_floating_point():
            got = f"{input_ids.dtype} {tuple(input_ids.shape)}" if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids must be a (B, T) tensor of integer token ids, got {got}")
        b, t = input_ids.shape
        start = cache.length if cache is not None else 0
        if start + t > self.config.max_positions:
            raise ValueError(f"{start + t} positions exceed the context of max_positions={self.config.max_positions}")
        if attention_mask is not None and tuple(attention_mask.shape) != (b, start + t):
            raise ValueError(f"attention_mask must have shape (batch, cached + new) = {(b, start + t)}, "
                             f"got {tuple(attention_mask.shape)}")
        cos, sin = self.rotary.cos[start:start + t], self.rotary.sin[start:start + t]
        cos, sin = cos.to(self.embed_tokens.weight.dtype), sin.to(self.embed_tokens.weight.dtype)
        key_padding = None if attention_mask is None else attention_mask.bool()
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x, cos, sin, cache, key_padding)
        if cache is not None:
            cache.advance(t)
        return self.norm(x)

    @classmethod
    def from_state_dict(cls, config: LlamaConfig, state: dict[str, torch.Tensor]) -> Llama:
        """A model with ``state``'s weights, named as ``transformers``' ``LlamaForCausalLM`` names
        them (a ``model.`` prefix is dropped). A checkpoint whose names or shapes differ from this
        architecture's is refused with the names that differ."""
        state = {name.removeprefix("model."): tensor for name, tensor in state.items()}
        if config.tie_word_embeddings:
            state.setdefault("lm_head.weight", state.get("embed_tokens.weight"))
        with torch.device("meta"):
            model = cls(config)
        expected = {name: p.shape for name, p in model.state_dict().items()}
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong = sorted(n for n in set(expected) & set(state) if state[n] is not None and state[n].shape != expected[n])
        if missing or unexpected or wrong:
            def show(names: list[str]) -> str:
                return ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "") or "none"
            shapes = "; ".join(f"{n}: {tuple(state[n].shape)} vs {tuple(expected[n])}" for n in wrong[:6])
            raise ValueError(f"the checkpoint does not fit this architecture: missing {show(missing)}; "
                             f"unexpected {show(unexpected)}; wrong shapes {shapes or 'none'}")
        model = cls(config).to(state["embed_tokens.weight"].dtype)  # the checkpoint's dtype, e.g. bf16
        model.load_state_dict(state, strict=True)
        return model.eval()

    @classmethod
    def from_pretrained(cls, folder: str | Path, dtype: torch.dtype = torch.float32) -> Llama:
        """Load a ``from_pretrained`` folder (``config.json`` + ``model.safetensors``) by parameter name."""
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
            raise FileNotFoundError(f"folder must hold config.json and model.safetensors, got {folder}")
        config = LlamaConfig.from_hf(json.loads((folder / "config.json").read_text()))
        state = {name: t.to(dtype) for name, t in load_file(folder / "model.safetensors").items()}
        return cls.from_state_dict(config, state)

