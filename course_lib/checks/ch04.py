"""Checks of chapter 04 (attention)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from course_lib.checks.verdict import Check, expect_tensor, expect_unchanged, generator


class Attention(Check):
    """``attention(q, k, v, mask=None)`` = softmax(q kᵀ / √d + mask) v, mask bool (True = attend).
    Catches: no 1/√d scaling, softmax over the wrong axis, an ignored mask."""

    exercise = "4.1"

    def cases(self) -> list:
        g = generator(41)
        cases = []
        for b, tq, tk, d, dv in ((1, 1, 1, 1, 1), (2, 3, 5, 4, 6), (3, 4, 4, 8, 8)):
            q, k = torch.randn(b, tq, d, generator=g), torch.randn(b, tk, d, generator=g)
            v = torch.randn(b, tk, dv, generator=g)
            mask = torch.rand(b, tq, tk, generator=g) > 0.3
            mask[..., 0] = True
            cases += [(q, k, v), (q, k, v, mask)]
        return cases


    def judge(self, case, got):
        q, k, v = case[:3]
        described = f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        if len(case) == 4:
            described += " with a mask (True = may attend)"
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=case[3] if len(case) == 4 else None)
        expect_tensor(expect_unchanged(case, got), expected, described)


class CausalMask(Check):
    """``make_causal_mask(T)``: (T, T) bool, True where key j ≤ query i (the diagonal included).
    Catches: the upper triangle, a missing diagonal, a float mask."""

    exercise = "4.2"

    def cases(self) -> list:
        return [1, 2, 5]

    def probe(self, make_causal_mask, size):
        return make_causal_mask(size)

    def judge(self, size, got):
        expect_tensor(got, torch.ones(size, size, dtype=torch.bool).tril(), f"T={size}")


class SplitHeads(Check):
    """``split_heads(x, n_heads)``: (B, T, D) -> (B, n_heads, T, D / n_heads); head h gets features
    h·D/n_heads to (h+1)·D/n_heads − 1 of every token. Catches: a reshape without the transpose,
    heads cut across tokens."""

    exercise = "4.3"

    def cases(self) -> list:
        g = generator(43)
        return [(torch.randn(b, t, d, generator=g), h) for b, t, d, h in ((1, 1, 2, 1), (2, 3, 8, 2), (2, 5, 12, 4))]


    def judge(self, case, got):
        x, h = case
        b, t, d = x.shape
        expected = x.reshape(b, t, h, d // h).transpose(1, 2)
        expect_tensor(expect_unchanged(case, got), expected, f"x of shape {(b, t, d)}, n_heads={h}")


CHECKS = {c.exercise: c for c in (Attention(), CausalMask(), SplitHeads())}
