"""Checks of chapter 12 (a generative LLM: a Llama-style decoder on SmolLM2).

Every check runs on tiny tensors or a tiny random Llama; none loads SmolLM2's weights. While the
chapter is graded, the blocked references of all its exercises are off in the learner's kernel
(RMSNorm.forward, the rotary frequencies, GroupedQueryAttention.forward, generate, ...), so the
probes below call none of them: the cos/sin tables and the weights are made on the trusted side
and shipped in the cases, and 12.6's model is a Llama whose forward is written out here.
"""

from __future__ import annotations

from collections import Counter

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
from course_lib.kv_cache import KVCache
from course_lib.llama import (
    DecoderBlock,
    GroupedQueryAttention,
    Llama,
    LlamaConfig,
    RMSNorm,
    _causal_mask,
    apply_rotary,
    repeat_kv,
    rotary_cos_sin,
)
from course_lib.plain import type_name

# The tiny Llama of 12.5 and 12.6: every size different, so a swapped size shows as a shape error.
TINY = {"vocab_size": 61, "hidden_size": 32, "intermediate_size": 48, "num_layers": 2, "num_heads": 4,
        "num_kv_heads": 2, "head_dim": 8, "max_positions": 64, "rope_theta": 10000.0}


def _expect(got, expected: torch.Tensor, case: str, mistakes=(), atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """:func:`expect_tensor` with ``mistakes`` as a list of (hint, tensor) pairs (a hint may name
    several ways of making one mistake)."""
    try:
        expect_tensor(got, expected, case, atol=atol, rtol=rtol)
    except CheckFailed as failure:
        if str(failure).endswith("values differ from the reference"):
            for hint, wrong in mistakes:
                if wrong.shape == got.shape and torch.allclose(got, wrong.to(got.dtype), atol=atol, rtol=rtol):
                    raise CheckFailed(f"{failure}; they are what you get when {hint}") from None
        raise


# ---------------------------------------------------------------------------------------------
# 12.2 RMSNorm


def _rms_variant(x: torch.Tensor, weight: torch.Tensor, eps: float, mistake: str = "") -> torch.Tensor:
    x32 = x.float()
    dims = tuple(range(x.dim())) if mistake == "all dims" else (-1,)
    if mistake == "layernorm":
        centred = x32 - x32.mean(-1, keepdim=True)
        normed = centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + eps)
    else:
        square = x32.pow(2).mean(dims, keepdim=True)
        normed = {"eps outside": x32 / (square.sqrt() + eps), "no sqrt": x32 / (square + eps)}.get(
            mistake, x32 * torch.rsqrt(square + eps))
    normed = normed.to(x.dtype)
    return normed if mistake == "no weight" else weight * normed


class RmsNorm(Check):
    """``rms_norm(x, weight, eps)`` = x / sqrt(mean(x², last dim) + eps) · weight, computed in float32
    and returned in x's dtype (as transformers' LlamaRMSNorm). Catches: the mean subtracted first
    (LayerNorm without its bias), eps added outside the square root, no square root (divided by
    the mean square), the mean over all dimensions instead of the last, the weight ignored, a
    float64 input returned as float32, the input changed in place."""

    exercise = "12.2"

    def cases(self) -> list:
        g = generator(121)
        cases = []
        for size, eps, dtype in (((5,), 1e-5, torch.float32), ((2, 3, 8), 0.1, torch.float32),
                                 ((4, 6), 1e-6, torch.float64), ((2, 1, 16), 1e-5, torch.float32)):
            x = (torch.randn(size, generator=g) * 0.8 + 0.4).to(dtype)  # a non-zero mean, so LayerNorm differs
            weight = (1 + 0.5 * torch.randn(size[-1], generator=g)).to(dtype)
            cases.append((x, weight, eps))
        return cases

    def judge(self, case, got):
        x, weight, eps = case
        name = f"x {shape(x)} {str(x.dtype).removeprefix('torch.')}, eps={eps}"
        mistakes = [("the mean is subtracted first (that is LayerNorm; RMSNorm divides by the root mean square "
                     "of x itself)", _rms_variant(x, weight, eps, "layernorm")),
                    ("eps is added outside the square root: x / (rms + eps) instead of x / sqrt(mean(x²) + eps)",
                     _rms_variant(x, weight, eps, "eps outside")),
                    ("x is divided by the mean square without the square root", _rms_variant(x, weight, eps, "no sqrt")),
                    ("the mean runs over all dimensions instead of the last (mean(-1, keepdim=True))",
                     _rms_variant(x, weight, eps, "all dims")),
                    ("the weight is not applied (multiply by weight at the end)", _rms_variant(x, weight, eps, "no weight"))]
        _expect(expect_unchanged(case, got), _rms_variant(x, weight, eps), name, mistakes)


# ---------------------------------------------------------------------------------------------
# 12.3 rotary position embeddings


def _frequencies(d: int, theta: float, mistake: str = "") -> torch.Tensor:
    if mistake == "no 2":
        return theta ** (-torch.arange(d // 2, dtype=torch.float32) / d)
    if mistake == "every feature":
        return theta ** (-torch.arange(d, dtype=torch.float32) / d)
    return theta ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)


def _rotary_variant(x: torch.Tensor, positions: torch.Tensor, theta: float, mistake: str) -> torch.Tensor:
    d = x.shape[-1]
    angles = positions.float()[:, None] * _frequencies(d, theta, mistake)
    if mistake == "interleaved":
        cos, sin = angles.cos(), angles.sin()
        even, odd = x[..., 0::2], x[..., 1::2]
        return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)
    if mistake != "every feature":
        angles = torch.cat((angles, angles), dim=-1)
    x1, x2 = x.chunk(2, dim=-1)
    turned = torch.cat((x2, -x1), dim=-1) if mistake == "sign" else torch.cat((-x2, x1), dim=-1)
    return x * angles.cos() + turned * angles.sin()


class Rotary(Check):
    """``rotary(x, positions, theta)`` for x (..., T, d) and positions (T,): the frequencies
    θ^(-2i/d) for the d/2 pairs i, angles = position × frequency laid out [f, f], and
    x·cos + rotate_half(x)·sin with rotate_half(x1, x2) = (-x2, x1), feature i paired with
    i + d/2 (Llama as transformers writes it). Catches: the interleaved pairs (x0, x1), (x2, x3)
    of the RoFormer paper and Meta's original code, rotate_half with the wrong sign (turning the
    other way), the exponent without its 2 (θ^(-i/d)), one frequency per feature instead of per
    pair, the positions ignored (x back unchanged), the input changed in place."""

    exercise = "12.3"

    def cases(self) -> list:
        g = generator(122)
        cases = []
        for size, start, theta in (((2, 3, 4), 0, 10000.0), ((2, 2, 5, 8), 0, 10000.0), ((1, 4, 8), 7, 100.0),
                                   ((3, 1, 4), 12, 100.0), ((1, 2, 2, 8), 30, 10000.0)):
            t = size[-2]
            cases.append((torch.randn(size, generator=g), torch.arange(start, start + t), theta))
        return cases

    def judge(self, case, got):
        x, positions, theta = case
        name = f"x {shape(x)}, positions {positions.tolist()}, theta={theta:g}"
        out = expect_unchanged(case, got)
        expected = apply_rotary(x, *rotary_cos_sin(positions, x.shape[-1], theta))
        if (isinstance(out, torch.Tensor) and out.shape == x.shape and out.dtype == x.dtype
                and torch.allclose(out, x) and not torch.allclose(expected, x)):
            raise CheckFailed(f"{name}: x came back unchanged; turn each pair by position × frequency (the "
                              "positions are the ones given, which need not start at 0)")
        mistakes = [("the pairs are neighbours (x0, x1), (x2, x3), … (the interleaved layout of the RoFormer paper "
                     "and Meta's original code); here feature i pairs with feature i + d/2, as in transformers' Llama",
                     _rotary_variant(x, positions, theta, "interleaved")),
                    ("rotate_half gives (x2, -x1) instead of (-x2, x1): every pair turns the other way",
                     _rotary_variant(x, positions, theta, "sign")),
                    ("the frequencies are θ^(-i/d) for i < d/2: the exponent is -2i/d",
                     _rotary_variant(x, positions, theta, "no 2")),
                    ("each feature i < d gets its own frequency θ^(-i/d); there are d/2 frequencies θ^(-2i/d), one "
                     "per pair, written twice ([f, f])", _rotary_variant(x, positions, theta, "every feature"))]
        _expect(out, expected, name, mistakes)


# ---------------------------------------------------------------------------------------------
# 12.4 repeat_kv


class RepeatKV(Check):
    """``repeat_kv(x, n_rep)``: (B, kv, T, d) -> (B, kv·n_rep, T, d), kv head 0 repeated n_rep times
    first, then kv head 1, … (``repeat_interleave`` on dim 1), so consecutive query heads share a kv
    head. Catches: the heads tiled (kv0, kv1, kv0, kv1, …, as ``x.repeat(1, n_rep, 1, 1)``), the
    copies made along time or features instead of heads, the input changed in place."""

    exercise = "12.4"

    def cases(self) -> list:
        g = generator(123)
        return [(torch.randn(size, generator=g), n_rep) for size, n_rep in
                (((1, 1, 2, 3), 3), ((2, 3, 4, 2), 1), ((2, 2, 3, 4), 3), ((1, 3, 2, 2), 2))]

    def judge(self, case, got):
        x, n_rep = case
        b, kv, t, d = x.shape
        name = f"x {shape(x)}, n_rep={n_rep}"
        out = expect_unchanged(case, got)
        if isinstance(out, torch.Tensor) and n_rep > 1:
            for wrong, axis in (((b, kv, t * n_rep, d), "time (dim 2)"), ((b, kv, t, d * n_rep), "the features (dim 3)")):
                if tuple(out.shape) == wrong:
                    raise CheckFailed(f"{name}: output shape {shape(out)}: the copies were made along {axis}; repeat "
                                      f"the heads (dim 1), giving {(b, kv * n_rep, t, d)}")
        mistakes = [("the kv heads are tiled (kv0, kv1, kv0, kv1, …); repeat each n_rep times in a row "
                     "(kv0, kv0, …, kv1, kv1, …), so each group of consecutive query heads shares one", x.repeat(1, n_rep, 1, 1))]
        _expect(out, x.repeat_interleave(n_rep, dim=1), name, mistakes, atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------
# 12.7 top-p


def _nucleus_variant(logits: torch.Tensor, p: float, mistake: str) -> torch.Tensor:
    """Top-p written out (most probable first, keep while the sum before a token is < p), with one mistake."""
    ordered, order = logits.sort(dim=-1, descending=mistake != "ascending")
    amounts = ordered if mistake == "logits" else ordered.softmax(dim=-1)
    cumulative = amounts.cumsum(dim=-1)
    keep = cumulative <= p if mistake == "crossing" else cumulative - amounts < p
    keep = torch.zeros_like(keep).scatter(1, order, keep)
    return logits.masked_fill(~keep, float("-inf"))


class TopP(Check):
    """``top_p(logits, p)`` for (B, V) logits: keep the smallest set of most probable tokens whose
    probabilities add up to at least p (always at least the most probable one), every other logit
    -inf, the kept ones unchanged: exactly ``course_lib.sampling.top_p_filter``. Catches: dropping
    the token that carries the sum past p, cumulative sums of logits instead of probabilities,
    keeping the least probable tokens, losing the most probable token when it alone exceeds p (a
    row of -inf), returning probabilities instead of logits, the input changed in place."""

    exercise = "12.7"

    def cases(self) -> list:
        g = generator(124)
        a = torch.randn(2, 8, generator=g) * 1.5
        b = torch.randn(3, 12, generator=g) * 2
        c = torch.tensor([[3.0, 0.5, 0.0, -1.0, 1.0, -2.0], [0.25, 0.1, -0.3, 0.45, 0.0, -0.15]])
        d = torch.randn(1, 20, generator=g)
        return [(a, 0.9), (b, 0.6), (c, 0.3), (d, 0.75)]

    def judge(self, case, got):
        from course_lib.sampling import top_p_filter

        logits, p = case
        name = f"logits {shape(logits)}, p={p}"
        out = expect_unchanged(case, got)
        expected = top_p_filter(logits, p)
        if not isinstance(out, torch.Tensor):
            raise CheckFailed(f"{name}: expected a torch.Tensor, got {type_name(out)}")
        if out.shape != expected.shape or out.dtype != expected.dtype:
            raise CheckFailed(f"{name}: expected {expected.dtype} {shape(expected)}, got {out.dtype} {shape(out)}")
        if (torch.isneginf(out) | torch.isnan(out)).all(dim=-1).any():
            raise CheckFailed(f"{name}: a row came back with every logit -inf (nothing left to sample); the most "
                              "probable token must always be kept, even when its probability alone exceeds p")
        kept, finite = torch.isfinite(expected), torch.isfinite(out)
        if (not torch.equal(out, expected) and finite.any() and out[finite].min() >= 0 and out[finite].max() <= 1
                and not (expected[kept].min() >= 0 and expected[kept].max() <= 1)):
            raise CheckFailed(f"{name}: the output holds probabilities; return the logits, the kept ones unchanged "
                              "and -inf for the removed ones (softmax is only used to decide which to keep)")
        mistakes = [("the token whose probability carries the sum past p is dropped (keep a token while the sum of the "
                     "probabilities before it is < p)", _nucleus_variant(logits, p, "crossing")),
                    ("the cumulative sum runs over the logits instead of the probabilities (softmax first)",
                     _nucleus_variant(logits, p, "logits")),
                    ("the least probable tokens are kept: sort by descending probability",
                     _nucleus_variant(logits, p, "ascending"))]
        _expect(out, expected, name, mistakes, atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------
# 12.1 one BPE merge step


def _merge(ids: list[int], pair: tuple[int, int], new_id: int, mistake: str = "") -> list[int]:
    if mistake == "overlap":  # every start of the pair becomes new_id, the token after each start dropped
        starts = {i for i in range(len(ids) - 1) if (ids[i], ids[i + 1]) == pair}
        return [new_id if i in starts else t for i, t in enumerate(ids) if i in starts or i - 1 not in starts]
    merged, i, done = [], 0, False
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair and not done:
            merged.append(new_id)
            i += 2
            done = mistake == "first only"
        else:
            merged.append(ids[i])
            i += 1
    return merged


def _best_pair(ids: list[int], mistake: str = "") -> tuple[tuple[int, int], int]:
    step = 2 if mistake == "step 2" else 1
    counts = Counter(zip(ids[::step], ids[1::step])) if step == 2 else Counter(zip(ids, ids[1:]))
    if mistake == "first seen":
        pair = counts.most_common(1)[0][0]
    else:
        pair = min(counts, key=lambda q: (-counts[q], q))
    return pair, counts[pair]


class BpeMergeStep(Check):
    """``bpe_step(ids, new_id)`` -> ``(pair, merged)``: count the adjacent pairs of the list ``ids``,
    take the most frequent (ties: the smallest pair, i.e. min over (-count, pair)) and return it
    with a new list where every occurrence, scanned left to right without overlapping, is replaced
    by ``new_id`` ([5, 5, 5] -> [new, 5]). Catches: only the first occurrence merged, overlapping
    occurrences merged, ties broken by the first pair seen (``Counter.most_common``), pairs counted
    only at every other position, the merged ids as a tuple, ``ids`` changed in place."""

    exercise = "12.1"

    def cases(self) -> list:
        return [([1, 2, 3, 1, 2], 256), ([5, 5, 5], 9), ([5, 5, 5, 5], 9), ([3, 1, 2, 3, 1, 2], 7),
                ([1, 9, 9, 2, 9, 9], 10), ([1, 2, 3, 2, 3, 9], 11), (list("hello hello world".encode()), 256)]

    def probe(self, bpe_step, case):
        ids, new_id = case
        ids = list(ids)
        return {"out": bpe_step(ids, new_id), "ids": ids}

    def judge(self, case, got):
        ids, new_id = case
        name = f"ids {ids}, new_id={new_id}"
        out, after = expect_fields(got, "out", "ids")
        if after != ids:
            raise CheckFailed(f"{name}: ids was changed in place; build a new list")
        if type(out) not in (tuple, list) or len(out) != 2:
            raise CheckFailed(f"{name}: expected a tuple (pair, merged), got {type_name(out)}")
        pair, merged = out
        if type(pair) not in (tuple, list) or len(pair) != 2 or not all(type(i) is int for i in pair):
            raise CheckFailed(f"{name}: the pair must be a tuple of two ints, got {type_name(pair)}")
        best, count = _best_pair(ids)
        counts = Counter(zip(ids, ids[1:]))
        pair = tuple(pair)
        if pair != best:
            times = lambda n: "once" if n == 1 else f"{n} times"  # noqa: E731
            message = f"{name}: got the pair {pair}, expected {best}, the most frequent adjacent pair ({times(count)})"
            if counts[pair] == count:
                message += (f"; {pair} occurs as often, and ties go to the smallest pair (min over (-count, pair)), "
                            "not to the first one seen")
            elif pair == _best_pair(ids, "step 2")[0]:
                message += ("; the pairs were counted only at every other position: every adjacent pair "
                            "(ids[i], ids[i + 1]) counts, for i = 0, 1, 2, …")
            else:
                message += f"; {pair} occurs {times(counts[pair])}" if counts[pair] else f"; {pair} never occurs"
            raise CheckFailed(message)
        if type(merged) is not list or not all(type(i) is int for i in merged):
            found = type_name(merged) if type(merged) is not list else "a list holding " + next(
                type_name(i) for i in merged if type(i) is not int)
            raise CheckFailed(f"{name}: the merged ids must be a list of ints, got {found}")
        expected = _merge(ids, best, new_id)
        if merged != expected:
            message = f"{name}: merging {best} gave {merged}, expected {expected}"
            if merged == _merge(ids, best, new_id, "first only"):
                message += "; only the first occurrence was merged: replace every occurrence, left to right"
            elif merged == _merge(ids, best, new_id, "overlap"):
                message += ("; occurrences overlapped: scan left to right and skip past each merged pair, so "
                            "[a, a, a] gives [new, a]")
            raise CheckFailed(message)


# ---------------------------------------------------------------------------------------------
# 12.5 grouped-query attention with a KV cache


def _attention_weights(sizes: dict, seed: int) -> dict:
    """A seeded reference GroupedQueryAttention's weights, q and k enlarged so attention is sharp
    enough that every mistake shows."""
    reference = seeded(seed, lambda: GroupedQueryAttention(LlamaConfig(**sizes)))
    weights = {name: t.detach().clone() for name, t in reference.state_dict().items()}
    for name in ("q_proj.weight", "k_proj.weight"):
        weights[name] = weights[name] * 3
    return weights


# The probe's protocol: a label and the number of tokens fed in each call (the first with an empty cache).
_PROTOCOL = (("full", (6,)), ("steps", (3, 1, 1, 1)), ("chunk", (2, 4)))


def _attention_variant(case: dict, x: torch.Tensor, start: int, end: int, rotate_keys: bool = True,
                       tile: bool = False, mask: str = "causal", use_cache: bool = True) -> torch.Tensor:
    """The output for positions start..end-1 of ``x``, written out, with one mistake optionally made."""
    sizes, w = case["config"], case["weights"]
    heads, kv_heads, hd = sizes["num_heads"], sizes["num_kv_heads"], sizes["head_dim"]
    b, t = x.shape[0], end - start
    first = start if not use_cache else 0
    cos, sin = case["cos"], case["sin"]
    q = F.linear(x[:, start:end], w["q_proj.weight"]).view(b, t, heads, hd).transpose(1, 2)
    k = F.linear(x[:, first:end], w["k_proj.weight"]).view(b, end - first, kv_heads, hd).transpose(1, 2)
    v = F.linear(x[:, first:end], w["v_proj.weight"]).view(b, end - first, kv_heads, hd).transpose(1, 2)
    q = apply_rotary(q, cos[start:end], sin[start:end])
    if rotate_keys:
        k = apply_rotary(k, cos[first:end], sin[first:end])
    rep = heads // kv_heads
    k, v = (z.repeat(1, rep, 1, 1) if tile else z.repeat_interleave(rep, dim=1) for z in (k, v))
    keys = end - first
    allowed = {"causal": torch.ones(t, keys, dtype=torch.bool).tril(keys - t),
               "top-left": torch.ones(t, keys, dtype=torch.bool).tril(),
               "top-left when T > 1": torch.ones(t, keys, dtype=torch.bool).tril(0 if t > 1 else keys - t),
               "none": torch.ones(t, keys, dtype=torch.bool)}[mask]
    scores = (q @ k.transpose(-2, -1) / hd**0.5).masked_fill(~allowed, float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, heads * hd)
    return F.linear(out, w["o_proj.weight"])


class CachedAttention(Check):
    """``MyCachedAttention(config, layer=0)`` with ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` (no bias):
    ``forward(x, cos, sin, cache=None)`` projects, splits into heads (num_heads for queries,
    num_kv_heads for keys and values), rotates q and k with ``apply_rotary``, with a cache writes and
    reads back the keys and values (``cache.update(self.layer, k, v)``; the caller advances it),
    repeats k and v to the query heads in groups, attends causally (query i of the T new ones sees
    every cached key and the new ones up to its own position), merges the heads and applies
    ``o_proj``; equal to ``course_lib.llama.GroupedQueryAttention`` with the same weights. The probe
    runs a 6-token sequence whole, then with a cache as a 3-token prefill and three single tokens,
    then as a 2-token prefill and a 4-token chunk. Catches: parameters named or sized unlike the
    reference, keys not rotated, kv heads tiled instead of grouped, no causal mask, the cache
    ignored, the causal mask aligned to the top-left once the cache holds earlier positions
    (``is_causal=True`` with cached keys)."""

    exercise = "12.5"

    def cases(self) -> list:
        g = generator(126)
        cases = []
        # the second: 3 query heads per kv head, and hidden_size ≠ num_heads · head_dim
        for sizes, batch in ((TINY, 2), ({**TINY, "hidden_size": 20, "num_heads": 6, "head_dim": 4}, 1)):
            cos, sin = rotary_cos_sin(torch.arange(6), sizes["head_dim"], sizes["rope_theta"])
            cases.append({"config": sizes, "weights": _attention_weights(sizes, 126 + sizes["hidden_size"]),
                          "x": torch.randn(batch, 6, sizes["hidden_size"], generator=g), "cos": cos, "sin": sin})
        return cases

    def probe(self, attention_class, case):
        config = LlamaConfig(**case["config"])
        x, cos, sin = case["x"], case["cos"], case["sin"]
        model = attention_class(config, 1)
        own = {name: tuple(t.shape) for name, t in model.state_dict().items()}
        weights = case["weights"]
        wrong = [name for name in own if name in weights and own[name] != tuple(weights[name].shape)]
        got = {"missing": sorted(set(weights) - set(own)), "unexpected": sorted(set(own) - set(weights)),
               "wrong_shapes": [[name, list(own[name]), list(weights[name].shape)] for name in wrong]}
        if got["missing"] or got["unexpected"] or wrong:
            return got
        model.load_state_dict(weights)
        model.eval()
        with torch.no_grad():
            for label, lengths in _PROTOCOL:
                if label == "full":
                    got[label] = [model(x, cos, sin)]
                    continue
                cache = KVCache(2, x.shape[0], config.num_kv_heads, 8, config.head_dim)
                got[label], start = [], 0
                for t in lengths:
                    end = start + t
                    got[label].append(model(x[:, start:end], cos[start:end], sin[start:end], cache))
                    cache.advance(t)
                    start = end
        return got

    def judge(self, case, got):
        sizes, x = case["config"], case["x"]
        missing, unexpected, wrong = expect_fields(got, "missing", "unexpected", "wrong_shapes")
        what = (f"{sizes['num_heads']} query heads, {sizes['num_kv_heads']} kv heads of {sizes['head_dim']}, "
                f"hidden_size {sizes['hidden_size']}")
        if missing or unexpected:
            raise CheckFailed(f"{what}: the parameters must be named as the reference's: q_proj, k_proj, v_proj, "
                              f"o_proj (nn.Linear, bias=False); missing {missing[:4]}, unexpected {unexpected[:4]}")
        if wrong:
            name, own, expected = wrong[0]
            raise CheckFailed(f"{what}: {name} has shape {tuple(own)}, expected {tuple(expected)} (q_proj: hidden_size → "
                              "num_heads·head_dim, k_proj and v_proj: hidden_size → num_kv_heads·head_dim, o_proj back)")
        config = LlamaConfig(**sizes)
        reference = GroupedQueryAttention(config, 1)
        reference.load_state_dict(case["weights"])
        reference.eval()
        cos, sin = case["cos"], case["sin"]
        with torch.no_grad():
            for label, lengths in _PROTOCOL:
                outputs = got.get(label)
                if type(outputs) is not list or len(outputs) != len(lengths):
                    raise CheckFailed(UNREADABLE)
                cache = None if label == "full" else KVCache(2, x.shape[0], config.num_kv_heads, 8, config.head_dim)
                start = 0
                for t, out in zip(lengths, outputs):
                    end = start + t
                    if label == "full":
                        name = f"{what}: x {shape(x)} without a cache"
                    elif start == 0:
                        name = f"{what}: with a cache, a {t}-token prefill"
                    else:
                        name = (f"{what}: with a cache holding {start} positions, "
                                + (f"the token at position {start}" if t == 1 else f"a chunk of {t} tokens at positions "
                                   f"{start}..{end - 1}"))
                    expected = reference(x[:, start:end], cos[start:end], sin[start:end], cache)
                    if cache is not None:
                        cache.advance(t)
                    variant = lambda **kw: _attention_variant(case, x, start, end, **kw)  # noqa: B023, E731
                    top_left = ("the causal mask is aligned to the top-left (is_causal=True with cached keys): query i "
                                "of the T new tokens must see every cached key and the new ones up to its own position "
                                "(key j allowed when j ≤ i + cached length)")
                    mistakes = [("the keys are not rotated (apply_rotary to q and to k)", variant(rotate_keys=False)),
                                ("the kv heads are tiled (kv0, kv1, kv0, …) instead of repeated in groups (kv0, kv0, "
                                 "kv1, kv1, …): consecutive query heads share a kv head", variant(tile=True)),
                                ("there is no causal mask: a token sees the tokens after it", variant(mask="none")),
                                ("the cache is not used: the new tokens attend only to themselves; write and read back "
                                 "the keys and values with k, v = cache.update(self.layer, k, v)", variant(use_cache=False)),
                                (top_left, variant(mask="top-left")), (top_left, variant(mask="top-left when T > 1"))]
                    _expect(out, expected, name, mistakes)
                    start = end


# ---------------------------------------------------------------------------------------------
# 12.6 greedy decoding with a KV cache


class _WatchedCache(KVCache):
    """A KVCache that remembers whether a write went past its end."""

    overflowed = False

    def update(self, layer, k, v):
        if self.length + k.shape[-2] > self.max_len:
            self.overflowed = True
        return super().update(layer, k, v)


def _rms(x: torch.Tensor, norm: RMSNorm) -> torch.Tensor:
    x32 = x.float()
    return norm.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + norm.eps)).to(x.dtype)


class _DecodingLlama(Llama):
    """A ``course_lib.llama.Llama`` whose forward is written out here, so it runs while the chapter's
    references are switched off; it records each call's (tokens fed, cache length before) and the
    caches made by ``new_cache``."""

    def __init__(self, config: LlamaConfig) -> None:
        nn.Module.__init__(self)
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderBlock(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.lm_head.weight = self.embed_tokens.weight
        d = config.head_dim
        self.inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
        self.calls: list[list[int]] = []
        self.caches: list[_WatchedCache] = []

    def new_cache(self, batch=1, max_len=None, dtype=None):
        c = self.config
        cache = _WatchedCache(c.num_layers, batch, c.num_kv_heads, max_len or c.max_positions, c.head_dim,
                              dtype=dtype or self.embed_tokens.weight.dtype)
        self.caches.append(cache)
        return cache

    def forward(self, input_ids, cache=None, attention_mask=None):
        b, t = input_ids.shape
        self.calls.append([int(t), -1 if cache is None else int(cache.length)])
        start = cache.length if cache is not None else 0
        angles = torch.arange(start, start + t).float()[:, None] * self.inv_freq
        angles = torch.cat((angles, angles), dim=-1)
        cos, sin = angles.cos(), angles.sin()
        x = self.embed_tokens(input_ids)
        for block in self.layers:
            a = block.self_attn
            h = _rms(x, block.input_layernorm)
            q = a.q_proj(h).view(b, t, a.num_heads, a.head_dim).transpose(1, 2)
            k = a.k_proj(h).view(b, t, a.num_kv_heads, a.head_dim).transpose(1, 2)
            v = a.v_proj(h).view(b, t, a.num_kv_heads, a.head_dim).transpose(1, 2)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
            if cache is not None:
                k, v = cache.update(a.layer, k, v)
            rep = a.num_heads // a.num_kv_heads
            k, v = repeat_kv(k, rep), repeat_kv(v, rep)
            allowed = _causal_mask(t, k.shape[-2], x.device)
            if attention_mask is not None:
                allowed = allowed & attention_mask.bool()[:, None, None, :]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
            x = x + a.o_proj(out.transpose(1, 2).reshape(b, t, a.num_heads * a.head_dim))
            x = x + block.mlp(_rms(x, block.post_attention_layernorm))
        if cache is not None:
            cache.advance(t)
        return self.lm_head(_rms(x, self.norm))


def _llama_weights() -> dict:
    """A seeded tiny Llama's weights, changed so that greedy decoding moves from token to token (with
    its tied embeddings and RMSNorm weights of 1, a random Llama mostly repeats its last token):
    random RMSNorm weights, and the attention and MLP three times stronger."""
    model = seeded(127, lambda: Llama(LlamaConfig(**TINY)))
    weights = {name: t.detach().clone() for name, t in model.state_dict().items() if name != "lm_head.weight"}
    g = generator(127)
    for name in weights:
        if name.endswith("norm.weight"):
            weights[name] = torch.randn(weights[name].shape, generator=g) * 1.5
        elif name.endswith(("q_proj.weight", "k_proj.weight", "o_proj.weight", "down_proj.weight")):
            weights[name] = weights[name] * 3
    return weights


def _reference_llama(weights: dict) -> Llama:
    model = seeded(0, lambda: Llama(LlamaConfig(**TINY)))  # not from_state_dict: its meta device costs a second
    model.load_state_dict({**weights, "lm_head.weight": weights["embed_tokens.weight"]})
    return model.eval()


class CachedGreedy(Check):
    """``greedy_with_cache(model, input_ids, max_new_tokens)`` -> the new token ids as a list of ints,
    for a ``course_lib.llama.Llama`` and one prompt (1, T): make ``model.new_cache(1, T +
    max_new_tokens)``, run the whole prompt through the model with it once (prefill), then feed
    only the newest token each step, taking the argmax of the last position's logits; the same
    tokens as ``course_lib.generate.generate``. The probe's model records every call. Catches: the
    whole sequence fed again at every step (the cache overflows), the prompt never put in the
    cache (no prefill), the cache advanced by hand on top of the model's own advance, the cache
    never used, the next token taken from the first position's logits, a tensor instead of a list."""

    exercise = "12.6"

    def cases(self) -> list:
        g = generator(127)
        weights = _llama_weights()
        return [{"weights": weights, "input_ids": torch.randint(0, TINY["vocab_size"], (1, 5), generator=g), "new": 8},
                {"weights": weights, "input_ids": torch.randint(0, TINY["vocab_size"], (1, 1), generator=g), "new": 6}]

    def probe(self, greedy_with_cache, case):
        model = _DecodingLlama(LlamaConfig(**TINY))
        model.load_state_dict({**case["weights"], "lm_head.weight": case["weights"]["embed_tokens.weight"]})
        model.eval()
        try:
            tokens = greedy_with_cache(model, case["input_ids"].clone(), case["new"])
        except Exception:
            if not any(cache.overflowed for cache in model.caches):
                raise
            tokens = None
        return {"tokens": tokens, "calls": model.calls, "overflow": any(c.overflowed for c in model.caches)}

    def judge(self, case, got):
        from course_lib.generate import generate

        ids, new = case["input_ids"], case["new"]
        prompt = ids.shape[1]
        name = f"a prompt of {prompt} token{'s' * (prompt > 1)}, {new} new tokens"
        tokens, calls, overflow = expect_fields(got, "tokens", "calls", "overflow")
        if type(calls) is not list or not all(type(c) is list and len(c) == 2 and all(type(i) is int for i in c)
                                              for c in calls):
            raise CheckFailed(UNREADABLE)
        cached = [c for c in calls if c[1] >= 0]
        written = 0
        for fed, length in cached:
            if length != written:
                raise CheckFailed(f"{name}: the cache held {length} positions where {written} had been fed; the model "
                                  "advances the cache itself (Llama.forward calls cache.advance), so do not advance it "
                                  "again, and use one fresh cache per prompt")
            written += fed
        if overflow or any(fed > 1 for fed, _ in cached[1:]):
            raise CheckFailed(f"{name}: " + ("the cache overflowed: " if overflow else "")
                              + "after the prefill, a call fed more than one token with the cache; feed only the "
                              "newest token once the prompt is in the cache (its keys and values are there already)")
        if not cached:
            raise CheckFailed(f"{name}: the model was never given the cache; call model(ids, cache=cache)")
        if cached[0][0] != prompt:
            fed = f"{cached[0][0]} token{'s' * (cached[0][0] != 1)}"
            raise CheckFailed(f"{name}: the first call with the cache fed {fed}, so the prompt never "
                              f"went into the cache; prefill: run the whole prompt ({prompt} tokens) through the model "
                              "with the cache once, then feed one token at a time")
        if type(tokens) is not list or not all(type(i) is int for i in tokens):
            found = type_name(tokens) if type(tokens) is not list else "a list holding " + next(
                type_name(i) for i in tokens if type(i) is not int)
            raise CheckFailed(f"{name}: expected a list of ints (the new token ids: int(token) or .tolist()), got {found}")
        model = _reference_llama(case["weights"])
        expected = generate(model, ids, new)
        if tokens == expected:
            return
        message = f"{name}: got {tokens[:12]}, expected {expected}"
        if len(tokens) != new:
            message += f" ({len(tokens)} tokens instead of {new})"
        else:
            with torch.no_grad():
                cache = model.new_cache(1, prompt + new)
                first = [int(model(ids, cache)[0, 0].argmax())]
                while len(first) < new:
                    first.append(int(model(torch.tensor([[first[-1]]]), cache)[0, -1].argmax()))
            if tokens == first:
                message += "; the next token came from the first position's logits: take the last (logits[:, -1])"
        raise CheckFailed(message)


CHECKS = {c.exercise: c for c in (RmsNorm(), Rotary(), RepeatKV(), TopP(), BpeMergeStep(), CachedAttention(),
                                  CachedGreedy())}
