"""The logits filters of text generation, written from scratch: temperature, top-k, top-p (nucleus)
and CTRL's repetition penalty, each giving exactly what the matching ``transformers`` logits
processor gives, applied in the order ``generate`` applies them, and the choice of the next token.

Every function takes next-token logits of shape (batch, vocab) and returns a new tensor; a
removed token gets the logit -inf, so softmax gives it probability 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import torch
import torch.nn.functional as F

from course_lib.arguments import require_int

FILTERED = float("-inf")  # the logit of a removed token (transformers' default filter_value)


def _require_logits(logits: object) -> torch.Tensor:
    """``logits`` if it is a floating-point tensor of shape (batch, vocab); a clear error otherwise."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor of shape (batch, vocab), got {type(logits).__name__}")
    if logits.ndim != 2 or not logits.is_floating_point():
        raise ValueError(f"logits must be a 2-D (batch, vocab) floating-point tensor, "
                         f"got {logits.dtype} {tuple(logits.shape)}")
    return logits


def _require_float(name: str, value: object, *, at_most_one: bool = False) -> float:
    """``value`` as a float if it is a finite real number > 0 (and <= 1 when ``at_most_one``);
    else ValueError naming ``name``, the expectation and what was given."""
    expected = "a float in (0, 1]" if at_most_one else "a finite float > 0"
    if (isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value <= 0
            or (at_most_one and value > 1)):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return float(value)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / temperature: below 1 sharpens the distribution towards the likeliest tokens, above
    1 flattens it (TemperatureLogitsWarper)."""
    return _require_logits(logits) / _require_float("temperature", temperature)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row, set the rest to -inf (TopKLogitsWarper). Every token
    tied with the k-th largest value is kept too, so a row can keep more than k; k larger than the
    vocabulary keeps everything."""
    logits = _require_logits(logits)
    k = min(require_int("k", k), logits.shape[-1])
    kth_largest = torch.topk(logits, k, dim=-1).values[:, -1:]
    return logits.masked_fill(logits < kth_largest, FILTERED)


def top_p_filter(logits: torch.Tensor, p: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Nucleus filtering (TopPLogitsWarper): keep the smallest set of most probable tokens whose
    probabilities add up to at least ``p`` (and at least ``min_tokens_to_keep`` tokens), set the
    rest to -inf. ``p == 1`` returns the logits unchanged, as ``generate`` skips the filter then."""
    logits = _require_logits(logits)
    p = _require_float("p", p, at_most_one=True)
    min_tokens_to_keep = require_int("min_tokens_to_keep", min_tokens_to_keep)
    if p == 1.0:
        return logits
    # Done the way transformers does it, so the result is identical to the last bit: sort ascending
    # and drop the least probable tokens while their cumulative probability stays <= 1 - p. The
    # dropped tail holds at most 1 - p, so what is kept holds at least p, and dropping one token
    # more would leave less than p: the smallest set of most probable tokens reaching p. Right at
    # the boundary float rounding decides (probabilities 0.65, 0.25, 0.1 with p = 0.9 keep all
    # three, as softmax gives the 0.1 a hair above 1 - 0.9 in float32), and tokens tied in
    # probability can be split, unlike in top-k.
    sorted_logits, sorted_indices = torch.sort(logits, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    sorted_remove = cumulative <= 1 - p
    sorted_remove[:, -min_tokens_to_keep:] = False  # the most probable ones are always kept
    remove = sorted_remove.scatter(1, sorted_indices, sorted_remove)  # back to vocabulary order
    return logits.masked_fill(remove, FILTERED)


def repetition_penalty(logits: torch.Tensor, previous_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty (RepetitionPenaltyLogitsProcessor): for every token already in ``previous_ids``
    (batch, n), a positive logit is divided by ``penalty`` and a negative one multiplied, so
    penalty > 1 makes repeats less likely and < 1 more likely; each token once, however often it
    occurred. Ids >= vocab are ignored, as transformers ignores them."""
    logits = _require_logits(logits)
    penalty = _require_float("penalty", penalty)
    if (not isinstance(previous_ids, torch.Tensor) or previous_ids.ndim != 2 or previous_ids.is_floating_point()
            or previous_ids.shape[0] != logits.shape[0]):
        raise ValueError(f"previous_ids must be a (batch, n) integer tensor with batch = {logits.shape[0]}, got "
                         f"{getattr(previous_ids, 'dtype', type(previous_ids).__name__)} "
                         f"{tuple(getattr(previous_ids, 'shape', ()))}")
    if previous_ids.numel() and previous_ids.min() < 0:
        raise ValueError(f"previous_ids must be token ids >= 0, got {previous_ids.min().item()}")
    vocab = logits.shape[-1]
    seen = torch.zeros(logits.shape[0], vocab + 1, dtype=torch.bool, device=logits.device)
    seen = seen.scatter(1, previous_ids.long().clamp(max=vocab), True)[:, :vocab]  # column vocab: ids outside
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalised, logits)


@dataclass(frozen=True)
class SamplingConfig:
    """How to choose the next token: the filters to apply (None leaves one out) and whether to sample
    (``do_sample``) or take the most likely token (greedy). Unlike ``transformers``' ``generate``,
    which adds top_k=50 when sampling unless told otherwise, nothing is applied that is not set here."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    do_sample: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "temperature", _require_float("temperature", self.temperature))
        object.__setattr__(self, "top_k", require_int("top_k", self.top_k, allow_none=True))
        if self.top_p is not None:
            object.__setattr__(self, "top_p", _require_float("top_p", self.top_p, at_most_one=True))
        if self.repetition_penalty is not None:
            object.__setattr__(self, "repetition_penalty",
                               _require_float("repetition_penalty", self.repetition_penalty))
        if not isinstance(self.do_sample, bool):
            raise ValueError(f"do_sample must be a bool, got {self.do_sample!r}")

    @classmethod
    def greedy(cls, repetition_penalty: float | None = None) -> SamplingConfig:
        """Always take the most likely token (after the repetition penalty, if any)."""
        return cls(repetition_penalty=repetition_penalty, do_sample=False)


def process_logits(logits: torch.Tensor, previous_ids: torch.Tensor | None, config: SamplingConfig) -> torch.Tensor:
    """The filters of ``config`` that are set, in the order transformers' ``generate`` applies them:
    repetition penalty, then (only when sampling, as ``generate`` does) temperature, top-k, top-p.
    ``previous_ids`` (batch, n) is only needed for the repetition penalty."""
    logits = _require_logits(logits)
    if config.repetition_penalty is not None:
        if previous_ids is None:
            raise ValueError("previous_ids must be given when repetition_penalty is set, got None")
        logits = repetition_penalty(logits, previous_ids, config.repetition_penalty)
    if config.do_sample:
        logits = apply_temperature(logits, config.temperature)
        if config.top_k is not None:
            logits = top_k_filter(logits, config.top_k)
        if config.top_p is not None:
            logits = top_p_filter(logits, config.top_p)
    return logits


def next_token(
    logits: torch.Tensor,
    previous_ids: torch.Tensor | None,
    config: SamplingConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The next token id of each row (batch,): the argmax of the processed logits when
    ``config.do_sample`` is False, else a draw from their softmax (the same ``generator`` seed gives
    the same tokens). Logits are processed in float32, as ``transformers`` does, whatever the model's
    dtype; with a generator on another device (a CPU generator, a GPU model) the draw happens there,
    so a seed gives the same tokens on every device."""
    logits = process_logits(logits.float(), previous_ids, config)
    if not config.do_sample:
        return logits.argmax(dim=-1)
    probs = F.softmax(logits, dim=-1)
    if generator is not None and generator.device != probs.device:
        return torch.multinomial(probs.to(generator.device), 1, generator=generator).squeeze(1).to(probs.device)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)
