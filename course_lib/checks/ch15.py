"""Checks of chapter 15 (speech): the mel filterbank, the word error rate, one decoding step with
cross-attention.

The references are written out here (the HTK-scale triangular filterbank for 15.1, a word-level
edit distance with ``course_lib.wer.normalize``'s rule for 15.2, cross-attention of one query on
cached keys and values for 15.3), each with the slips a learner makes, so the failure can name the
slip; none calls the course_lib functions the exercises switch off.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from course_lib.checks.verdict import (Check, CheckFailed, expect_fields, expect_tensor, expect_unchanged, generator,
                                       seeded, shape)
from course_lib.plain import type_name

# ---------------------------------------------------------------------------------------------
# 15.1 the mel filterbank


def _filterbank(n_freqs: int, n_mels: int, sample_rate: int, f_max: float, mistake: str = "") -> torch.Tensor:
    """(n_freqs, n_mels): HTK mel scale, n_mels + 2 points evenly spaced in mels from 0 to f_max,
    triangles of peak 1 over the FFT bins linspace(0, sample_rate / 2, n_freqs); float64 inside,
    float32 out. ``mistake`` names a usual slip."""
    log = math.log if mistake == "ln" else math.log10
    to_mel = lambda f: 2595.0 * log(1.0 + f / 700.0)  # noqa: E731
    power = (lambda m: math.exp(m / 2595.0)) if mistake == "exp" else (lambda m: 10.0 ** (m / 2595.0))
    to_hz = lambda m: 700.0 * (power(m) - 1.0)  # noqa: E731
    if mistake == "hz spacing":
        points = torch.linspace(0.0, f_max, n_mels + 2, dtype=torch.float64)
    else:
        points = torch.tensor([to_hz(m) for m in torch.linspace(0.0, to_mel(f_max), n_mels + 2,
                                                                 dtype=torch.float64).tolist()], dtype=torch.float64)
    if mistake == "grid n_freqs":  # the whole spectrum's spacing, sample_rate / n_freqs
        bins = torch.arange(n_freqs, dtype=torch.float64) * sample_rate / n_freqs
    elif mistake == "grid n_freqs + 1":  # linspace over n_freqs + 1 points, cut to n_freqs
        bins = torch.linspace(0.0, sample_rate / 2, n_freqs + 1, dtype=torch.float64)[:n_freqs]
    else:
        bins = torch.linspace(0.0, sample_rate / 2, n_freqs, dtype=torch.float64)
    lower, centre, upper = points[:-2], points[1:-1], points[2:]
    rising = (bins[:, None] - lower) / (centre - lower)
    falling = (upper - bins[:, None]) / (upper - centre)
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0)
    if mistake == "slaney":
        weights = weights * (2.0 / (upper - lower))
    return weights.float()


class MelFilterbank(Check):
    """``mel_filterbank(n_freqs, n_mels, sample_rate, f_max)`` -> float32 (n_freqs, n_mels): filter m
    a triangle rising from mel point m to m + 1 and falling to m + 2 (peak 1, no area
    normalisation), the n_mels + 2 points evenly spaced on the HTK mel scale 2595·log10(1 + f/700)
    from 0 to f_max, over the FFT bin frequencies linspace(0, sample_rate / 2, n_freqs). Catches: the
    natural log in the mel formula with 10^ in its inverse (or log10 with exp), the points spaced
    evenly in Hz, only n_mels points (the edges missing), Slaney's area normalisation, the result
    transposed, an off-by-one frequency grid (sample_rate / n_freqs, or n_freqs + 1 points)."""

    exercise = "15.1"

    def cases(self) -> list:
        return [(201, 40, 16000, 8000.0), (65, 10, 8000, 4000.0), (257, 26, 16000, 6000.0), (33, 8, 16000, 8000.0)]

    def judge(self, case, got):
        n_freqs, n_mels, sample_rate, f_max = case
        name = f"n_freqs={n_freqs}, n_mels={n_mels}, sample_rate={sample_rate}, f_max={f_max}"
        out = expect_unchanged(case, got)
        expected = _filterbank(n_freqs, n_mels, sample_rate, f_max)
        if isinstance(out, torch.Tensor) and out.shape != expected.shape:
            hints = {(n_mels, n_freqs): "the result is transposed: return (n_freqs, n_mels), one column per filter",
                     (n_freqs, n_mels - 2): "n_mels points make only n_mels − 2 triangles: space n_mels + 2 points "
                                            "(the first and the last are the outer feet of the edge filters)",
                     (n_freqs + 1, n_mels): "the frequency grid has n_freqs + 1 bins: use "
                                            "torch.linspace(0, sample_rate / 2, n_freqs)"}
            hint = hints.get(tuple(out.shape))
            if hint:
                raise CheckFailed(f"{name}: output shape {shape(out)} ≠ expected {shape(expected)}; {hint}")
        grid = ("the FFT bin frequencies are off ({}): bin k of n_freqs lies at k·(sample_rate / 2) / (n_freqs − 1), "
                "i.e. torch.linspace(0, sample_rate / 2, n_freqs)")
        hints = {"ln": "hz_to_mel uses the natural log while mel_to_hz undoes log10: the mel scale is "
                       "2595·log10(1 + f/700) (torch.log10)",
                 "exp": "mel_to_hz uses exp while hz_to_mel uses log10: the inverse is 700·(10^(m/2595) − 1)",
                 "hz spacing": "the points are spaced evenly in Hz: space them evenly in mels (from 0 to "
                               "hz_to_mel(f_max)) and convert them back to Hz",
                 "slaney": "each triangle is divided by its width (Slaney's area normalisation, 2 / (upper − lower)): "
                           "leave the peaks at 1",
                 "grid n_freqs": grid.format("spaced by sample_rate / n_freqs, up to nearly sample_rate"),
                 "grid n_freqs + 1": grid.format("spaced by (sample_rate / 2) / n_freqs, one step too fine")}
        mistakes = {hint: _filterbank(n_freqs, n_mels, sample_rate, f_max, mistake) for mistake, hint in hints.items()}
        expect_tensor(out, expected, name, atol=5e-5, rtol=1e-4, mistakes=mistakes)


# ---------------------------------------------------------------------------------------------
# 15.2 word error rate

_PUNCTUATION = re.compile(r"[^\w\s']")


def _words(text: str, mistake: str = "") -> list[str]:
    """course_lib.wer.normalize's rule, written out: lower case, hyphens to spaces, punctuation other
    than apostrophes removed, split on whitespace."""
    if mistake == "raw":
        return text.split()
    if mistake == "case only":
        return text.lower().split()
    lowered = text.lower()
    if mistake != "hyphen dropped":
        lowered = lowered.replace("-", " ")
    if mistake == "apostrophes dropped":
        return re.sub(r"[^\w\s]", "", lowered).split()
    return _PUNCTUATION.sub("", lowered).split()


def _distance(reference: list, hypothesis: list, substitution: int = 1) -> int:
    """The fewest substitutions (each costing ``substitution``), deletions and insertions, one row
    of the table at a time."""
    row = list(range(len(hypothesis) + 1))
    for i, word in enumerate(reference, 1):
        previous, row = row, [i] + [0] * len(hypothesis)
        for j, other in enumerate(hypothesis, 1):
            row[j] = min(previous[j - 1] + (0 if word == other else substitution), previous[j] + 1, row[j - 1] + 1)
    return row[-1]


def _wer(reference: str, hypothesis: str, mistake: str = "") -> float | None:
    """The reference WER, or what ``mistake`` computes (None where it is undefined)."""
    if mistake == "characters":
        ref, hyp = " ".join(_words(reference)), " ".join(_words(hypothesis))
        return _distance(list(ref), list(hyp)) / len(ref)
    if mistake == "raw characters":
        return _distance(list(reference), list(hypothesis)) / len(reference)
    normalised = mistake if mistake in ("raw", "case only", "hyphen dropped", "apostrophes dropped") else ""
    ref, hyp = _words(reference, normalised), _words(hypothesis, normalised)
    errors = _distance(ref, hyp, 2 if mistake == "substitution as two" else 1)
    if mistake == "count":
        return float(errors)
    if mistake == "hypothesis length":
        return errors / len(hyp) if hyp else None
    return errors / len(ref) if ref else None


class WordErrorRate(Check):
    """``word_error_rate(reference, hypothesis)`` for one pair of strings -> (S + D + I) / N, the
    word-level edit distance over the number of reference words, after normalising both (lower
    case, hyphens to spaces, punctuation but apostrophes removed). Catches: no normalisation (case or
    punctuation counted as errors), hyphens dropped instead of split, apostrophes removed, dividing by
    the hypothesis's length, a substitution counted as a deletion plus an insertion, the raw count of
    edits, characters instead of words."""

    exercise = "15.2"

    def cases(self) -> list:
        return [
            ("the cat sat on the mat", "the cat sat on a mat"),  # one substitution
            ("please call Stella", "please tell Stella now"),  # the hypothesis is longer
            ("Hello, World! It's a test.", "hello world it's a test"),  # only case and punctuation differ
            ("It's over, isn't it?", "its over isn't it"),  # an apostrophe matters
            ("one two three four five", "one too three five six"),  # S, D and I once each
            ("turn the lights off", ""),  # an empty hypothesis: every word deleted
            ("yes", "yes yes yes no"),  # insertions push WER above 1
            ("A well-known fact.", "a well known fact"),  # a hyphen splits a word
        ]

    def judge(self, case, got):
        reference, hypothesis = case
        name = f"reference {reference!r}, hypothesis {hypothesis!r}"
        out = expect_unchanged(case, got)
        if isinstance(out, torch.Tensor) and out.numel() == 1:
            out = out.item()
        if type(out) not in (int, float):
            raise CheckFailed(f"{name}: expected a number (a float), got {type_name(out)}")
        expected = _wer(reference, hypothesis)
        if math.isclose(out, expected, rel_tol=0.0, abs_tol=1e-9):
            return
        not_normalised = ("the transcripts are not normalised, so case and punctuation count as errors: lower-case "
                          "both, turn hyphens into spaces and remove punctuation other than apostrophes before "
                          "splitting into words")
        hints = {"raw": not_normalised,
                 "case only": not_normalised,
                 "hyphen dropped": "hyphens are removed, which joins two words into one: turn them into spaces",
                 "apostrophes dropped": "apostrophes are removed too: keep them (\"it's\" is not \"its\")",
                 "hypothesis length": "the errors are divided by the number of hypothesis words: divide by the "
                                      "number of reference words",
                 "substitution as two": "a substitution costs 2 (a deletion plus an insertion): it is one edit, so "
                                        "the diagonal step costs 1 when the words differ",
                 "count": "the number of edits is returned: divide it by the number of reference words",
                 "characters": "characters are compared instead of words: split the normalised text into words",
                 "raw characters": "characters are compared instead of words: split the normalised text into words"}
        for mistake, hint in hints.items():
            wrong = _wer(reference, hypothesis, mistake)
            if wrong is not None and not math.isclose(wrong, expected, abs_tol=1e-9) and math.isclose(
                    out, wrong, rel_tol=0.0, abs_tol=1e-9):
                raise CheckFailed(f"{name}: got {out:.4g}, expected {expected:.4g}; it is what you get when {hint}")
        raise CheckFailed(f"{name}: got {out:.4g}, expected {expected:.4g}")


# ---------------------------------------------------------------------------------------------
# 15.3 one decoding step with cross-attention


def _projections(d: int, seed: int) -> tuple[nn.Linear, nn.Linear]:
    return seeded(seed, lambda: (nn.Linear(d, d), nn.Linear(d, d)))


def _cross_step(x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, q_proj: nn.Linear, out_proj: nn.Linear,
                heads: int, mistake: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-attention of the new token on the audio's cached keys and values, with one step wrong
    when ``mistake`` names it."""
    b, _, d = x.shape
    head_dim = d // heads
    q = q_proj(x).view(b, 1, heads, head_dim).transpose(1, 2)  # (B, H, 1, Dh)
    scale = {"no scale": 1.0, "sqrt d": d ** -0.5}.get(mistake, head_dim ** -0.5)
    scores = (q * scale) @ keys.transpose(-1, -2)  # (B, H, 1, T)
    if mistake == "causal":
        allowed = torch.ones(1, keys.shape[2], dtype=torch.bool).tril()
        scores = scores.masked_fill(~allowed, float("-inf"))
    axis = {"softmax heads": 1, "softmax query": 2}.get(mistake, -1)
    weights = scores.softmax(dim=axis)
    context = weights @ values  # (B, H, 1, Dh)
    if mistake == "interleaved merge":
        merged = context.permute(0, 2, 3, 1).reshape(b, 1, d)
    else:
        merged = context.transpose(1, 2).reshape(b, 1, d)
    return (merged if mistake == "no out_proj" else out_proj(merged)), weights


class CrossAttentionStep(Check):
    """``cross_attention_step(x, keys, values, q_proj, out_proj, heads)`` -> (output (B, 1, d),
    weights (B, heads, 1, T)): the new token's query q_proj(x) split into heads and scaled by
    (d / heads)^-0.5, softmax over the T audio positions, the context merged back to (B, 1, d) and
    projected by out_proj. Catches: no scaling, scaling by √d instead of √(d / heads), softmax over
    the heads or over the query axis, the heads merged in the wrong order (features interleaved),
    out_proj left out, a causal mask (cross-attention sees all the audio), the weights averaged over
    the heads or squeezed, inputs or the projections changed in place."""

    exercise = "15.3"

    def cases(self) -> list:
        g = generator(153)
        cases = []
        for b, d, heads, t in ((1, 8, 2, 5), (2, 12, 3, 7), (3, 16, 4, 9)):
            cases.append((torch.randn(b, 1, d, generator=g), torch.randn(b, heads, t, d // heads, generator=g),
                          torch.randn(b, heads, t, d // heads, generator=g), heads, 153 + d + t))
        return cases

    def probe(self, cross_attention_step, case):
        x, keys, values, heads, seed = case
        q_proj, out_proj = _projections(x.shape[-1], seed)
        before = [p.detach().clone() for p in (*q_proj.parameters(), *out_proj.parameters())]
        args = [x.clone(), keys.clone(), values.clone()]
        with torch.no_grad():
            out = cross_attention_step(*args, q_proj, out_proj, heads)
        changed = not all(torch.equal(p, was) for p, was in zip((*q_proj.parameters(), *out_proj.parameters()), before))
        return {"out": out, "args": [*args, None, None], "changed": changed}

    def judge(self, case, got):
        x, keys, values, heads, seed = case
        b, _, d = x.shape
        t = keys.shape[2]
        name = f"x {shape(x)}, keys {shape(keys)}, {heads} heads"
        (changed,) = expect_fields(got, "changed")
        out = expect_unchanged((x, keys, values, None, None), got)
        if changed is not False:
            raise CheckFailed(f"{name}: q_proj's or out_proj's parameters were changed; only apply them")
        if type(out) not in (tuple, list) or len(out) != 2:
            raise CheckFailed(f"{name}: expected a tuple (output, weights), got {type_name(out)}"
                              + (f" of {len(out)}" if type(out) in (tuple, list) else ""))
        output, weights = out
        q_proj, out_proj = _projections(d, seed)
        with torch.no_grad():
            expected, expected_weights = _cross_step(x, keys, values, q_proj, out_proj, heads)
            hints = {"no scale": "the query is not scaled: multiply it by (d / heads) ** -0.5, the head size's",
                     "sqrt d": "the query is scaled by d ** -0.5: scale by the head size's, (d / heads) ** -0.5",
                     "softmax heads": "softmax runs over the heads: normalise over the T audio positions (dim=-1)",
                     "softmax query": "softmax runs over the query axis (of size 1, so every weight is 1): normalise "
                                      "over the T audio positions (dim=-1)",
                     "causal": "a causal mask is applied: cross-attention lets the new token see every audio "
                               "position, so mask nothing",
                     "interleaved merge": "the heads are merged in the wrong order (their features interleaved): "
                                          "transpose the context to (B, 1, heads, d / heads) and reshape to (B, 1, d)",
                     "no out_proj": "out_proj is left out: apply it to the merged context"}
            variants = {hint: _cross_step(x, keys, values, q_proj, out_proj, heads, mistake)
                        for mistake, hint in hints.items()}
        if isinstance(weights, torch.Tensor) and weights.shape != expected_weights.shape:
            shapes = {(b, 1, t): "the weights are averaged over the heads: return them per head",
                      (b, t): "the weights are averaged over the heads and the query axis dropped: return them per "
                              "head and keep the query axis",
                      (b, heads, t): "the query axis is dropped: keep it (size 1)"}
            hint = shapes.get(tuple(weights.shape), "")
            raise CheckFailed(f"{name}: weights: output shape {shape(weights)} ≠ expected {shape(expected_weights)} "
                              f"(B, heads, 1, T)" + (f"; {hint}" if hint else ""))
        expect_tensor(output, expected, f"{name}: output", atol=1e-5, rtol=1e-4,
                      mistakes={hint: wrong[0] for hint, wrong in variants.items()})
        expect_tensor(weights, expected_weights, f"{name}: weights", atol=1e-5, rtol=1e-4,
                      mistakes={hint: wrong[1] for hint, wrong in variants.items()})


CHECKS = {c.exercise: c for c in (MelFilterbank(), WordErrorRate(), CrossAttentionStep())}
