"""A BERT encoder from scratch, built on ``course_lib.attention``, that loads real pretrained weights.

Module and parameter names follow Hugging Face's ``modeling_bert`` (``embeddings.word_embeddings``,
``encoder.layer.N.attention.self.query``, ...), so loading a checkpoint is a dictionary walk: the
safetensors file's keys are this model's keys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.attention import merge_heads, scaled_dot_product_attention, split_heads


@dataclass
class BertConfig:
    """The sizes of a BERT model; the same names as a checkpoint's ``config.json``."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads ({self.num_attention_heads})"
            )
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {sorted(_ACTIVATIONS)}, got {self.hidden_act!r}")

    @classmethod
    def from_json(cls, path: str | Path) -> BertConfig:
        """Read a ``config.json`` (or a model folder holding one); other keys in it are ignored."""
        path = Path(path)
        path = path / "config.json" if path.is_dir() else path
        values = json.loads(path.read_text(encoding="utf-8"))
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


_ACTIVATIONS = {"gelu": F.gelu, "gelu_new": lambda x: F.gelu(x, approximate="tanh"), "relu": F.relu}


class BertEmbeddings(nn.Module):
    """Token + position + segment (token type) embeddings, summed, then LayerNorm and dropout."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions) + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    """Multi-head self-attention with separate query/key/value projections (as the checkpoints
    store them); the heads are split, attended and merged with ``course_lib.attention``."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        # the attribute names of transformers' BertSelfAttention, so tools written for it (such as
        # course_lib.prune.prune_heads, which shrinks these three) work on this model too
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = config.hidden_size // config.num_attention_heads
        self.all_head_size = config.hidden_size
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_p = config.attention_probs_dropout_prob

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, need_weights: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        q, k, v = (split_heads(proj(x), self.num_attention_heads) for proj in (self.query, self.key, self.value))
        dropout = self.dropout_p if self.training else 0.0
        if need_weights:
            context, weights = scaled_dot_product_attention(q, k, v, mask, dropout)
        else:  # the same computation through PyTorch's fused kernel
            context, weights = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout), None
        return merge_heads(context), weights


class BertSelfOutput(nn.Module):
    """Project the attention output, dropout, add the residual, LayerNorm (post-norm, as BERT)."""

    def __init__(self, config: BertConfig, in_features: int | None = None) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features or config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, x, mask, need_weights):  # noqa: ANN001, ANN201 (internal)
        attended, weights = self.self(x, mask, need_weights)
        return self.output(attended, x), weights


class BertIntermediate(nn.Module):
    """The feed-forward layer's widening half: hidden → intermediate, then the activation."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = _ACTIVATIONS[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(x))


class BertOutput(BertSelfOutput):
    """The feed-forward layer's narrowing half: intermediate → hidden, dropout, residual, LayerNorm."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config, in_features=config.intermediate_size)


class BertLayer(nn.Module):
    """One encoder layer: attention, then the feed-forward network, each with residual + LayerNorm."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, x, mask, need_weights):  # noqa: ANN001, ANN201 (internal)
        attended, weights = self.attention(x, mask, need_weights)
        return self.output(self.intermediate(attended), attended), weights


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))


class BertPooler(nn.Module):
    """tanh(dense(hidden state of [CLS])): the sentence vector BERT's next-sentence task trained."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


@dataclass
class BertModelOutput:
    last_hidden_state: torch.Tensor  # (B, T, hidden)
    pooler_output: torch.Tensor  # (B, hidden)
    attentions: list[torch.Tensor] | None = None  # per layer (B, heads, T, T), when asked for


class BertModel(nn.Module):
    """The BERT encoder: embeddings, ``num_hidden_layers`` encoder layers, pooler."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> BertModelOutput:
        """``input_ids`` (B, T); ``attention_mask`` (B, T), 1 for real tokens and 0 for padding;
        ``token_type_ids`` (B, T), the segment of each token (0 when omitted)."""
        if input_ids.ndim != 2 or input_ids.is_floating_point():
            raise ValueError(f"input_ids must be (B, T) integer ids, got {input_ids.dtype} {tuple(input_ids.shape)}")
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(
                f"input_ids has {input_ids.shape[1]} tokens; this model takes at most "
                f"max_position_embeddings={self.config.max_position_embeddings}"
            )
        for name, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if t is not None and t.shape != input_ids.shape:
                raise ValueError(f"{name} must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(t.shape)}")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        x = self.embeddings(input_ids, token_type_ids)
        attentions = []
        for layer in self.encoder.layer:
            x, weights = layer(x, mask, output_attentions)
            attentions.append(weights)
        return BertModelOutput(x, self.pooler(x), attentions if output_attentions else None)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The average of each sequence's real-token vectors (B, T, H) → (B, H): sentence-transformers'
    sentence embedding, padding left out."""
    if hidden.ndim != 3 or attention_mask.shape != hidden.shape[:2]:
        raise ValueError(
            f"hidden must be (B, T, H) and attention_mask (B, T), got {tuple(hidden.shape)} and {tuple(attention_mask.shape)}"
        )
    weights = attention_mask.to(hidden.dtype)[..., None]
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)


# Keys a checkpoint may hold that are not parameters of the model: recomputable buffers.
_IGNORED_KEYS = {"embeddings.position_ids"}


def load_state_dict_into(model: BertModel, state_dict: dict[str, torch.Tensor]) -> None:
    """Copy a Hugging Face BERT state dict into ``model``: a ``bert.`` prefix is dropped, known
    buffers are skipped; missing or unexpected keys and shape mismatches are errors naming them."""
    state = {k.removeprefix("bert."): v for k, v in state_dict.items() if k.removeprefix("bert.") not in _IGNORED_KEYS}
    own = model.state_dict()
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    if missing or unexpected:
        parts = [f"{label} keys {keys[:8]}{' ...' if len(keys) > 8 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        raise ValueError("the checkpoint does not fit this model: " + "; ".join(parts))
    wrong = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items() if v.shape != own[k].shape]
    if wrong:
        raise ValueError("shapes differ: " + "; ".join(wrong[:8]))
    model.load_state_dict(state)


def from_pretrained(folder: str | Path) -> BertModel:
    """A :class:`BertModel` with the weights of a Hugging Face BERT folder (``config.json`` and
    ``model.safetensors``), in evaluation mode."""
    from safetensors.torch import load_file

    folder = Path(folder)
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"no model.safetensors in {folder} (this loader reads safetensors only)")
    model = BertModel(BertConfig.from_json(folder))
    load_state_dict_into(model, load_file(str(weights)))
    return model.eval()



def mask_tokens(
    input_ids: torch.Tensor,
    maskable: torch.Tensor,
    mask_token_id: int,
    vocab_size: int,
    probability: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masked-language-model corruption. Each position where ``maskable`` is True (real,
    non-special tokens) is chosen with ``probability``; a chosen token becomes ``[MASK]`` 80% of
    the time, a random token 10%, and stays itself 10% (so the model cannot rely on seeing [MASK]).
    Returns ``(inputs, labels)``: labels hold the original token where chosen, -100 elsewhere."""
    if input_ids.shape != maskable.shape or maskable.dtype != torch.bool:
        raise ValueError(
            f"maskable must be a bool tensor shaped like input_ids {tuple(input_ids.shape)}, "
            f"got {maskable.dtype} {tuple(maskable.shape)}"
        )
    if not 0.0 < probability < 1.0:
        raise ValueError(f"probability must be in (0, 1), got {probability}")
    draw = lambda: torch.rand(input_ids.shape, generator=generator, device=input_ids.device)  # noqa: E731
    chosen = (draw() < probability) & maskable
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    fate = draw()
    inputs = torch.where(chosen & (fate < 0.8), torch.full_like(input_ids, mask_token_id), input_ids)
    random_tokens = torch.randint(vocab_size, input_ids.shape, generator=generator, device=input_ids.device)
    inputs = torch.where(chosen & (fate >= 0.8) & (fate < 0.9), random_tokens, inputs)
    return inputs, labels


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = _ACTIVATIONS[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.activation(self.dense(x)))


class BertLMPredictionHead(nn.Module):
    """Hidden vector -> vocabulary logits, the output matrix shared with the word embeddings."""

    def __init__(self, config: BertConfig, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.decoder.weight = word_embeddings.weight
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(x)) + self.bias


class _MLMHeads(nn.Module):
    def __init__(self, config: BertConfig, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        self.predictions = BertLMPredictionHead(config, word_embeddings)


class BertForMaskedLM(nn.Module):
    """BERT with its masked-language-model head (Hugging Face names: ``bert.*``, ``cls.predictions.*``).

    ``forward(input_ids, attention_mask, labels)`` returns the mean cross-entropy over the positions
    whose label is not -100; the vocabulary logits are computed only there, which is most of the
    saving when 15% of tokens are masked.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.bert = BertModel(config)
        self.cls = _MLMHeads(config, self.bert.embeddings.word_embeddings)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        hidden = self.bert(input_ids, attention_mask).last_hidden_state
        if labels is None:
            return self.cls.predictions(hidden)
        chosen = labels != -100
        logits = self.cls.predictions(hidden[chosen])
        return F.cross_entropy(logits, labels[chosen])


class BertClassifier(nn.Module):
    """BERT with a classification head: dropout and a linear layer on the pooled [CLS] vector, as
    ``BertForSequenceClassification``. ``forward(input_ids, attention_mask)`` returns logits."""

    def __init__(self, config: BertConfig, num_labels: int = 2) -> None:
        super().__init__()
        self.bert = BertModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.classifier(self.dropout(self.bert(input_ids, attention_mask).pooler_output))


def init_bert_weights(model: nn.Module, std: float = 0.02) -> nn.Module:
    """BERT's initialisation for training from scratch: normal(0, std) weights, zero biases,
    LayerNorm at identity."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return model
