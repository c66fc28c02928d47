"""Checks of chapter 06 (pretraining)."""

from __future__ import annotations

import torch

from course_lib.checks.verdict import UNREADABLE, Check, CheckFailed, call, expect_tensor, expect_unchanged, generator
from course_lib.plain import type_name


class NextTokenLoss(Check):
    """``next_token_loss(logits, idx)``: the logits at position t predict token t+1, so compare
    logits[:, :-1] with idx[:, 1:] (cross-entropy, mean over all predicted positions).
    Catches: no shift (every position predicts itself), the shift the wrong way round, a Python
    float instead of a tensor."""

    exercise = "6.1"

    def cases(self) -> list:
        g = generator(61)
        cases = []
        for b, t, v in ((1, 2, 3), (2, 5, 7), (3, 9, 11)):
            logits = torch.randn(b, t, v, generator=g) * 2
            idx = torch.randint(0, v, (b, t), generator=g)
            cases.append((logits, idx))
        return cases


    def judge(self, case, got):
        from course_lib.gpt import causal_lm_loss

        logits, idx = case
        expected = causal_lm_loss(logits, idx)
        expect_tensor(expect_unchanged(case, got), expected, f"logits of shape {tuple(logits.shape)}")


class TopKFilter(Check):
    """``top_k_filter(logits, k)``: (B, V) logits with every entry below the k-th largest of its
    row set to -inf; the k largest keep their values. Catches: dropping the k-th largest too
    (``<=``), filling with 0 instead of -inf, changing the logits in place."""

    exercise = "6.2"

    def cases(self) -> list:
        g = generator(62)
        return [(torch.randn(b, v, generator=g), k) for b, v, k in ((1, 5, 1), (3, 10, 3), (2, 7, 7))]


    def judge(self, case, got):
        logits, k = case
        kth = torch.topk(logits, k, dim=-1).values[:, -1:]
        expected = logits.masked_fill(logits < kth, float("-inf"))
        expect_tensor(expect_unchanged(case, got), expected, f"logits of shape {tuple(logits.shape)}, k={k}")


def _maskable() -> torch.Tensor:
    """400 rows of 100 tokens: [CLS] and [SEP] at the ends, and the first 200 rows padded after 60."""
    maskable = torch.ones(400, 100, dtype=torch.bool)
    maskable[:, 0] = maskable[:, -1] = False
    maskable[:200, 60:] = False
    return maskable


class SelectForMasking(Check):
    """``select(maskable, probability, generator)``: a bool tensor like ``maskable``, True for
    positions chosen independently with ``probability``, never where ``maskable`` is False. The
    probe calls it twice, each time with a fresh generator seeded 63; the judge does the statistics.
    Catches: choosing special tokens or padding, ignoring ``probability``, a float tensor, the
    same number chosen in every row (not independent), changing ``maskable`` in place, ignoring
    ``generator`` (the global generator instead: two calls with equally seeded generators differ)."""

    exercise = "6.3"

    def cases(self) -> list:
        return [(_maskable(), probability, 63) for probability in (0.15, 0.4)]

    def probe(self, select, case):
        maskable, probability, seed = case  # twice, each time with a fresh generator of the same seed
        return [call(select, maskable, probability, generator(seed)) for _ in range(2)]

    def judge(self, case, got):
        maskable, probability, _ = case
        if type(got) is not list or len(got) != 2:
            raise CheckFailed(UNREADABLE)
        chosen, again = (expect_unchanged(case, g) for g in got)
        if not isinstance(chosen, torch.Tensor) or chosen.dtype != torch.bool or chosen.shape != maskable.shape:
            found = f"{chosen.dtype} {tuple(chosen.shape)}" if isinstance(chosen, torch.Tensor) else type_name(chosen)
            raise CheckFailed(f"expected a bool tensor of shape {tuple(maskable.shape)}, got {found}")
        if (chosen & ~maskable).any():
            raise CheckFailed("a position that is not maskable ([CLS], [SEP], padding) was chosen")
        rate = chosen.sum().item() / maskable.sum().item()
        if abs(rate - probability) > 0.02:
            raise CheckFailed(f"with probability={probability}, the fraction chosen is not close to it")
        rows = chosen[200:].float().mean(dim=1)
        if rows.std() < 0.01:
            raise CheckFailed("every row has the same number chosen: choose each position independently")
        if not (isinstance(again, torch.Tensor) and again.shape == chosen.shape and torch.equal(again, chosen)):
            raise CheckFailed("two generators with the same seed gave different choices: draw the random "
                              "numbers from the `generator` argument (torch.rand(..., generator=generator))")


CHECKS = {c.exercise: c for c in (NextTokenLoss(), TopKFilter(), SelectForMasking())}
