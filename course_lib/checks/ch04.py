"""Checks of chapter 04 (attention)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.checks.verdict import (
    UNREADABLE,
    Check,
    CheckFailed,
    expect_fields,
    expect_tensor,
    expect_unchanged,
    generator,
    seeded,
    shape,
)


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


def _torch_mha(d_model: int, n_heads: int) -> nn.MultiheadAttention:
    return seeded(44 + d_model + n_heads, lambda: nn.MultiheadAttention(d_model, n_heads, batch_first=True)).eval()


def _mha_variant(mha: nn.MultiheadAttention, x: torch.Tensor, mask: torch.Tensor | None, scale: str = "d_head",
                 axis: int = -1, merge_transposed: bool = True) -> torch.Tensor:
    """Multi-head attention from ``mha``'s weights, written out, with one step optionally wrong."""
    b, t, d = x.shape
    h = mha.num_heads
    q, k, v = (F.linear(x, w, bias).view(b, t, h, d // h).transpose(1, 2)
               for w, bias in zip(mha.in_proj_weight.chunk(3), mha.in_proj_bias.chunk(3)))
    scores = q @ k.transpose(-2, -1) / {"d_head": (d // h) ** 0.5, "d_model": d**0.5, "none": 1.0}[scale]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    context = scores.softmax(axis) @ v
    merged = context.transpose(1, 2).reshape(b, t, d) if merge_transposed else context.reshape(b, t, d)
    return mha.out_proj(merged)


class MultiHeadAttentionModule(Check):
    """``MyMultiHeadAttention(d_model, n_heads)`` with ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``:
    ``forward(x, mask=None)`` projects, splits into heads, attends (mask (T, T) bool, True = may
    attend), merges and projects; equal to ``nn.MultiheadAttention`` with the same weights. Catches:
    scores not divided by √d_head (or divided by √d_model), softmax over the query axis, heads merged
    without moving them back next to each other (no transpose), an ignored mask."""

    exercise = "4.4"

    def cases(self) -> list:
        g = generator(44)
        cases = []
        for b, t, d, h, masked in ((2, 5, 8, 2, False), (1, 4, 12, 3, True), (3, 6, 16, 4, True)):
            mask = torch.ones(t, t, dtype=torch.bool).tril() if masked else None
            cases.append([torch.randn(b, t, d, generator=g), h, mask])
        return cases

    def probe(self, mha_class, case):
        x, h, mask = case
        d = x.shape[-1]
        reference = _torch_mha(d, h)
        model = mha_class(d, h).eval()
        with torch.no_grad():
            for name, w, bias in zip(("q_proj", "k_proj", "v_proj"), reference.in_proj_weight.chunk(3),
                                     reference.in_proj_bias.chunk(3)):
                getattr(model, name).weight.copy_(w)
                getattr(model, name).bias.copy_(bias)
            model.out_proj.weight.copy_(reference.out_proj.weight)
            model.out_proj.bias.copy_(reference.out_proj.bias)
            return model(x) if mask is None else model(x, mask)

    def judge(self, case, got):
        x, h, mask = case
        reference = _torch_mha(x.shape[-1], h)
        name = f"x {shape(x)}, {h} heads" + (", causal mask" if mask is not None else "")
        with torch.no_grad():
            expected = reference(x, x, x, attn_mask=None if mask is None else ~mask, need_weights=False)[0]
            mistakes = {
                "the scores are not divided by √d_head": _mha_variant(reference, x, mask, scale="none"),
                "the scores are divided by √d_model instead of √d_head": _mha_variant(reference, x, mask, scale="d_model"),
                "softmax runs over the query axis (it must normalise over the keys, dim=-1)":
                    _mha_variant(reference, x, mask, axis=-2),
                "the heads are merged without transposing back to (B, T, heads, d_head) first":
                    _mha_variant(reference, x, mask, merge_transposed=False),
            }
            if mask is not None:
                mistakes["the mask is ignored"] = _mha_variant(reference, x, None)
        expect_tensor(got, expected, name, mistakes=mistakes)


def _gpt_block(d_model: int, n_heads: int) -> nn.Module:
    from course_lib.gpt import Block, GPTConfig

    block = seeded(45 + d_model, lambda: Block(GPTConfig(vocab_size=2, n_embd=d_model, n_head=n_heads)))
    with torch.no_grad():  # LayerNorms away from 1 and 0, so a swapped or missing one shows
        for norm in (block.ln_1, block.ln_2):
            norm.weight.copy_(1 + 0.3 * torch.randn(d_model, generator=generator(d_model)))
            norm.bias.copy_(0.2 * torch.randn(d_model, generator=generator(d_model + 1)))
    return block.eval()


def _block_variant(block: nn.Module, x: torch.Tensor, causal: bool, norm: str = "pre",
                   residual: bool = True) -> torch.Tensor:
    attend = lambda y: block.attn(y, causal=causal)[0]  # noqa: E731
    mlp = lambda y: block.mlp[2](block.mlp[1](block.mlp[0](y)))  # noqa: E731
    if norm == "post":
        x = block.ln_1(x + attend(x))
        return block.ln_2(x + mlp(x))
    if not residual:
        return mlp(block.ln_2(attend(block.ln_1(x))))
    x = x + attend(block.ln_1(x))
    return x + mlp(block.ln_2(x))


class TransformerBlock(Check):
    """``MyBlock(d_model, n_heads, dropout)`` with ``ln_1``, ``attn``, ``ln_2``, ``mlp``, ``dropout``:
    ``forward(x, causal=False)`` = pre-norm residual block, x + dropout(attn(ln_1(x))), then
    x + dropout(mlp(ln_2(x))); equal to ``course_lib.gpt.Block`` with the same weights in eval mode.
    Catches: post-norm (LayerNorm after the addition), no residual connections, ``causal`` ignored,
    dropout left on in ``eval()`` or off in ``train()``."""

    exercise = "4.5"

    def cases(self) -> list:
        g = generator(45)
        return [[torch.randn(2, 5, 8, generator=g), 2, True], [torch.randn(1, 6, 16, generator=g), 4, False],
                [torch.randn(3, 4, 16, generator=g), 4, True]]

    def probe(self, block_class, case):
        x, h, causal = case
        model = block_class(x.shape[-1], h, 0.5)
        missing, unexpected = model.load_state_dict(_gpt_block(x.shape[-1], h).state_dict(), strict=False)
        model.eval()
        with torch.no_grad():
            evaluated = [model(x, causal=causal), model(x, causal=causal)]
            model.train()
            trained = [model(x, causal=causal), model(x, causal=causal)]
        return {"missing": list(missing), "unexpected": list(unexpected), "eval": evaluated, "train": trained}

    def judge(self, case, got):
        x, h, causal = case
        missing, unexpected, evaluated, trained = expect_fields(got, "missing", "unexpected", "eval", "train")
        name = f"x {shape(x)}, {h} heads, causal={causal}"
        if missing or unexpected:
            raise CheckFailed(f"{name}: the block's parameters must be named as in the skeleton (ln_1, attn, ln_2, "
                              f"mlp); missing {missing[:3]}, unexpected {unexpected[:3]}")
        if type(evaluated) is not list or type(trained) is not list or len(evaluated) != 2 or len(trained) != 2:
            raise CheckFailed(UNREADABLE)
        block = _gpt_block(x.shape[-1], h)
        with torch.no_grad():
            expected = _block_variant(block, x, causal)
            mistakes = {"the LayerNorms come after the additions (post-norm); this block is pre-norm: "
                        "x + sublayer(LayerNorm(x))": _block_variant(block, x, causal, norm="post"),
                        "the residual connections (x + …) are missing": _block_variant(block, x, causal, residual=False),
                        f"causal={not causal} is used instead of causal={causal}": _block_variant(block, x, not causal)}
        for out in evaluated + trained:
            expect_tensor(out, expected, name, atol=float("inf"), rtol=0)  # type, shape and dtype only
        if not torch.equal(evaluated[0], evaluated[1]):
            raise CheckFailed(f"{name}: in eval mode two calls gave different outputs; dropout must be off in eval() "
                              "(use self.dropout, an nn.Dropout, not F.dropout with training=True)")
        expect_tensor(evaluated[0], expected, f"{name}, eval mode", mistakes=mistakes)
        if torch.equal(trained[0], trained[1]):
            raise CheckFailed(f"{name}: in train mode two calls gave the same output; apply self.dropout to each "
                              "sublayer's output before adding it to the residual stream")


CHECKS = {c.exercise: c for c in (Attention(), CausalMask(), SplitHeads(), MultiHeadAttentionModule(), TransformerBlock())}
