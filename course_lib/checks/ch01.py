"""Checks of chapter 01 (tensors)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from course_lib.checks.verdict import Check, call, expect_tensor, expect_unchanged, generator

ZERO_ROW = "x with a row of zeros (it must stay zero)"
EMPTY_ROW = "a row with no kept entry (must give 0)"


class PairwiseSqDistances(Check):
    """``pairwise_sq_distances(x, y)``: x (N, D), y (M, D) -> (N, M) squared Euclidean distances.
    Catches: the (M, N) transpose, distances instead of squared distances."""

    exercise = "1.1"

    def cases(self) -> list:
        g = generator(12)
        return [(torch.randn(n, d, generator=g), torch.randn(m, d, generator=g))
                for n, m, d in ((1, 1, 1), (4, 3, 2), (2, 6, 5), (5, 5, 3))]


    def judge(self, case, got):
        x, y = case
        expect_tensor(expect_unchanged(case, got), torch.cdist(x, y) ** 2,
                      f"x of shape {tuple(x.shape)}, y of shape {tuple(y.shape)}", atol=1e-4)


class NormalizeRows(Check):
    """``normalize_rows(x)`` divides each row of a 2-D tensor by its L2 norm; zero rows stay zero.
    Catches: the norm over columns, 0/0 = NaN for a zero row, dividing the input in place."""

    exercise = "1.2"

    def cases(self) -> list:
        g = generator(11)
        cases = [{"args": (torch.randn(rows, cols, generator=g) * 3,), "about": f"x of shape {(rows, cols)}"}
                 for rows, cols in ((1, 1), (3, 5), (7, 2), (4, 4))]
        x = torch.randn(3, 4, generator=g)
        x[1] = 0
        return [*cases, {"args": (x,), "about": ZERO_ROW}]

    def probe(self, normalize_rows, case):
        return call(normalize_rows, *case["args"])

    def judge(self, case, got):
        (x,) = case["args"]
        expect_tensor(expect_unchanged(case["args"], got), F.normalize(x, dim=1), case["about"])


class MaskedMean(Check):
    """``masked_mean(x, mask)``: x (B, T), bool mask (B, T) -> (B,) mean of the kept entries,
    0 for a row whose mask is all False. Catches: the mean over all T positions, 0/0 = NaN for a
    row with nothing kept."""

    exercise = "1.3"

    def cases(self) -> list:
        g = generator(13)
        cases = []
        for b, t in ((1, 1), (3, 5), (4, 2)):
            x = torch.randn(b, t, generator=g)
            mask = torch.rand(b, t, generator=g) > 0.4
            mask[:, 0] = True
            cases.append({"args": (x, mask), "about": f"x of shape {(b, t)}"})
        x = torch.randn(2, 3, generator=g)
        mask = torch.tensor([[True, False, True], [False, False, False]])
        return [*cases, {"args": (x, mask), "about": EMPTY_ROW}]

    def probe(self, masked_mean, case):
        return call(masked_mean, *case["args"])

    def judge(self, case, got):
        x, mask = case["args"]
        expected = (x * mask).sum(1) / mask.sum(1).clamp_min(1)
        expect_tensor(expect_unchanged(case["args"], got), expected, case["about"])


class BatchedScores(Check):
    """``batched_scores(q, k)``: q (B, Tq, D), k (B, Tk, D) -> (B, Tq, Tk), q @ kᵀ per batch.
    Catches: the (B, Tk, Tq) transpose, a 1/√D scaling that belongs to attention, not here."""

    exercise = "1.4"

    def cases(self) -> list:
        g = generator(14)
        return [(torch.randn(b, tq, d, generator=g), torch.randn(b, tk, d, generator=g))
                for b, tq, tk, d in ((1, 1, 1, 1), (2, 3, 4, 5), (3, 4, 2, 8))]


    def judge(self, case, got):
        q, k = case
        expect_tensor(expect_unchanged(case, got), torch.bmm(q, k.transpose(1, 2)),
                      f"q of shape {tuple(q.shape)}, k of shape {tuple(k.shape)}")


CHECKS = {c.exercise: c for c in (PairwiseSqDistances(), NormalizeRows(), MaskedMean(), BatchedScores())}
