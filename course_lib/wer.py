"""Word error rate from scratch: the edit distance between word sequences, with its substitutions,
deletions and insertions, equal to ``jiwer``.

WER = (S + D + I) / N: the fewest word substitutions, deletions and insertions that turn the
reference into the hypothesis, over the number of reference words N. Computed over a whole set, the
errors and the words are summed first (as ``jiwer`` does), so long utterances weigh more. It can exceed
1 (a hypothesis with many inserted words). Before counting, both sides are normalised the same way:
a transcript that writes "Mr." where the reference says "mister" is then still one substitution, but
case and punctuation no longer count as errors.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_PUNCTUATION = re.compile(r"[^\w\s']")


def normalize(text: str) -> list[str]:
    """Lower case, hyphens to spaces, other punctuation (but apostrophes, curly ones made straight)
    removed, split on whitespace."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return _PUNCTUATION.sub("", text.lower().replace("-", " ").replace("\u2019", "'")).split()


@dataclass(frozen=True)
class Alignment:
    """The edit operations of the cheapest alignment, counted; ``hits`` words matched exactly."""

    hits: int
    substitutions: int
    deletions: int
    insertions: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def reference_words(self) -> int:
        return self.hits + self.substitutions + self.deletions

    def __add__(self, other: "Alignment") -> "Alignment":
        return Alignment(self.hits + other.hits, self.substitutions + other.substitutions,
                         self.deletions + other.deletions, self.insertions + other.insertions)


def align(reference: Sequence[str], hypothesis: Sequence[str]) -> Alignment:
    """Levenshtein distance over words by dynamic programming: ``cost[i][j]`` is the cheapest edit of
    the first i reference words into the first j hypothesis words; the backtrace counts each kind of
    edit (ties go to a match or substitution, then a deletion, then an insertion)."""
    n, m = len(reference), len(hypothesis)
    cost = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        cost[i][0] = i
    for j in range(m + 1):
        cost[0][j] = j
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            diagonal = cost[i - 1][j - 1] + (reference[i - 1] != hypothesis[j - 1])
            cost[i][j] = min(diagonal, cost[i - 1][j] + 1, cost[i][j - 1] + 1)
    hits = substitutions = deletions = insertions = 0
    i, j = n, m
    while i > 0 or j > 0:
        if i > 0 and j > 0 and cost[i][j] == cost[i - 1][j - 1] + (reference[i - 1] != hypothesis[j - 1]):
            hits += reference[i - 1] == hypothesis[j - 1]
            substitutions += reference[i - 1] != hypothesis[j - 1]
            i, j = i - 1, j - 1
        elif i > 0 and cost[i][j] == cost[i - 1][j] + 1:
            deletions, i = deletions + 1, i - 1
        else:
            insertions, j = insertions + 1, j - 1
    return Alignment(hits, substitutions, deletions, insertions)


def word_error_rate(references: str | Sequence[str], hypotheses: str | Sequence[str]) -> float:
    """Corpus WER of normalised transcripts: summed edits over summed reference words."""
    if isinstance(references, str) != isinstance(hypotheses, str):
        raise TypeError("references and hypotheses must both be strings or both be lists of strings")
    references = [references] if isinstance(references, str) else list(references)
    hypotheses = [hypotheses] if isinstance(hypotheses, str) else list(hypotheses)
    if len(references) != len(hypotheses) or not references:
        raise ValueError(f"need one hypothesis per reference (and at least one), got {len(references)} references "
                         f"and {len(hypotheses)} hypotheses")
    total = Alignment(0, 0, 0, 0)
    for reference, hypothesis in zip(references, hypotheses):
        total = total + align(normalize(reference), normalize(hypothesis))
    if total.reference_words == 0:
        raise ValueError("the references hold no words: WER is undefined")
    return total.errors / total.reference_words
