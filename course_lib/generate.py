"""Text generation with a decoder: prefill the prompt once, then decode one token at a time from a
KV cache (or, for comparison, recompute the whole sequence every step), pick each token with the
filters of ``course_lib.sampling``, and stop at an end token, a stop string or the length limit.

:func:`stream` yields tokens as they are made; :func:`generate` collects them; :func:`show_stream`
prints them live in JupyterLab.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from numbers import Integral

import torch
from torch import nn

from course_lib.arguments import require_int
from course_lib.kv_cache import KVCache
from course_lib.sampling import SamplingConfig, next_token


def prefill(model: nn.Module, input_ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Run the whole prompt (B, T) through the model once, filling ``cache``; the last position's
    logits (B, vocab) predict the first new token."""
    return model(input_ids, cache=cache, last_only=True)[:, -1]


def decode_step(model: nn.Module, token: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """One cached step: the newest token (B,) goes in alone at position ``cache.length``, its keys
    and values join the cache, and the logits (B, vocab) for the token after it come out."""
    return model(token[:, None], cache=cache, last_only=True)[:, -1]


def _eos_set(eos_token_id: int | Sequence[int] | None) -> set[int]:
    """The end tokens as a set of ints (one id, several, or none)."""
    if eos_token_id is None:
        return set()
    ids = [eos_token_id] if isinstance(eos_token_id, Integral) else list(eos_token_id)
    if not all(isinstance(i, Integral) and not isinstance(i, bool) for i in ids):
        raise ValueError(f"eos_token_id must be a token id, a list of them or None, got {eos_token_id!r}")
    return {int(i) for i in ids}


@torch.no_grad()
def stream(
    model: nn.Module,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    sampling: SamplingConfig | None = None,
    *,
    eos_token_id: int | Sequence[int] | None = None,
    stop_strings: Sequence[str] = (),
    decode: Callable[[list[int]], str] | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> Iterator[int]:
    """Yield up to ``max_new_tokens`` new token ids for one prompt ``input_ids`` (1, T), greedy
    unless ``sampling`` says otherwise. An end token is yielded and ends the stream; so does the
    token that completes one of ``stop_strings`` in ``decode(new ids)`` (kept, as ``transformers``
    keeps it). ``use_cache=False`` recomputes the whole sequence at every step instead."""
    max_new_tokens = require_int("max_new_tokens", max_new_tokens, at_least=0)
    if input_ids.ndim != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be one non-empty prompt of shape (1, T), got {tuple(input_ids.shape)}")
    if isinstance(stop_strings, str) or not all(isinstance(s, str) and s for s in stop_strings):
        raise ValueError(f"stop_strings must be a list of non-empty strings, got {stop_strings!r}")
    if stop_strings and decode is None:
        raise ValueError("stop_strings need decode (ids -> text) to find them")
    limit = getattr(getattr(model, "config", None), "max_positions", None)
    if limit is not None and input_ids.shape[1] + max_new_tokens - 1 > limit:
        raise ValueError(f"max_new_tokens={max_new_tokens} after a prompt of {input_ids.shape[1]} tokens "
                         f"would go past the model's context of {limit} positions")
    sampling = sampling or SamplingConfig.greedy()
    eos = _eos_set(eos_token_id)
    was_training = model.training
    model.eval()
    try:
        ids = input_ids  # the last new token is never fed back, so the cache needs T + n - 1 positions
        cache = model.new_cache(1, input_ids.shape[1] + max_new_tokens - 1) if use_cache and max_new_tokens else None
        new: list[int] = []
        for step in range(max_new_tokens):
            if cache is None:
                logits = model(ids, last_only=True)[:, -1]
            elif step == 0:
                logits = prefill(model, ids, cache)
            else:
                logits = decode_step(model, ids[:, -1], cache)
            token = next_token(logits, ids, sampling, generator)
            ids = torch.cat([ids, token[:, None]], dim=1)
            new.append(int(token))
            yield new[-1]
            if new[-1] in eos or (stop_strings and any(s in decode(new) for s in stop_strings)):
                return
    finally:
        model.train(was_training)


def generate(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int,
             sampling: SamplingConfig | None = None, **options) -> list[int]:
    """The new token ids of :func:`stream`, as a list (same arguments)."""
    return list(stream(model, input_ids, max_new_tokens, sampling, **options))


def show_stream(tokens: Iterator[int], decode: Callable[[list[int]], str], prefix: str = "") -> str:
    """Print the text of ``tokens`` as it grows, in place (one output area updated token by token in
    JupyterLab); return the final text. Decoding the whole list each time keeps a character split
    across two tokens from showing as garbage."""
    from IPython.display import Pretty, display

    from course_lib.runtime import headless

    handle = None if headless() else display(Pretty(prefix + "▌"), display_id=True)
    ids: list[int] = []
    for token in tokens:
        ids.append(token)
        if handle is not None:
            handle.update(Pretty(prefix + decode(ids) + "▌"))
    text = decode(ids)
    if handle is not None:
        handle.update(Pretty(prefix + text))
    else:
        print(prefix + text)
    return text


@torch.no_grad()
def generate_batch(model: nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                   sampling: SamplingConfig | None = None, *, eos_token_id: int | Sequence[int] | None = None,
                   pad_token_id: int = 0, generator: torch.Generator | None = None) -> list[list[int]]:
    """New token ids for several prompts at once: the prompts are padded on the left (their real
    tokens end together, so every new token lands in the same column), one prefill fills the cache,
    then one cached step per token serves the whole batch; a row stops at its end token (kept).
    Rotary positions shift by the padding, which leaves every query–key distance, and so the
    result, as one prompt alone gives it."""
    max_new_tokens = require_int("max_new_tokens", max_new_tokens, at_least=0)
    if isinstance(prompts, torch.Tensor) or not prompts or not all(len(p) > 0 for p in prompts):
        raise ValueError(f"prompts must be a non-empty list of non-empty token-id lists, got {prompts!r:.80}")
    sampling = sampling or SamplingConfig.greedy()
    eos = _eos_set(eos_token_id)
    device = next(model.parameters()).device
    longest = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_token_id] * (longest - len(p)) + list(p) for p in prompts], device=device)
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts], device=device)
    # what the repetition penalty sees: each row's own tokens, its padding filled with its first real
    # token (already in the row, so the set of seen tokens is the row's alone)
    seen = torch.tensor([[p[0]] * (longest - len(p)) + list(p) for p in prompts], device=device)
    new: list[list[int]] = [[] for _ in prompts]
    if max_new_tokens == 0:
        return new
    was_training = model.training
    model.eval()
    try:
        cache = model.new_cache(len(prompts), longest + max_new_tokens - 1)
        logits = model(ids, cache=cache, attention_mask=mask, last_only=True)[:, -1]
        done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
        for step in range(max_new_tokens):
            token = next_token(logits, seen, sampling, generator)
            token = torch.where(done, torch.full_like(token, pad_token_id), token)
            for row in (~done).nonzero().flatten().tolist():
                new[row].append(int(token[row]))
            done |= torch.tensor([int(t) in eos for t in token.tolist()], device=device)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            seen = torch.cat([seen, token[:, None]], dim=1)
            mask = torch.cat([mask, (~done).long()[:, None]], dim=1)
            logits = model(token[:, None], cache=cache, attention_mask=mask, last_only=True)[:, -1]
    finally:
        model.train(was_training)
    return new
