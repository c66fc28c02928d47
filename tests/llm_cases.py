"""Solutions and plausible wrong answers of chapter 12's exercises (a Llama-style decoder), written
apart from the notebook's and course_lib's code; ``test_grading`` runs them with the other
exercises'. Each entry: exercise id -> (check, solution, [(wrong answer, expected part of its
message)], untouched stub)."""

from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn

from course_lib import grading
from course_lib.llama import apply_rotary  # given to the learner in 12.5, as in the notebook


def _stub(*args, **kwargs):
    raise NotImplementedError("Exercise")


# ----------------------------------------------------------------------------------------------
# 12.2: rms_norm


def _rms_norm(x, weight, eps, mistake=None):
    h = x.to(torch.float32)
    if mistake == "layernorm":
        h = F.layer_norm(h, h.shape[-1:], eps=eps)
    elif mistake == "eps outside":
        h = h / (torch.sqrt((h * h).mean(dim=-1, keepdim=True)) + eps)
    elif mistake == "no sqrt":
        h = h / ((h * h).mean(dim=-1, keepdim=True) + eps)
    elif mistake == "all dims":
        h = h / torch.sqrt((h * h).mean() + eps)
    else:
        h = h / torch.sqrt((h * h).mean(dim=-1, keepdim=True) + eps)
    if mistake == "float32 out":
        return weight.float() * h
    h = h.to(x.dtype)
    return h if mistake == "no weight" else weight * h


# ----------------------------------------------------------------------------------------------
# 12.3: rotary


def _rotary(x, positions, theta, mistake=None):
    d = x.shape[-1]
    i = torch.arange(d // 2, dtype=torch.float32)
    exponent = i / d if mistake == "no 2" else 2 * i / d
    if mistake == "every feature":
        exponent = torch.arange(d, dtype=torch.float32) / d
    where = torch.zeros_like(positions) if mistake == "positions ignored" else positions
    angle = where.to(torch.float32)[:, None] * theta ** (-exponent)
    if mistake == "interleaved":  # Meta's original: consecutive features as one complex number
        pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], d // 2, 2).contiguous())
        return torch.view_as_real(pairs * torch.polar(torch.ones_like(angle), angle)).flatten(-2)
    if mistake != "every feature":
        angle = torch.cat([angle, angle], dim=-1)
    first, second = x[..., : d // 2], x[..., d // 2:]
    turned = torch.cat([second, -first], dim=-1) if mistake == "sign" else torch.cat([-second, first], dim=-1)
    return x * torch.cos(angle) + turned * torch.sin(angle)


# ----------------------------------------------------------------------------------------------
# 12.4: repeat_kv


def _repeat_kv(x, n_rep):
    b, kv, t, d = x.shape
    return x[:, :, None].expand(b, kv, n_rep, t, d).reshape(b, kv * n_rep, t, d)


# ----------------------------------------------------------------------------------------------
# 12.7: top_p


def _top_p(logits, p, mistake=None):
    probs = logits.softmax(dim=-1)
    if mistake == "top dropped":  # the old shift-right recipe without keeping the first token
        ranked, order = probs.sort(dim=-1, descending=True)
        remove = ranked.cumsum(dim=-1) > p
        remove[..., 1:] = remove[..., :-1].clone()
        return logits.masked_fill(torch.zeros_like(remove).scatter(-1, order, remove), float("-inf"))
    source = logits if mistake == "logits" else probs
    ranked, order = source.sort(dim=-1, descending=mistake != "ascending")
    running = ranked.cumsum(dim=-1)
    keep_ranked = running <= p if mistake == "crossing" else running - ranked < p
    keep = torch.zeros_like(keep_ranked).scatter(-1, order, keep_ranked)
    if mistake == "probabilities":
        return probs.masked_fill(~keep, 0.0)
    if mistake == "in place":
        return logits.masked_fill_(~keep, float("-inf"))
    return logits.masked_fill(~keep, float("-inf"))


# ----------------------------------------------------------------------------------------------
# 12.1: bpe_step


def _bpe_step(ids, new_id, mistake=None):
    if mistake == "step 2":
        counts = Counter((ids[i], ids[i + 1]) for i in range(0, len(ids) - 1, 2))
    else:
        counts = Counter((ids[i], ids[i + 1]) for i in range(len(ids) - 1))
    if mistake == "first seen":
        pair = counts.most_common(1)[0][0]
    else:
        top = max(counts.values())
        pair = sorted(q for q, c in counts.items() if c == top)[0]
    if mistake == "overlap":  # marks every start of the pair, overlapping ones too
        starts = [i for i in range(len(ids) - 1) if (ids[i], ids[i + 1]) == pair]
        merged = []
        for i, token in enumerate(ids):
            if i in starts:
                merged.append(new_id)
            elif i - 1 not in starts:
                merged.append(token)
        return pair, merged
    merged, i, merges = [], 0, 0
    while i < len(ids):
        if ids[i:i + 2] == list(pair) and not (mistake == "first only" and merges):
            merged.append(new_id)
            merges += 1
            i += 2
        else:
            merged.append(ids[i])
            i += 1
    if mistake == "in place":
        ids[:] = merged
    return pair, tuple(merged) if mistake == "tuple" else merged


# ----------------------------------------------------------------------------------------------
# 12.5: MyCachedAttention


def _cached_attention_class(rotate_keys=True, tile=False, mask="causal", use_cache=True, names="right"):
    class CachedAttention(nn.Module):
        def __init__(self, config, layer=0):
            super().__init__()
            self.layer = layer
            self.heads, self.kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
            bias = names == "bias"
            self.q_proj = nn.Linear(config.hidden_size, self.heads * self.head_dim, bias=bias)
            self.k_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, bias=bias)
            self.v_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, bias=bias)
            out_in = config.hidden_size if names == "o_proj square" else self.heads * self.head_dim
            self.o_proj = nn.Linear(out_in, config.hidden_size, bias=bias)

        def forward(self, x, cos, sin, cache=None):
            b, t, _ = x.shape
            q = self.q_proj(x).reshape(b, t, self.heads, self.head_dim).permute(0, 2, 1, 3)
            k = self.k_proj(x).reshape(b, t, self.kv_heads, self.head_dim).permute(0, 2, 1, 3)
            v = self.v_proj(x).reshape(b, t, self.kv_heads, self.head_dim).permute(0, 2, 1, 3)
            q = apply_rotary(q, cos, sin)
            if rotate_keys:
                k = apply_rotary(k, cos, sin)
            if cache is not None and use_cache:
                k, v = cache.update(self.layer, k, v)
            group = self.heads // self.kv_heads
            if tile:
                k, v = k.repeat(1, group, 1, 1), v.repeat(1, group, 1, 1)
            else:
                k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
            s = k.shape[2]
            if mask == "causal":
                allowed = torch.arange(s)[None, :] <= torch.arange(s - t, s)[:, None]
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
            elif mask == "is_causal":
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            elif mask == "is_causal when t > 1":
                out = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1)
            else:
                out = F.scaled_dot_product_attention(q, k, v)
            return self.o_proj(out.permute(0, 2, 1, 3).reshape(b, t, self.heads * self.head_dim))

    return CachedAttention


def _cached_attention_stub():
    class Stub(_cached_attention_class()):
        def forward(self, x, cos, sin, cache=None):
            raise NotImplementedError("Exercise")

    return Stub


# ----------------------------------------------------------------------------------------------
# 12.6: greedy_with_cache


@torch.no_grad()
def _greedy_with_cache(model, input_ids, max_new_tokens, mistake=None):
    cache = model.new_cache(1, input_ids.shape[1] + max_new_tokens)
    position = 0 if mistake == "first position" else -1
    if mistake == "no cache":
        ids = input_ids
        for _ in range(max_new_tokens):
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
        return ids[0, input_ids.shape[1]:].tolist()
    first = input_ids[:, -1:] if mistake == "no prefill" else input_ids
    logits = model(first, cache=cache)[:, position]
    if mistake == "advance":
        cache.advance(first.shape[1])
    ids, new = input_ids, []
    for step in range(max_new_tokens):
        token = logits.argmax(dim=-1)
        new.append(token.item())
        ids = torch.cat([ids, token[:, None]], dim=1)
        if step + 1 < max_new_tokens:
            fed = ids if mistake == "whole sequence" else token[:, None]
            logits = model(fed, cache=cache)[:, -1]
            if mistake == "advance":
                cache.advance(1)
    return torch.tensor(new) if mistake == "tensor" else new


CH12 = {
    "12.2": (
        grading.check_rms_norm,
        _rms_norm,
        [(lambda x, w, e: _rms_norm(x, w, e, "layernorm"), "x (5,) float32, eps=1e-05: values differ from the reference; "
                                                           "they are what you get when the mean is subtracted first"),
         (lambda x, w, e: _rms_norm(x, w, e, "eps outside"), "x (2, 3, 8) float32, eps=0.1: values differ from the "
                                                             "reference; they are what you get when eps is added outside the square root"),
         (lambda x, w, e: _rms_norm(x, w, e, "no sqrt"), "x is divided by the mean square without the square root"),
         (lambda x, w, e: _rms_norm(x, w, e, "all dims"), "the mean runs over all dimensions instead of the last"),
         (lambda x, w, e: _rms_norm(x, w, e, "no weight"), "the weight is not applied"),
         (lambda x, w, e: _rms_norm(x, w, e, "float32 out"), "x (4, 6) float64, eps=1e-06: output dtype torch.float32 ≠ "
                                                             "expected torch.float64")],
        _stub,
    ),
    "12.3": (
        grading.check_rotary,
        _rotary,
        [(lambda x, p, t: _rotary(x, p, t, "interleaved"), "x (2, 3, 4), positions [0, 1, 2], theta=10000: values differ "
                                                           "from the reference; they are what you get when the pairs are neighbours"),
         (lambda x, p, t: _rotary(x, p, t, "sign"), "rotate_half gives (x2, -x1) instead of (-x2, x1)"),
         (lambda x, p, t: _rotary(x, p, t, "no 2"), "the frequencies are θ^(-i/d) for i < d/2"),
         (lambda x, p, t: _rotary(x, p, t, "every feature"), "each feature i < d gets its own frequency"),
         (lambda x, p, t: _rotary(x, p, t, "positions ignored"), "x (2, 3, 4), positions [0, 1, 2], theta=10000: x came "
                                                                 "back unchanged")],
        _stub,
    ),
    "12.4": (
        grading.check_repeat_kv,
        _repeat_kv,
        [(lambda x, n: x.repeat(1, n, 1, 1), "x (2, 2, 3, 4), n_rep=3: values differ from the reference; they are what "
                                             "you get when the kv heads are tiled (kv0, kv1, kv0, kv1, …)"),
         (lambda x, n: x.repeat_interleave(n, dim=2), "x (1, 1, 2, 3), n_rep=3: output shape (1, 1, 6, 3): the copies "
                                                      "were made along time (dim 2)"),
         (lambda x, n: x.repeat_interleave(n, dim=3), "the copies were made along the features (dim 3)")],
        _stub,
    ),
    "12.7": (
        grading.check_top_p,
        _top_p,
        [(lambda l, p: _top_p(l, p, "crossing"), "logits (2, 8), p=0.9: values differ from the reference; they are "
                                                 "what you get when the token whose probability carries the sum past p is dropped"),
         (lambda l, p: _top_p(l, p, "logits"), "the cumulative sum runs over the logits instead of the probabilities"),
         (lambda l, p: _top_p(l, p, "ascending"), "the least probable tokens are kept"),
         (lambda l, p: _top_p(l, p, "top dropped"), "logits (2, 6), p=0.3: a row came back with every logit -inf"),
         (lambda l, p: _top_p(l, p, "probabilities"), "the output holds probabilities; return the logits"),
         (lambda l, p: _top_p(l, p, "in place"), "argument 1 was modified in place")],
        _stub,
    ),
    "12.1": (
        grading.check_bpe_merge_step,
        _bpe_step,
        [(lambda i, n: _bpe_step(i, n, "first only"), "ids [1, 2, 3, 1, 2], new_id=256: merging (1, 2) gave [256, 3, 1, 2], "
                                                      "expected [256, 3, 256]; only the first occurrence was merged"),
         (lambda i, n: _bpe_step(i, n, "overlap"), "ids [5, 5, 5], new_id=9: merging (5, 5) gave [9, 9], expected [9, 5]; "
                                                   "occurrences overlapped"),
         (lambda i, n: _bpe_step(i, n, "first seen"), "got the pair (3, 1), expected (1, 2), the most frequent adjacent pair "
                                                      "(2 times); (3, 1) occurs as often, and ties go to the smallest pair"),
         (lambda i, n: _bpe_step(i, n, "step 2"), "ids [1, 9, 9, 2, 9, 9], new_id=10: got the pair (1, 9), expected (9, 9)"
                                                  ", the most frequent adjacent pair (2 times); the pairs were counted only "
                                                  "at every other position"),
         (lambda i, n: _bpe_step(i, n, "tuple"), "the merged ids must be a list of ints, got tuple"),
         (lambda i, n: _bpe_step(i, n, "in place"), "ids was changed in place")],
        _stub,
    ),
    "12.5": (
        grading.check_cached_attention,
        _cached_attention_class(),
        [(_cached_attention_class(rotate_keys=False), "x (2, 6, 32) without a cache: values differ from the reference; "
                                                      "they are what you get when the keys are not rotated"),
         (_cached_attention_class(tile=True), "the kv heads are tiled (kv0, kv1, kv0, …) instead of repeated in groups"),
         (_cached_attention_class(mask="none"), "there is no causal mask"),
         (_cached_attention_class(use_cache=False), "with a cache holding 3 positions, the token at position 3: values "
                                                    "differ from the reference; they are what you get when the cache is not used"),
         (_cached_attention_class(mask="is_causal when t > 1"), "with a cache holding 2 positions, a chunk of 4 tokens at "
                                                                "positions 2..5: values differ from the reference; they are "
                                                                "what you get when the causal mask is aligned to the top-left"),
         (_cached_attention_class(mask="is_causal"), "with a cache holding 3 positions, the token at position 3: values "
                                                     "differ from the reference; they are what you get when the causal "
                                                     "mask is aligned to the top-left"),
         (_cached_attention_class(names="bias"), "the parameters must be named as the reference's"),
         (_cached_attention_class(names="o_proj square"), "o_proj.weight has shape (20, 20), expected (20, 24)")],
        _cached_attention_stub(),
    ),
    "12.6": (
        grading.check_cached_greedy,
        _greedy_with_cache,
        [(lambda m, i, n: _greedy_with_cache(m, i, n, "whole sequence"), "a prompt of 5 tokens, 8 new tokens: the cache "
                                                                         "overflowed: after the prefill, a call fed more than one token "
                                                                         "with the cache; feed only the newest token once the prompt is in the cache"),
         (lambda m, i, n: _greedy_with_cache(m, i, n, "no prefill"), "the prompt never went into the cache"),
         (lambda m, i, n: _greedy_with_cache(m, i, n, "first position"), "the next token came from the first position's logits"),
         (lambda m, i, n: _greedy_with_cache(m, i, n, "advance"), "do not advance it again"),
         (lambda m, i, n: _greedy_with_cache(m, i, n, "no cache"), "the model was never given the cache"),
         (lambda m, i, n: _greedy_with_cache(m, i, n, "tensor"), "expected a list of ints")],
        _stub,
    ),
}
