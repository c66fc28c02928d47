"""Looking inside the fine-tuned classifier, and poking at it from outside.

Inside: which word-pieces a prediction leans on, three ways — gradient × input saliency, the last
layer's attention from ``[CLS]``, and the measured change of the predicted probability when one
word-piece is replaced by ``[MASK]``. The last one is the referee: :func:`attention_vs_saliency`
asks whether the most attended token or the most salient one matters more when it is taken away.

Outside: :func:`counterfactual_flips` edits each sentence (:func:`swap_names` swaps gendered words
and first names, :func:`negate` inserts a "not") and counts how often the predicted label flips. A
robust model flips on a negation and not on a name swap; the function only counts, the reader judges.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from course_lib.arguments import require_int

POSITIVE = 1  # index of "positive" in course_lib.finetune.LABELS


# ---------------------------------------------------------------------------------------------
# Shared plumbing


def _require_text(name: str, text: object) -> str:
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {type(text).__name__}")
    if not text.strip():
        raise ValueError(f"{name} must be a non-empty sentence, got {text!r}")
    return text


def _device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _encode(model: nn.Module, tokenizer: Any, texts: str | list[str]) -> dict[str, torch.Tensor]:
    """The tokenizer's tensors (truncated to the model's limit, padded in a batch) on the model's device."""
    batch = tokenizer(texts, truncation=True, padding=True, return_tensors="pt")
    return {key: value.to(_device(model)) for key, value in batch.items()}


def _encode_one(model: nn.Module, tokenizer: Any, text: str) -> dict[str, torch.Tensor]:
    batch = _encode(model, tokenizer, _require_text("text", text))
    if batch["input_ids"].shape[1] < 3:
        raise ValueError(f"text must hold at least one word-piece besides [CLS] and [SEP], got {text!r}")
    return batch


def _tokens(tokenizer: Any, input_ids: torch.Tensor) -> list[str]:
    return tokenizer.convert_ids_to_tokens(input_ids[0].tolist())


def _probabilities(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Class probabilities (N, C) on the CPU, the model in eval mode for the call (its flag restored)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(**batch).logits
    finally:
        model.train(was_training)
    return logits.float().softmax(-1).cpu()


def _check_target(target: object, num_labels: int) -> int:
    if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < num_labels:
        raise ValueError(f"target must be a class index in [0, {num_labels - 1}] or None, got {target!r}")
    return target


# ---------------------------------------------------------------------------------------------
# Which tokens matter: saliency, attention, masking


def gradient_x_input(model: nn.Module, tokenizer: Any, text: str,
                     target: int | None = None) -> tuple[list[str], torch.Tensor]:
    """(word-pieces with [CLS] and [SEP], one score per word-piece): the gradient of the ``target``
    logit (default: the predicted class) with respect to each word embedding, dotted with that
    embedding.

    A first-order, local attribution: it says how the logit would move if a token's embedding were
    scaled a little. Only for a model linear in the embeddings (logit = w·x + b) do the scores sum
    to the logit minus its value at a zero embedding (b); through BERT's LayerNorms, attention and
    GELUs they add up to nothing in particular. The model runs in eval mode (its flag restored), and
    the gradient is taken for the embeddings only: no ``.grad`` is left on any parameter."""
    batch = _encode_one(model, tokenizer, text)
    input_ids = batch.pop("input_ids")
    embeddings = model.get_input_embeddings()(input_ids).detach().requires_grad_(True)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            logits = model(inputs_embeds=embeddings, **batch).logits[0]
            target = int(logits.argmax()) if target is None else _check_target(target, logits.shape[-1])
            (gradient,) = torch.autograd.grad(logits[target], embeddings)
    finally:
        model.train(was_training)
    scores = (gradient * embeddings.detach()).sum(-1)[0]
    return _tokens(tokenizer, input_ids), scores.float().cpu()


def attention_to_tokens(model: nn.Module, tokenizer: Any, text: str) -> tuple[list[str], torch.Tensor]:
    """(word-pieces with [CLS] and [SEP], weights summing to 1): how much the last layer's ``[CLS]``
    query attends to each token, averaged over heads — the attention that feeds the classifier head.

    transformers returns attention weights only from its "eager" implementation (the default
    "sdpa" kernel never forms them and returns none), so the model is switched to eager for this
    one forward pass and switched back afterwards; the numbers are the same either way."""
    if not hasattr(model, "set_attn_implementation"):
        raise TypeError(f"model must be a transformers model (with set_attn_implementation), got {type(model).__name__}")
    batch = _encode_one(model, tokenizer, text)
    previous, was_training = model.config._attn_implementation, model.training
    model.eval()
    if previous != "eager":
        model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            attentions = model(**batch, output_attentions=True).attentions
    finally:
        if previous != "eager":
            model.set_attn_implementation(previous)
        model.train(was_training)
    if not attentions:
        raise RuntimeError(f"{type(model).__name__} returned no attention weights even with eager attention")
    weights = attentions[-1][0, :, 0, :].mean(0)  # last layer, first sentence, all heads, [CLS] query
    return _tokens(tokenizer, batch["input_ids"]), weights.float().cpu()


def _masked_copies(batch: dict[str, torch.Tensor], positions: Sequence[int], mask_id: int) -> dict[str, torch.Tensor]:
    """The one-sentence ``batch`` repeated: first unchanged, then once per position with that
    word-piece replaced by ``mask_id`` (same length, so no padding and no shifted positions)."""
    copies = {key: value.repeat(len(positions) + 1, 1) for key, value in batch.items()}
    for row, position in enumerate(positions, start=1):
        copies["input_ids"][row, position] = mask_id
    return copies


def _check_position(position: object, n_tokens: int) -> int:
    if isinstance(position, bool) or not isinstance(position, int) or not 1 <= position <= n_tokens - 2:
        raise ValueError(f"position must be a word-piece index in [1, {n_tokens - 2}] (not [CLS] at 0 or [SEP] "
                         f"at {n_tokens - 1}), got {position!r}")
    return position


def _mask_id(tokenizer: Any) -> int:
    if getattr(tokenizer, "mask_token_id", None) is None:
        raise ValueError(f"tokenizer must have a mask token, {type(tokenizer).__name__} has none")
    return tokenizer.mask_token_id


def mask_token_effect(model: nn.Module, tokenizer: Any, text: str, position: int) -> float:
    """P(predicted class | the word-piece at ``position`` replaced by [MASK]) minus P(predicted class
    | ``text``): negative when the prediction leaned on that word-piece. A direct, measured effect,
    unlike saliency or attention; [MASK] rather than deletion keeps every other token in place."""
    batch = _encode_one(model, tokenizer, text)
    position = _check_position(position, batch["input_ids"].shape[1])
    probabilities = _probabilities(model, _masked_copies(batch, [position], _mask_id(tokenizer)))
    predicted = int(probabilities[0].argmax())
    return float(probabilities[1, predicted] - probabilities[0, predicted])


def masking_effects(model: nn.Module, tokenizer: Any, text: str) -> tuple[list[str], torch.Tensor]:
    """(word-pieces with [CLS] and [SEP], one effect each): :func:`mask_token_effect` for every
    word-piece at once (one batch: the sentence, then one copy per word-piece with it masked); 0.0
    for [CLS] and [SEP], which are never masked. The most negative effect marks the word-piece the
    prediction leans on most — the referee for saliency and attention."""
    batch = _encode_one(model, tokenizer, text)
    n = batch["input_ids"].shape[1]
    probabilities = _probabilities(model, _masked_copies(batch, list(range(1, n - 1)), _mask_id(tokenizer)))
    predicted = int(probabilities[0].argmax())
    effects = torch.zeros(n)
    effects[1:n - 1] = probabilities[1:, predicted] - probabilities[0, predicted]
    return _tokens(tokenizer, batch["input_ids"]), effects


@dataclass(frozen=True)
class AttentionVsSaliency:
    """One sentence's word-pieces, [CLS] attention and saliency, and the measured effect (change of
    P(predicted class)) of masking the most attended word-piece and the most salient one (by
    |saliency|). [CLS] and [SEP] are never candidates."""

    text: str
    tokens: list[str]
    attention: torch.Tensor
    saliency: torch.Tensor
    predicted: int
    probability: float
    top_attention: int
    top_attention_effect: float
    top_saliency: int
    top_saliency_effect: float

    @property
    def same_token(self) -> bool:
        """Whether attention and saliency point at the same word-piece (then there is no contrast)."""
        return self.top_attention == self.top_saliency

    def __str__(self) -> str:
        return (f"predicted class {self.predicted} with P = {self.probability:.3f}; "
                f"most attended {self.tokens[self.top_attention]!r} (attention {self.attention[self.top_attention]:.3f}): "
                f"masking it changes P by {self.top_attention_effect:+.3f}; "
                f"most salient {self.tokens[self.top_saliency]!r} (saliency {self.saliency[self.top_saliency]:+.3f}): "
                f"masking it changes P by {self.top_saliency_effect:+.3f}")


def attention_vs_saliency(model: nn.Module, tokenizer: Any, text: str) -> AttentionVsSaliency:
    """Whether the word-piece the last layer's [CLS] attends to most, or the one with the largest
    |gradient × input|, matters more to the prediction, measured by masking each: a test of
    "attention is explanation" on one real sentence. Deterministic (eval mode, no sampling)."""
    tokens, attention = attention_to_tokens(model, tokenizer, text)
    _, saliency = gradient_x_input(model, tokenizer, text)
    inner = slice(1, len(tokens) - 1)  # word-pieces only: not [CLS], not [SEP]
    top_attention = int(attention[inner].argmax()) + 1
    top_saliency = int(saliency[inner].abs().argmax()) + 1
    batch = _encode_one(model, tokenizer, text)
    probabilities = _probabilities(model, _masked_copies(batch, [top_attention, top_saliency], _mask_id(tokenizer)))
    predicted = int(probabilities[0].argmax())
    before = probabilities[0, predicted]
    return AttentionVsSaliency(text=text, tokens=tokens, attention=attention, saliency=saliency, predicted=predicted,
                               probability=float(before), top_attention=top_attention,
                               top_attention_effect=float(probabilities[1, predicted] - before),
                               top_saliency=top_saliency, top_saliency_effect=float(probabilities[2, predicted] - before))


# ---------------------------------------------------------------------------------------------
# Counterfactual edits: does the label flip?

GENDER_PAIRS: tuple[tuple[str, str], ...] = (
    ("he", "she"), ("his", "her"), ("him", "her"), ("himself", "herself"), ("man", "woman"), ("men", "women"),
    ("boy", "girl"), ("boys", "girls"), ("father", "mother"), ("son", "daughter"), ("brother", "sister"),
    ("husband", "wife"), ("boyfriend", "girlfriend"), ("king", "queen"), ("actor", "actress"),
    ("actors", "actresses"), ("mr.", "ms."), ("mr.", "mrs."),
)
"""Gendered words, swapped both ways; when a word appears twice, its first pair decides what it
becomes: "her" becomes "his" (never "him"), "mrs." becomes "mr."."""

NAME_PAIRS: tuple[tuple[str, str], ...] = (
    ("john", "mary"), ("james", "jennifer"), ("michael", "sarah"), ("david", "emily"), ("robert", "susan"),
    ("peter", "anna"), ("tom", "kate"), ("jack", "jane"),
)
"""Common English first names, a man's and a woman's."""


def _case_like(source: str, word: str) -> str:
    """``word`` in the case of ``source``: all capitals, a capital first letter, or lower case."""
    if len(source) > 1 and source.isupper():
        return word.upper()
    if source[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def swap_words(text: str, pairs: Sequence[tuple[str, str]]) -> str | None:
    """``text`` with each whole word of ``pairs`` replaced by its partner (both ways, in one pass,
    case kept; "the" stays "the" and "Shelby" stays "Shelby"), or None when no word was replaced."""
    _require_text("text", text)
    replacement: dict[str, str] = {}
    for pair in pairs:
        if (not isinstance(pair, tuple) or len(pair) != 2
                or not all(isinstance(word, str) and word.strip() for word in pair)):
            raise ValueError(f"pairs must hold (word, partner) tuples of non-empty str, got {pair!r}")
        first, second = (word.lower() for word in pair)
        replacement.setdefault(first, second)
        replacement.setdefault(second, first)
    if not replacement:
        raise ValueError("pairs must hold at least one (word, partner) tuple, got none")
    words = sorted(replacement, key=len, reverse=True)  # "mrs." before "mr.", "himself" before "him"
    pattern = re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, words)) + r")(?!\w)", re.IGNORECASE)
    swapped = pattern.sub(lambda match: _case_like(match[0], replacement[match[0].lower()]), text)
    return swapped if swapped != text else None


def swap_names(text: str) -> str | None:
    """``text`` with gendered words (:data:`GENDER_PAIRS`: he↔she, his↔her, actor↔actress, Mr.↔Ms.,
    ...) and first names (:data:`NAME_PAIRS`) swapped, or None when it has none. A name swap should
    not change a review's sentiment. "her" always becomes "his", even where "him" was meant."""
    return swap_words(text, GENDER_PAIRS + NAME_PAIRS)


_COPULA = re.compile(r"(?<!\w)(is|was|are|were)(?!\w)", re.IGNORECASE)
_NEGATION = re.compile(r"(?<!\w)(not|no|never|nothing|none|nobody|nowhere|neither|nor|without|hardly|cannot)(?!\w)"
                       r"|n['’]t(?!\w)", re.IGNORECASE)


def negate(text: str) -> str | None:
    """``text`` with "not" inserted after its first "is", "was", "are" or "were" that does not open
    the text ("The film is funny" → "The film is not funny"; "Is it funny?" is a question, left
    alone), or None when it has no such verb or is already negative in form (it holds "not", "n't",
    "no", "never", "nothing", "without", ...: a second negation would not reliably reverse it). A
    negated review should usually change sentiment; the rule knows no grammar beyond this."""
    _require_text("text", text)
    if _NEGATION.search(text):
        return None
    match = next((m for m in _COPULA.finditer(text) if text[:m.start()].strip()), None)
    if match is None:
        return None
    return text[:match.end()] + (" NOT" if match[0].isupper() and len(match[0]) > 1 else " not") + text[match.end():]


def _batched_probabilities(model: nn.Module, tokenizer: Any, texts: list[str], batch_size: int) -> torch.Tensor:
    """Class probabilities (N, C) of ``texts``, scored ``batch_size`` at a time."""
    out = [_probabilities(model, _encode(model, tokenizer, texts[start:start + batch_size]))
           for start in range(0, len(texts), batch_size)]
    return torch.cat(out) if out else torch.empty(0, 2)


def counterfactual_flips(model: nn.Module, tokenizer: Any, texts: Sequence[str],
                         edit: Callable[[str], str | None], batch_size: int = 64) -> dict[str, Any]:
    """How often ``edit`` flips the predicted label: ``edit`` is applied to each text (None, or the
    text unchanged, means "not applicable": skipped), and both versions are classified.

    Returns ``applicable`` (number of edited texts), ``flipped`` (how many changed label),
    ``flip_rate`` (flipped / applicable, NaN when none applied), ``mean_abs_change`` (mean
    |ΔP(positive)|), ``flips`` (``(original, edited, p_before, p_after)`` with P(positive), for each
    flip) and, per applicable text, ``indices`` (into ``texts``), ``before`` and ``after`` (the
    P(positive) tensors), so that correctness before and after can be compared with
    :func:`course_lib.paired.mcnemar`."""
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a sequence of str, got {type(texts).__name__}")
    if not texts:
        raise ValueError("texts must hold at least one sentence, got an empty sequence")
    if not callable(edit):
        raise TypeError(f"edit must be a function str -> str | None, got {type(edit).__name__}")
    batch_size = require_int("batch_size", batch_size)
    indices, originals, edited = [], [], []
    for i, text in enumerate(texts):
        new = edit(_require_text(f"texts[{i}]", text))
        if new is not None and not isinstance(new, str):
            raise TypeError(f"edit must return a str or None, got {type(new).__name__} for texts[{i}]")
        if new is not None and new != text:
            indices.append(i)
            originals.append(text)
            edited.append(new)
    before = _batched_probabilities(model, tokenizer, originals, batch_size)
    after = _batched_probabilities(model, tokenizer, edited, batch_size)
    changed = (before.argmax(-1) != after.argmax(-1)).nonzero().flatten().tolist()
    p_before, p_after = before[:, POSITIVE], after[:, POSITIVE]
    n = len(indices)
    return {"applicable": n, "flipped": len(changed),
            "flip_rate": len(changed) / n if n else math.nan,
            "mean_abs_change": float((p_after - p_before).abs().mean()) if n else math.nan,
            "flips": [(originals[i], edited[i], float(p_before[i]), float(p_after[i])) for i in changed],
            "indices": indices, "before": p_before, "after": p_after}
