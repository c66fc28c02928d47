"""Solutions and plausible wrong answers of chapter 15's exercises (the mel filterbank, the word
error rate, one decoding step with cross-attention), written apart from the notebook's and
course_lib's code; ``test_grading`` runs them with the other exercises'. Each entry: exercise id ->
(check, solution, [(wrong answer, expected part of its message)], untouched stub)."""

import math

import torch

from course_lib import grading


def _stub(*args, **kwargs):
    raise NotImplementedError("Exercise")


# ----------------------------------------------------------------------------------------------
# 15.1: the mel filterbank, one triangle at a time in float32 (not the check's float64 broadcast)


def _filterbank(n_freqs, n_mels, sample_rate, f_max, mistake=None):
    def hz_to_mel(f):
        return 2595 * (math.log(1 + f / 700) if mistake == "ln" else math.log10(1 + f / 700))

    def mel_to_hz(m):
        return 700 * ((math.exp(m / 2595) if mistake == "exp" else 10 ** (m / 2595)) - 1)

    count = n_mels if mistake == "n_mels points" else n_mels + 2
    top = hz_to_mel(f_max)
    if mistake == "hz spacing":
        edges = [f_max * i / (count - 1) for i in range(count)]
    else:
        edges = [mel_to_hz(top * i / (count - 1)) for i in range(count)]
    if mistake == "grid n_freqs":
        freqs = torch.arange(n_freqs, dtype=torch.float32) * sample_rate / n_freqs
    elif mistake == "grid step":  # sample_rate / 2 / n_freqs: linspace over n_freqs + 1 points, cut
        freqs = torch.arange(n_freqs, dtype=torch.float32) * (sample_rate / 2 / n_freqs)
    elif mistake == "grid n_freqs + 1":
        freqs = torch.linspace(0, sample_rate / 2, n_freqs + 1)
    else:
        freqs = torch.linspace(0, sample_rate / 2, n_freqs)
    columns = []
    for m in range(count - 2):
        low, mid, high = edges[m], edges[m + 1], edges[m + 2]
        up = (freqs - low) / (mid - low)
        down = (high - freqs) / (high - mid)
        triangle = torch.minimum(up, down).clamp(min=0)
        if mistake == "slaney":
            triangle = triangle * 2 / (high - low)
        columns.append(triangle)
    bank = torch.stack(columns, dim=1)
    if mistake == "transposed":
        bank = bank.T
    return bank.double() if mistake == "float64" else bank


# ----------------------------------------------------------------------------------------------
# 15.2: word_error_rate with the whole table kept (not the check's one row at a time)


def _normalise(text, mistake=None):
    if mistake == "raw":
        return text.split()
    text = text.lower()
    if mistake == "case only":
        return text.split()
    text = text.replace("-", "" if mistake == "hyphen dropped" else " ")
    keep = "_" if mistake == "apostrophes dropped" else "'_"
    return "".join(c for c in text if c.isalnum() or c.isspace() or c in keep).split()


def _edits(ref, hyp, substitution=1):
    table = [[i + j if i == 0 or j == 0 else 0 for j in range(len(hyp) + 1)] for i in range(len(ref) + 1)]
    for i in range(1, len(ref) + 1):
        for j in range(1, len(hyp) + 1):
            same = ref[i - 1] == hyp[j - 1]
            table[i][j] = min(table[i - 1][j - 1] + (0 if same else substitution), table[i - 1][j] + 1,
                              table[i][j - 1] + 1)
    return table[len(ref)][len(hyp)]


def _wer(reference, hypothesis, mistake=None):
    if mistake == "characters":
        ref, hyp = " ".join(_normalise(reference)), " ".join(_normalise(hypothesis))
        return _edits(ref, hyp) / len(ref)
    if mistake == "raw characters":
        return _edits(reference, hypothesis) / len(reference)
    ref, hyp = _normalise(reference, mistake), _normalise(hypothesis, mistake)
    errors = _edits(ref, hyp, 2 if mistake == "substitution as two" else 1)
    if mistake == "count":
        return errors
    return errors / len(hyp if mistake == "hypothesis length" else ref)


# ----------------------------------------------------------------------------------------------
# 15.3: one cross-attention step, with einsum and the softmax written out


def _cross(x, keys, values, q_proj, out_proj, heads, mistake=None):
    b, _, d = x.shape
    dh = d // heads
    q = q_proj(x)[:, 0].reshape(b, heads, dh)  # (B, H, Dh): one query per head
    scale = {"no scale": 1.0, "sqrt d": 1 / math.sqrt(d)}.get(mistake, 1 / math.sqrt(dh))
    scores = torch.einsum("bhd,bhtd->bht", q, keys)[:, :, None, :] * scale  # (B, H, 1, T)
    if mistake == "causal":
        scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).tril().logical_not(), float("-inf"))
    axis = {"softmax heads": 1, "softmax query": 2}.get(mistake, 3)
    e = torch.exp(scores - scores.amax(dim=axis, keepdim=True))
    weights = e / e.sum(dim=axis, keepdim=True)
    context = torch.einsum("bhqt,bhtd->bqhd", weights, values)  # (B, 1, H, Dh)
    if mistake == "interleaved merge":
        context = context.transpose(2, 3)
    merged = context.reshape(b, 1, d)
    output = merged if mistake == "no out_proj" else out_proj(merged)
    if mistake == "averaged weights":
        weights = weights.mean(dim=1)
    elif mistake == "squeezed weights":
        weights = weights[:, :, 0]
    return output, weights


def _cross_in_place(x, keys, values, q_proj, out_proj, heads):
    result = _cross(x, keys, values, q_proj, out_proj, heads)
    keys.mul_(keys.shape[-1] ** -0.5)  # scales the cached keys in place
    return result


def _cross_changes_projection(x, keys, values, q_proj, out_proj, heads):
    q_proj.weight.mul_(x.shape[-1] ** -0.5)  # folds the scale into the projection's weight
    return _cross(x, keys, values, q_proj, out_proj, heads, "no scale")


CH15 = {
    "15.1": (
        grading.check_mel_filterbank,
        _filterbank,
        [(lambda *a: _filterbank(*a, mistake="ln"), "hz_to_mel uses the natural log"),
         (lambda *a: _filterbank(*a, mistake="exp"), "mel_to_hz uses exp while hz_to_mel uses log10"),
         (lambda *a: _filterbank(*a, mistake="hz spacing"), "the points are spaced evenly in Hz"),
         (lambda *a: _filterbank(*a, mistake="n_mels points"), "n_mels points make only n_mels − 2 triangles"),
         (lambda *a: _filterbank(*a, mistake="slaney"), "Slaney's area normalisation"),
         (lambda *a: _filterbank(*a, mistake="transposed"), "the result is transposed"),
         (lambda *a: _filterbank(*a, mistake="grid n_freqs"), "the FFT bin frequencies are off"),
         (lambda *a: _filterbank(*a, mistake="grid step"), "the FFT bin frequencies are off"),
         (lambda *a: _filterbank(*a, mistake="grid n_freqs + 1"), "the frequency grid has n_freqs + 1 bins"),
         (lambda *a: _filterbank(*a, mistake="float64"), "output dtype torch.float64 ≠ expected torch.float32")],
        _stub,
    ),
    "15.2": (
        grading.check_word_error_rate,
        _wer,
        [(lambda r, h: _wer(r, h, "raw"), "the transcripts are not normalised"),
         (lambda r, h: _wer(r, h, "case only"), "the transcripts are not normalised"),
         (lambda r, h: _wer(r, h, "hyphen dropped"), "hyphens are removed, which joins two words into one"),
         (lambda r, h: _wer(r, h, "apostrophes dropped"), "apostrophes are removed too"),
         (lambda r, h: _wer(r, h, "hypothesis length"), "divided by the number of hypothesis words"),
         (lambda r, h: _wer(r, h, "substitution as two"), "a substitution costs 2"),
         (lambda r, h: _wer(r, h, "count"), "the number of edits is returned"),
         (lambda r, h: _wer(r, h, "characters"), "characters are compared instead of words"),
         (lambda r, h: _wer(r, h, "raw characters"), "characters are compared instead of words"),
         (lambda r, h: str(_wer(r, h)), "expected a number (a float), got str")],
        _stub,
    ),
    "15.3": (
        grading.check_cross_attention_step,
        _cross,
        [(lambda *a: _cross(*a, mistake="no scale"), "the query is not scaled"),
         (lambda *a: _cross(*a, mistake="sqrt d"), "the query is scaled by d ** -0.5"),
         (lambda *a: _cross(*a, mistake="softmax heads"), "softmax runs over the heads"),
         (lambda *a: _cross(*a, mistake="softmax query"), "softmax runs over the query axis"),
         (lambda *a: _cross(*a, mistake="causal"), "a causal mask is applied"),
         (lambda *a: _cross(*a, mistake="interleaved merge"), "the heads are merged in the wrong order"),
         (lambda *a: _cross(*a, mistake="no out_proj"), "out_proj is left out"),
         (lambda *a: _cross(*a, mistake="averaged weights"), "the weights are averaged over the heads"),
         (lambda *a: _cross(*a, mistake="squeezed weights"), "the query axis is dropped"),
         (lambda *a: _cross(*a)[0], "expected a tuple (output, weights), got Tensor"),
         (_cross_in_place, "argument 2 was modified in place"),
         (_cross_changes_projection, "q_proj's or out_proj's parameters were changed")],
        _stub,
    ),
}
