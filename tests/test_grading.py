"""Each check passes the reference solution, fails a plausible mistake with a useful message, and
reports an untouched stub as not yet solved."""

import math

import pytest
import torch
import torch.nn.functional as F
from build_cases import BUILD
from alignment_cases import CH13
from vision_cases import CH14
from speech_cases import CH15
from llm_cases import CH12

from course_lib import grading
from course_lib.autograd import Value


def _stub(*args):
    raise NotImplementedError("Exercise")


class _SiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * torch.sigmoid(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x)
        return grad * s * (1 + x * (1 - s))


class _SiLUWrong(_SiLU):
    @staticmethod
    def backward(ctx, grad):  # forgets the product rule: d/dx x*s(x) is not s(x)
        (x,) = ctx.saved_tensors
        return grad * torch.sigmoid(x)


class _SiLUWrongForward(_SiLU):
    @staticmethod
    def forward(ctx, x):  # tanh instead of the sigmoid; backward still SiLU's
        ctx.save_for_backward(x)
        return x * torch.tanh(x)


def _train_step(model, x, y, lr, zero=True):
    if zero:
        model.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= lr * p.grad
    return loss.item()


def _softmax(x, dim=-1):
    e = torch.exp(x - x.amax(dim=dim, keepdim=True))
    return e / e.sum(dim=dim, keepdim=True)


def _attention(q, k, v, mask=None, scale=True, axis=-1):
    scores = q @ k.transpose(-2, -1) / (q.shape[-1] ** 0.5 if scale else 1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=axis) @ v


def _embed(e, ids, types, norm=True, positions=True):
    x = e.word_embeddings(ids) + e.token_type_embeddings(types)
    if positions:
        x = x + e.position_embeddings(torch.arange(ids.shape[1]))
    return e.LayerNorm(x) if norm else x


def _wordpiece_shortest_first(word, vocab):
    from course_lib.wordpiece import wordpiece

    pieces, start = [], 0
    while start < len(word):
        for end in range(start + 1, len(word) + 1):
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                pieces.append(piece)
                start = end
                break
        else:
            return wordpiece(word, vocab)
    return pieces


def _wordpiece(word, vocab):
    """Greedy longest match from the left, written apart from course_lib's."""
    pieces, start = [], 0
    while start < len(word):
        for end in range(len(word), start, -1):
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                pieces.append(piece)
                start = end
                break
        else:
            return ["[UNK]"]
    return pieces


def _compute_metrics(eval_prediction):
    from sklearn.metrics import accuracy_score, f1_score

    predicted = eval_prediction.predictions.argmax(-1)
    return {"accuracy": accuracy_score(eval_prediction.label_ids, predicted),
            "f1": f1_score(eval_prediction.label_ids, predicted, average="macro")}


def _magnitude_mask(weight, amount):
    mask = torch.ones_like(weight)
    k = round(amount * weight.numel())
    if k:
        mask.view(-1)[weight.abs().flatten().argsort()[:k]] = 0
    return mask


def _normalize_in_place(x):
    x /= x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return x


# exercise id -> (check, correct solution, [(plausible wrong solution, expected message part)])
CASES = {
    "0.1": (
        grading.check_to_float_tensor,
        lambda v: torch.tensor(v).float(),
        [(lambda v: torch.tensor(v), "dtype"), (lambda v: list(v), "expected a torch.Tensor")],
    ),
    "0.2": (
        grading.check_count_parameters,
        lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad),
        [(lambda m: sum(p.numel() for p in m.parameters()), "frozen embedding: got 50 ≠ expected 10"),
         (lambda m: len(list(m.parameters())), "got 2 ≠ expected 16")],
    ),
    "0.3": (
        grading.check_reproducible_randn,
        lambda seed, shape: torch.manual_seed(seed) and torch.randn(shape),
        [(lambda seed, shape: torch.randn(shape), "values differ"),
         (lambda seed, shape: torch.manual_seed(0) and torch.randn(shape), "seed 42")],
    ),
    "1.2": (
        grading.check_normalize_rows,
        lambda x: x / x.norm(dim=1, keepdim=True).clamp_min(1e-12),
        [(lambda x: x / x.norm(dim=0, keepdim=True).clamp_min(1e-12), "values differ"),
         (lambda x: x / x.norm(dim=1, keepdim=True), "row of zeros (it must stay zero): output contains NaN"),
         (_normalize_in_place, "modified in place")],
    ),
    "1.1": (
        grading.check_pairwise_sq_distances,
        lambda x, y: ((x[:, None] - y[None]) ** 2).sum(-1),
        [(lambda x, y: ((x[None] - y[:, None]) ** 2).sum(-1), "output shape (3, 4) ≠ expected (4, 3)"),
         (lambda x, y: ((x[:, None] - y[None]) ** 2).sum(-1).sqrt(), "values differ")],
    ),
    "1.3": (
        grading.check_masked_mean,
        lambda x, m: (x * m).sum(1) / m.sum(1).clamp_min(1),
        [(lambda x, m: (x * m).mean(1), "values differ"),
         (lambda x, m: (x * m).sum(1) / m.sum(1), "no kept entry (must give 0): output contains NaN")],
    ),
    "1.4": (
        grading.check_batched_scores,
        lambda q, k: torch.einsum("bqd,bkd->bqk", q, k),
        [(lambda q, k: torch.einsum("bqd,bkd->bkq", q, k), "output shape (2, 4, 3) ≠ expected (2, 3, 4)"),
         (lambda q, k: torch.einsum("bqd,bkd->bqk", q, k) / q.shape[-1] ** 0.5, "values differ")],
    ),
    "2.1": (
        grading.check_derivative_at,
        lambda f, x: torch.func.grad(f)(torch.tensor(float(x))).item(),
        [(lambda f, x: f(torch.tensor(float(x))).item(), "d/dx x**3 + 2*x at 2.0: value differs"),
         (lambda f, x: "14", "expected a number, got str")],
    ),
    "2.2": (
        grading.check_sigmoid,
        lambda v: 1 / (1 + (-v).exp()),
        [(lambda v: Value(1 / (1 + math.exp(-v.data))), "no gradient reached the input"),
         (lambda v: 1 / (1 + v.exp()), "sigmoid value at x=-3.0: value differs")],
    ),
    "2.3": (
        grading.check_central_difference,
        lambda f, x, eps: (f(x + eps) - f(x - eps)) / (2 * eps),
        [(lambda f, x, eps: (f(x + eps) - f(x)) / eps, "exp at 1.0 with eps=1e-3: value differs"),
         (lambda f, x, eps: (f(x + eps) - f(x - eps)) / eps, "value differs")],
    ),
    "2.4": (
        grading.check_silu_function,
        _SiLU,
        [(_SiLUWrong, "gradient for x of shape (5,): values differ"),
         (_SiLUWrongForward, "output for x of shape (5,): values differ"),
         (F.silu, "expected a subclass of torch.autograd.Function")],
    ),
    "3.1": (
        grading.check_stable_softmax,
        _softmax,
        [(lambda x, dim=-1: torch.exp(x) / torch.exp(x).sum(dim, keepdim=True), "logits near ±1000 (subtract the max): output contains NaN"),
         (lambda x, dim=-1: _softmax(x, -1), "x of shape (3, 6), dim=0: values differ")],
    ),
    "3.2": (
        grading.check_cross_entropy,
        lambda z, t: -(z - torch.logsumexp(z, 1, keepdim=True))[torch.arange(len(t)), t].mean(),
        [(lambda z, t: -torch.log(torch.softmax(z, 1))[torch.arange(len(t)), t].mean(), "large logits"),
         (lambda z, t: -(z - torch.logsumexp(z, 1, keepdim=True))[torch.arange(len(t)), t].sum(), "logits of shape (8, 5): values differ")],
    ),
    "3.3": (
        grading.check_train_step,
        _train_step,
        [(lambda m, x, y, lr: _train_step(m, x, y, lr, zero=False), "step 1, lr=0.1: parameter 0.weight after the update: values differ"),
         (lambda m, x, y, lr: _train_step(m, x, y, -lr), "parameter 0.weight after the update: values differ"),
         (lambda m, x, y, lr: F.cross_entropy(m(x), y).item(), "values differ")],
    ),
    "4.1": (
        grading.check_attention,
        _attention,
        [(lambda q, k, v, mask=None: _attention(q, k, v, mask, scale=False), "q (2, 3, 4), k (2, 5, 4), v (2, 5, 6): values differ"),
         (lambda q, k, v, mask=None: _attention(q, k, v, mask, axis=-2), "values differ"),
         (lambda q, k, v, mask=None: _attention(q, k, v), "with a mask (True = may attend): values differ")],
    ),
    "4.2": (
        grading.check_causal_mask,
        lambda t: torch.ones(t, t, dtype=torch.bool).tril(),
        [(lambda t: torch.ones(t, t, dtype=torch.bool).triu(), "T=2: values differ"),
         (lambda t: torch.ones(t, t, dtype=torch.bool).tril(-1), "T=1: values differ"),
         (lambda t: torch.ones(t, t).tril(), "output dtype torch.float32 ≠ expected torch.bool")],
    ),
    "4.3": (
        grading.check_split_heads,
        lambda x, h: x.reshape(x.shape[0], x.shape[1], h, -1).transpose(1, 2),
        [(lambda x, h: x.reshape(x.shape[0], h, x.shape[1], -1), "x of shape (2, 3, 8), n_heads=2: values differ"),
         (lambda x, h: x.reshape(x.shape[0], x.shape[1], h, -1), "output shape (2, 3, 2, 4) ≠ expected (2, 2, 3, 4)")],
    ),
    "5.1": (
        grading.check_wordpiece,
        _wordpiece,
        [(_wordpiece_shortest_first, "for 'the': got ['t', '##h', '##e'] ≠ expected ['the']"),
         (lambda w, v: [w] if w in v else ["[UNK]"], "for 'tokenization': got ['[UNK]'] ≠ expected ['token', '##ization']")],
    ),
    "5.2": (
        grading.check_bert_embed,
        _embed,
        [(lambda e, i, t: _embed(e, i, t, norm=False), "input_ids of shape (1, 1): values differ"),
         (lambda e, i, t: _embed(e, i, t, positions=False), "values differ")],
    ),
    "5.3": (
        grading.check_mean_pool,
        lambda h, m: (h * m[..., None]).sum(1) / m.sum(1, keepdim=True),
        [(lambda h, m: h.mean(1), "with padding: values differ"),
         (lambda h, m: (h * m[..., None]).sum(1), "values differ")],
    ),
    "6.1": (
        grading.check_next_token_loss,
        lambda l, i: F.cross_entropy(l[:, :-1].reshape(-1, l.shape[-1]), i[:, 1:].reshape(-1)),
        [(lambda l, i: F.cross_entropy(l.reshape(-1, l.shape[-1]), i.reshape(-1)), "logits of shape (1, 2, 3): values differ"),
         (lambda l, i: F.cross_entropy(l[:, 1:].reshape(-1, l.shape[-1]), i[:, :-1].reshape(-1)), "values differ")],
    ),
    "6.2": (
        grading.check_top_k_filter,
        lambda l, k: l.masked_fill(l < torch.topk(l, k, -1).values[:, -1:], float("-inf")),
        [(lambda l, k: l.masked_fill(l <= torch.topk(l, k, -1).values[:, -1:], float("-inf")), "k=1: values differ"),
         (lambda l, k: l.masked_fill(l < torch.topk(l, k, -1).values[:, -1:], 0.0), "values differ")],
    ),
    "6.3": (
        grading.check_select_for_masking,
        lambda m, p, g: (torch.rand(m.shape, generator=g) < p) & m,
        [(lambda m, p, g: torch.rand(m.shape, generator=g) < p, "not maskable ([CLS], [SEP], padding) was chosen"),
         (lambda m, p, g: (torch.rand(m.shape, generator=g) < 0.15) & m, "with probability=0.4, the fraction chosen is not close to it"),
         (lambda m, p, g: (torch.rand(m.shape, generator=g) < p).float() * m, "expected a bool tensor"),
         (lambda m, p, g: (torch.rand(m.shape) < p) & m, "two generators with the same seed gave different choices")],
    ),
    "7.1": (
        grading.check_compute_metrics,
        _compute_metrics,
        [(lambda e: {"accuracy": float((e.predictions.argmax(-1) == e.label_ids).mean())},
          "40 predictions of 2 classes: the dict has no 'f1' entry"),
         (lambda e: {"accuracy": float((e.predictions.argmax(-1) == e.label_ids).mean()),
                     "f1": float((e.predictions.argmax(-1) == e.label_ids).mean())}, "'f1': value differs"),
         (lambda e: (e.predictions.argmax(-1) == e.label_ids).mean(), "expected a dict")],
    ),
    "7.2": (
        grading.check_warmup_linear_factor,
        lambda s, w, t: s / w if s < w else max(0.0, (t - s) / max(1, t - w)),
        [(lambda s, w, t: s / w if s < w else (t - s) / max(1, t - w), "step=105, warmup_steps=10, total_steps=100"),
         (lambda s, w, t: (s + 1) / w if s < w else max(0.0, (t - s) / max(1, t - w)), "step=0, warmup_steps=10"),
         (lambda s, w, t: s / w if s < w else max(0.0, (t - s) / t), "step=10, warmup_steps=10")],
    ),
    "7.3": (
        grading.check_expected_calibration_error,
        lambda p, y, n: _ece(p, y, n),
        [(lambda p, y, n: _ece(p, y, n, weighted=False), "a hand-made example of 5: value differs"),
         (lambda p, y, n: _ece(p, y, n, confidence_of=1), "value differs")],
    ),
    "8.1": (
        grading.check_lora_forward,
        lambda x, w, b, a, bb, alpha: x @ w.T + b + (alpha / a.shape[0]) * (x @ a.T @ bb.T),
        [(lambda x, w, b, a, bb, alpha: x @ w.T + b + alpha * (x @ a.T @ bb.T), "r=2, alpha=4.0: values differ"),
         (lambda x, w, b, a, bb, alpha: x @ w.T + (alpha / a.shape[0]) * (x @ a.T @ bb.T), "values differ"),
         (lambda x, w, b, a, bb, alpha: x @ w.T + b + (alpha / a.shape[0]) * (x @ bb @ a), "your code raised RuntimeError")],
    ),
    "8.3": (
        grading.check_merge_lora_weight,
        lambda w, a, b, alpha: w + (alpha / a.shape[0]) * (b @ a),
        [(lambda w, a, b, alpha: w.add_((alpha / a.shape[0]) * (b @ a)), "argument 1 was modified in place"),
         (lambda w, a, b, alpha: w + b @ a, "r=2, alpha=4.0: values differ"),
         (lambda w, a, b, alpha: w + (alpha / a.shape[0]) * (a.T @ b.T), "your code raised RuntimeError")],
    ),
    "8.2": (
        grading.check_freeze_all_but,
        lambda m, keep: _freeze(m, keep),
        [(lambda m, keep: _freeze(m, keep, unfreeze=False), "keep=['encoder.0', 'encoder.1']: requires_grad is wrong for ['encoder.0.weight']"),
         (lambda m, keep: _freeze(m, keep, count="tensors"), "the number of trainable elements: value differs"),
         (lambda m, keep: _freeze(m, keep, freeze=False), "keep=['classifier']: requires_grad is wrong")],
    ),
    "9.1": (
        grading.check_magnitude_mask,
        _magnitude_mask,
        [(lambda w, a: _mask_without_abs(w, a), "amount=0.5: values differ"),
         (lambda w, a: (w.abs() > w.abs().flatten().kthvalue(max(1, round(a * w.numel()))).values).float(), "amount=0.0: values differ")],
    ),
    "9.2": (
        grading.check_symmetric_quantize,
        lambda x, b: _symmetric(x, b),
        [(lambda x, b: _symmetric(x, b, qmax=2 ** b - 1), "scale: value differs"),
         (lambda x, b: (_symmetric(x, b)[0].float(), _symmetric(x, b)[1]), "q: output dtype torch.float32"),
         (lambda x, b: _symmetric(x, b)[0], "expected a tuple (q, scale)")],
    ),
    "9.3": (
        grading.check_per_channel_scales,
        lambda w, b: w.abs().amax(dim=1) / (2 ** (b - 1) - 1),
        [(lambda w, b: w.abs().amax(dim=0) / (2 ** (b - 1) - 1), "output shape (9,)"),
         (lambda w, b: w.abs().amax(dim=1) / 127, "bits=4: values differ")],
    ),
    "10.1": (
        grading.check_pad_batch,
        lambda seqs, pad: _pad(seqs, pad),
        [(lambda seqs, pad: _pad(seqs, pad, mask_dtype=torch.bool), "attention_mask: output dtype torch.bool"),
         (lambda seqs, pad: _pad(seqs, 0), "pad_id=1: input_ids: values differ"),
         (lambda seqs, pad: _pad(seqs, pad, left=True), "lengths [3, 2], pad_id=0: input_ids: values differ")],
    ),
    "10.2": (
        grading.check_validate_texts,
        lambda p: _validate(p),
        [(lambda p: _validate(p, strip=False), "payload {'texts': '  padded  '}: returned ['  padded  ']"),
         (lambda p: _validate(p, check_keys=False), "payload {'texts': 'ok', 'extra': 1} is invalid"),
         (lambda p: _validate(p, limit=False), "payload {'texts': ['z'] * 33} is invalid"),
         (lambda p: _validate(p, strip_first=False), "payload {'texts': '   '} is invalid")],
    ),
    "10.3": (
        grading.check_percentile,
        lambda v, q: _percentile(v, q),
        [(lambda v, q: sorted(v)[min(len(v) - 1, round(q / 100 * (len(v) - 1)))], "4 values, q=50: value differs"),
         (lambda v, q: _percentile(v, q, sort=False), "3 values, q=50: value differs"),
         (lambda v, q: (v.sort(), _percentile(v, q))[1], "changed in place")],
    ),
    "11.1": (
        grading.check_accumulate_gradients,
        lambda m, x, y, k: _accumulate(m, x, y, k),
        [(lambda m, x, y, k: _accumulate(m, x, y, k, scale="count"), "batch 10 in 3 micro-batches: 0.weight.grad: values differ"),
         (lambda m, x, y, k: _accumulate(m, x, y, k, scale="none"), "batch 8 in 4 micro-batches: 0.weight.grad: values differ"),
         (lambda m, x, y, k: _accumulate(m, x, y, k, zero=False), "batch 8 in 1 micro-batches: 0.weight.grad: values differ")],
    ),
    "11.2": (
        grading.check_training_state_bytes,
        lambda n, p, o: _state_bytes(n, p, o),
        [(lambda n, p, o: _state_bytes(n, p, o, master=0), "1 parameters, mixed, adamw: value differs"),
         (lambda n, p, o: _state_bytes(n, p, o, adam_states=1), "1 parameters, float32, adamw: value differs"),
         (lambda n, p, o: 16 * n, "1 parameters, float32, sgd: value differs")],
    ),
    "11.3": (
        grading.check_rank_indices,
        lambda n, r, w: _rank_indices(n, r, w),
        [(lambda n, r, w: list(range(n))[r::w], "n=10, rank 2 of 4: got [2, 6], expected [2, 6, 0]"),
         (lambda n, r, w: _rank_indices(n, r, w, contiguous=True), "n=8, rank 0 of 2: got [0, 1, 2, 3]")],
    ),
}


def _state_bytes(n, precision, optimizer, master=4, adam_states=2):
    low = 4 if precision == "float32" else 2
    state = 2 if precision == "bfloat16" else 4
    states = {"adamw": adam_states, "sgd_momentum": 1, "sgd": 0}[optimizer]
    return n * (low + (master if precision == "mixed" else 0) + low + state * states)


def _accumulate(model, x, y, k, scale="share", zero=True):
    if zero:
        model.zero_grad(set_to_none=True)
    pieces = list(zip(x.split(math.ceil(len(x) / k)), y.split(math.ceil(len(x) / k))))
    for xb, yb in pieces:
        weight = {"share": len(xb) / len(x), "count": 1 / len(pieces), "none": 1.0}[scale]
        (F.cross_entropy(model(xb), yb) * weight).backward()


def _rank_indices(n, rank, world, contiguous=False):
    total = math.ceil(n / world) * world
    indices = (list(range(n)) * math.ceil(total / n))[:total]
    if contiguous:
        per_rank = total // world
        return indices[rank * per_rank:(rank + 1) * per_rank]
    return indices[rank::world]


def _percentile(values, q, sort=True):
    v = sorted(values) if sort else list(values)
    position = q / 100 * (len(v) - 1)
    low = math.floor(position)
    high = min(low + 1, len(v) - 1)
    return v[low] + (v[high] - v[low]) * (position - low)


def _validate(payload, strip=True, check_keys=True, limit=True, strip_first=True):
    if not isinstance(payload, dict) or "texts" not in payload or (check_keys and set(payload) != {"texts"}):
        raise ValueError("the body must be {'texts': ...}")
    texts = payload["texts"]
    texts = [texts] if isinstance(texts, str) else texts
    if not isinstance(texts, list) or not texts or (limit and len(texts) > 32):
        raise ValueError("texts must be a string or a list of 1 to 32 strings")
    if not all(isinstance(t, str) for t in texts):
        raise ValueError("every text must be a string")
    if not strip_first and not all(texts):
        raise ValueError("empty text")
    texts = [t.strip() if strip else t for t in texts]
    if strip_first and not all(t.strip() for t in texts):
        raise ValueError("empty text")
    if not all(len(t) <= 2000 for t in texts):
        raise ValueError("text too long")
    return texts


def _pad(sequences, pad_id, mask_dtype=torch.long, left=False):
    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=mask_dtype)
    for row, s in enumerate(sequences):
        start = longest - len(s) if left else 0
        ids[row, start:start + len(s)] = torch.tensor(s)
        mask[row, start:start + len(s)] = 1
    return ids, mask


def _mask_without_abs(w, a):
    mask = torch.ones_like(w)
    n = round(a * w.numel())
    if n:
        mask.view(-1)[torch.topk(w.flatten(), n, largest=False).indices] = 0  # forgets the absolute value
    return mask


def _symmetric(x, bits, qmax=None):
    qmax = qmax or 2 ** (bits - 1) - 1
    scale = x.abs().max() / qmax
    return torch.round(x / scale).clamp(-qmax, qmax).to(torch.int8), scale


def _ece(p, y, n, weighted=True, confidence_of=None):
    confidence, predicted = p.max(1)
    if confidence_of is not None:
        confidence = p[:, confidence_of]
    bins = (confidence * n).long().clamp(max=n - 1)
    total = 0.0
    filled = 0
    for b in range(n):
        inside = bins == b
        if inside.any():
            gap = abs((predicted[inside] == y[inside]).double().mean().item() - confidence[inside].double().mean().item())
            total += gap * inside.sum().item() / len(y) if weighted else gap
            filled += 1
    return total if weighted else total / filled


def _freeze(model, keep, unfreeze=True, freeze=True, count="elements"):
    for name, p in model.named_parameters():
        kept = any(k in name for k in keep)
        if kept and unfreeze:
            p.requires_grad_(True)
        if not kept and freeze:
            p.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    return sum(p.numel() for p in trainable) if count == "elements" else len(trainable)


CASES.update({exercise: entry[:3] for exercise, entry in BUILD.items()})
CASES.update({exercise: entry[:3] for exercise, entry in CH12.items()})
CASES.update({exercise: entry[:3] for exercise, entry in CH13.items()})
CASES.update({exercise: entry[:3] for exercise, entry in CH14.items()})
CASES.update({exercise: entry[:3] for exercise, entry in CH15.items()})


def test_every_registered_exercise_is_tested_here():
    assert set(CASES) == set(grading.EXERCISES)


@pytest.mark.parametrize("exercise", CASES)
def test_reference_solution_passes(exercise, capsys):
    check, solution, _ = CASES[exercise]
    check(solution)
    assert capsys.readouterr().out == f"Exercise {exercise} passed\n"


@pytest.mark.parametrize("exercise", CASES)
def test_plausible_mistakes_fail_with_a_reason(exercise, capsys):
    check, _, mistakes = CASES[exercise]
    for wrong, reason in mistakes:
        check(wrong)
        out = capsys.readouterr().out
        assert out.startswith(f"Exercise {exercise} failed: ") and out.count("\n") == 1, out
        assert reason in out, out


@pytest.mark.parametrize("exercise", CASES)
def test_untouched_stub_is_not_yet_solved(exercise, capsys):
    check = CASES[exercise][0]
    stub = type("Stub", (_SiLU,), {"backward": staticmethod(_stub)}) if exercise == "2.4" else _stub
    stub = BUILD[exercise][3] if exercise in BUILD else stub
    stub = CH12[exercise][3] if exercise in CH12 else stub
    stub = CH13[exercise][3] if exercise in CH13 else stub
    stub = CH14[exercise][3] if exercise in CH14 else stub
    stub = CH15[exercise][3] if exercise in CH15 else stub
    check(stub)
    assert capsys.readouterr().out.startswith(f"Exercise {exercise} not yet solved")


def test_a_crash_in_learner_code_is_reported_by_type_and_first_line(capsys):
    def crashes(x, y):
        raise IndexError("index 5 is out of bounds\nsecond line")

    grading.check_pairwise_sq_distances(crashes)
    assert capsys.readouterr().out == (
        "Exercise 1.1 failed: your code raised IndexError: index 5 is out of bounds\n"
    )


@pytest.mark.parametrize("exercise", CASES)
def test_verdicts_are_deterministic(exercise, capsys):
    check, _, mistakes = CASES[exercise]
    check(mistakes[0][0])
    first = capsys.readouterr().out
    torch.manual_seed(999)
    check(mistakes[0][0])
    assert capsys.readouterr().out == first


@pytest.mark.parametrize("exercise", CASES)
def test_checks_do_not_consume_the_global_random_state(exercise):
    check, solution, _ = CASES[exercise]
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    check(solution)
    assert torch.equal(torch.rand(3), expected)


def test_exercises_have_titles_and_points():
    for exercise_id, exercise in grading.EXERCISES.items():
        assert exercise.id == exercise_id and exercise.title and exercise.points >= 1


def test_every_registered_exercise_has_exactly_one_check_class():
    from course_lib.checks import load

    for exercise_id, exercise in grading.EXERCISES.items():
        check = load(exercise_id)
        assert check.exercise == exercise_id
        assert callable(getattr(grading, exercise.check))


@pytest.mark.parametrize("exercise", CASES)
def test_cases_are_plain_data_and_the_same_in_every_process(exercise):
    """The grader writes a check's cases for the sandbox and judges with its own copy: they must
    survive the trip unchanged and not depend on the global random state."""
    from course_lib import plain
    from course_lib.checks import load

    check = load(exercise)
    torch.manual_seed(1)
    first = plain.to_bytes(check.cases())
    torch.manual_seed(2)
    assert plain.to_bytes(check.cases()) == first
    assert "unsupported" not in first[0].decode()


def test_the_registry_imports_without_torch():
    import subprocess
    import sys

    code = "import sys, course_lib.checks, course_lib.exercises; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
