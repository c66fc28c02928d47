"""The count baselines against probabilities computed by hand with Python dictionaries."""

import math
from collections import Counter

import pytest
import torch

from course_lib.ngram import NGramCounts

SEQUENCES = [torch.tensor([0, 1, 2, 1, 2, 3]), torch.tensor([3, 1, 2])]
V = 5  # token 4 never occurs


def by_hand_unigram(alpha=1.0):
    counts = Counter(t for s in SEQUENCES for t in s.tolist())
    total = sum(counts.values()) + alpha * V
    return {t: (counts[t] + alpha) / total for t in range(V)}


def test_unigram_loss_is_the_smoothed_frequency():
    counts = NGramCounts(SEQUENCES, V)
    targets = torch.tensor([1, 2, 4])
    expected = -sum(math.log(by_hand_unigram()[t]) for t in targets.tolist()) / 3
    assert counts.unigram_loss(targets) == pytest.approx(expected, rel=1e-12)
    assert math.isfinite(counts.unigram_loss(torch.tensor([4])))  # unseen, yet not impossible


def test_bigram_loss_interpolates_with_the_unigram_and_never_crosses_sequences():
    counts = NGramCounts(SEQUENCES, V)
    pairs = Counter((a, b) for s in SEQUENCES for a, b in zip(s[:-1].tolist(), s[1:].tolist()))
    contexts = Counter(a for s in SEQUENCES for a in s[:-1].tolist())
    assert (3, 3) not in pairs  # the end of one sequence and the start of the next are not a pair
    uni = by_hand_unigram()
    previous, targets, w = torch.tensor([1, 2, 3, 4, 2]), torch.tensor([2, 3, 1, 0, 1]), 0.8

    def p(a, b):
        return w * pairs[(a, b)] / contexts[a] + (1 - w) * uni[b] if contexts[a] else uni[b]

    expected = -sum(math.log(p(a, b)) for a, b in zip(previous.tolist(), targets.tolist())) / 5
    assert counts.bigram_loss(previous, targets, weight=w) == pytest.approx(expected, rel=1e-12)
    # a pair that always follows its context beats the unigram guess
    assert counts.bigram_loss(torch.tensor([1]), torch.tensor([2])) < counts.unigram_loss(torch.tensor([2]))


def test_best_bigram_loss_picks_the_lowest_weight_on_the_targets():
    counts = NGramCounts(SEQUENCES, V)
    previous, targets = torch.tensor([1, 2, 2]), torch.tensor([2, 1, 3])
    loss, weight = counts.best_bigram_loss(previous, targets, weights=(0.1, 0.5, 0.9))
    assert loss == min(counts.bigram_loss(previous, targets, w) for w in (0.1, 0.5, 0.9))
    assert loss == counts.bigram_loss(previous, targets, weight)


def test_large_vocabularies_stay_sparse():
    counts = NGramCounts([torch.tensor([30_000, 5, 30_000])], 30_522)
    assert len(counts.pair_keys) == 2
    assert counts.bigram_loss(torch.tensor([5]), torch.tensor([30_000]), weight=0.5) < counts.unigram_loss(torch.tensor([30_000]))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="sequences must hold at least one token"):
        NGramCounts([], V)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 5\), got 0 to 7"):
        NGramCounts([torch.tensor([0, 7])], V)
    counts = NGramCounts(SEQUENCES, V)
    with pytest.raises(ValueError, match=r"targets must be token ids in \[0, 5\), got -1 to 2"):
        counts.unigram_loss(torch.tensor([-1, 2]))
    with pytest.raises(ValueError, match="previous and targets must have the same shape"):
        counts.bigram_loss(torch.tensor([1, 2]), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"weight must be in \[0, 1\), got 1.0"):
        counts.bigram_loss(torch.tensor([1]), torch.tensor([2]), weight=1.0)
    with pytest.raises(ValueError, match="alpha must be > 0, got 0"):
        counts.unigram_loss(torch.tensor([1]), alpha=0)
    with pytest.raises(ValueError, match="targets must not be empty"):
        counts.unigram_loss(torch.tensor([], dtype=torch.long))
