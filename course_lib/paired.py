"""Comparing two classifiers on the same test sentences: paired statistics.

Two models scored on the same sentences are not independent samples: most sentences are easy for
both, and only the ones where they disagree carry information about which is better. McNemar's exact
test looks at exactly those; a bootstrap over sentences gives an interval for the accuracy gap.
A rule for independent samples (three standard errors of the difference of two accuracies: 4.7
points at 1,000 sentences) calls 84% vs 88.5% noise, even when one model is right on every sentence
the other is right on, and on 45 more.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from course_lib.arguments import require_int


@dataclass(frozen=True)
class McNemar:
    """``only_a``: sentences A gets right and B wrong; ``only_b``: the reverse; ``p_value``: the
    exact two-sided probability of a split at least this uneven if both models were equally good."""

    only_a: int
    only_b: int
    p_value: float

    def __str__(self) -> str:
        return f"A right, B wrong: {self.only_a}; B right, A wrong: {self.only_b}; McNemar exact p = {self.p_value:.3g}"


def _as_bools(name: str, values: Sequence[bool] | np.ndarray) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of per-sentence right/wrong, got shape {array.shape}")
    if array.dtype != bool and not np.isin(array, (0, 1)).all():
        raise ValueError(f"{name} must hold booleans (or 0/1): whether each sentence was classified correctly")
    return array.astype(bool)


def _pair(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_bools("correct_a", correct_a), _as_bools("correct_b", correct_b)
    if a.shape != b.shape:
        raise ValueError(f"correct_a and correct_b must score the same sentences, got {a.size} and {b.size}")
    return a, b


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> McNemar:
    """McNemar's exact test: under "equally good", each sentence where exactly one model is right
    is that model's with probability 1/2, so the split is Binomial(n, 1/2); p is twice the smaller
    tail (at most 1)."""
    a, b = _pair(correct_a, correct_b)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n, k = only_a + only_b, min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n if n else 1.0
    return McNemar(only_a, only_b, min(1.0, 2 * tail))


def bootstrap_gap(correct_a: Sequence[bool], correct_b: Sequence[bool], *, samples: int = 10_000,
                  confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(observed accuracy of A minus B, lower, upper): a percentile interval from resampling the
    sentences with replacement, both models' results kept together for each sentence."""
    a, b = _pair(correct_a, correct_b)
    samples = require_int("samples", samples)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    gap = a.astype(float) - b.astype(float)
    rows = np.random.default_rng(seed).integers(0, gap.size, size=(samples, gap.size))
    means = gap[rows].mean(axis=1)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(gap.mean()), float(low), float(high)
