"""Check functions for the exercises: each runs the learner's object against a reference on
fixed-seed random inputs and edge cases, and prints exactly one deterministic line.

``Exercise 1.2 passed`` or ``Exercise 1.2 failed: <what is wrong>`` (or ``not yet solved`` while
the stub still raises ``NotImplementedError``). The lines never contain random numbers, so a
notebook's stored check output can be compared by nbval and by the grader.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.autograd import Value


@dataclass(frozen=True)
class Exercise:
    """An exercise's stable id ("chapter.number"), short title and points."""

    id: str
    title: str
    points: int = 1


EXERCISES: dict[str, Exercise] = {}


class CheckFailed(Exception):
    """Raised inside a check to report what is wrong, in words a learner can act on."""


def _exercise(exercise_id: str, title: str, points: int = 1):
    """Register a check under its exercise, and wrap it so it prints one verdict line."""

    def wrap(check: Callable[[Any], None]) -> Callable[[Any], None]:
        EXERCISES[exercise_id] = Exercise(exercise_id, title, points)

        def run(candidate: Any) -> None:
            print(verdict(exercise_id, check, candidate))

        run.__name__ = check.__name__
        run.__doc__ = check.__doc__
        run.exercise = EXERCISES[exercise_id]  # type: ignore[attr-defined]
        return run

    return wrap


def verdict(exercise_id: str, check: Callable[[Any], None], candidate: Any) -> str:
    """Run ``check(candidate)`` and turn its outcome into the exercise's one-line verdict."""
    name = f"Exercise {exercise_id}"
    try:
        check(candidate)
    except NotImplementedError:
        return f"{name} not yet solved: replace the `raise NotImplementedError` with your code"
    except CheckFailed as failure:
        return f"{name} failed: {failure}"
    except Exception as error:  # the learner's code raised: say what, first line only
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return f"{name} failed: your code raised {type(error).__name__}" + (
            f": {message}" if message else ""
        )
    return f"{name} passed"


# ---------------------------------------------------------------------------------------------
# Helpers shared by the checks


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def _call(fn: Callable[..., Any], *args: torch.Tensor) -> Any:
    """Call the learner's function and fail if it modified any of its tensor inputs in place."""
    if not callable(fn):
        raise CheckFailed(f"expected a function, got {type(fn).__name__}")
    copies = [a.clone() if isinstance(a, torch.Tensor) else None for a in args]
    out = fn(*args)
    for i, (arg, copy) in enumerate(zip(args, copies)):
        if copy is not None and not torch.equal(arg, copy):
            raise CheckFailed(f"argument {i + 1} was modified in place; leave inputs unchanged")
    return out


def _expect_tensor(
    got: Any,
    expected: torch.Tensor,
    case: str,
    atol: float = 1e-5,
    rtol: float = 1e-4,
) -> None:
    """Fail with a message naming the case unless ``got`` matches ``expected`` in type, shape,
    dtype and values (NaN only where the reference has NaN)."""
    if not isinstance(got, torch.Tensor):
        raise CheckFailed(f"{case}: expected a torch.Tensor, got {type(got).__name__}")
    if got.shape != expected.shape:
        raise CheckFailed(f"{case}: output shape {_shape(got)} ≠ expected {_shape(expected)}")
    if got.dtype != expected.dtype:
        raise CheckFailed(f"{case}: output dtype {got.dtype} ≠ expected {expected.dtype}")
    if torch.isnan(got).any() and not torch.isnan(expected).any():
        raise CheckFailed(f"{case}: output contains NaN")
    if not torch.allclose(got, expected, atol=atol, rtol=rtol, equal_nan=True):
        raise CheckFailed(f"{case}: values differ from the reference")


def _expect_number(got: Any, expected: float, case: str, atol: float, rtol: float = 0.0) -> None:
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        raise CheckFailed(f"{case}: expected a number, got {type(got).__name__}")
    if not math.isclose(got, expected, abs_tol=atol, rel_tol=rtol):
        raise CheckFailed(f"{case}: value differs from the reference")


# ---------------------------------------------------------------------------------------------
# Chapter 00: setup


@_exercise("0.1", "a list of numbers as a float32 tensor")
def check_to_float_tensor(to_float_tensor: Callable[[list], torch.Tensor]) -> None:
    """``to_float_tensor(values)`` returns a 1-D float32 tensor holding the numbers in order."""
    for values in ([1, 2, 3], [0.5, -1.25], [7], []):
        expected = torch.tensor(values, dtype=torch.float32)
        _expect_tensor(_call(to_float_tensor, values), expected, f"for {values}")


@_exercise("0.2", "count trainable parameters")
def check_count_parameters(count_parameters: Callable[[nn.Module], int]) -> None:
    """``count_parameters(model)`` counts the elements of the parameters that require grad."""
    frozen = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2))
    frozen[0].weight.requires_grad_(False)
    cases = {
        "nn.Linear(3, 4)": nn.Linear(3, 4),
        "nn.Linear(3, 4, bias=False)": nn.Linear(3, 4, bias=False),
        "an MLP 8 -> 16 -> 2": nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)),
        "a model with a frozen embedding": frozen,
        "nn.ReLU() (no parameters)": nn.ReLU(),
    }
    for name, model in cases.items():
        expected = sum(p.numel() for p in model.parameters() if p.requires_grad)
        got = count_parameters(model)
        if isinstance(got, bool) or not isinstance(got, int):
            raise CheckFailed(f"for {name}: expected an int, got {type(got).__name__}")
        if got != expected:
            raise CheckFailed(f"for {name}: got {got} ≠ expected {expected}")


@_exercise("0.3", "reproducible random numbers")
def check_reproducible_randn(reproducible_randn: Callable[[int, tuple], torch.Tensor]) -> None:
    """``reproducible_randn(seed, shape)`` seeds torch, then draws ``torch.randn(shape)``."""
    for seed, shape in ((0, (3,)), (42, (2, 5)), (7, (4, 1, 2))):
        torch.manual_seed(seed)
        expected = torch.randn(shape)
        torch.manual_seed(seed + 1)  # a different state first: the function must seed itself
        _expect_tensor(_call(reproducible_randn, seed, shape), expected, f"seed {seed}, shape {shape}")
    if torch.equal(reproducible_randn(1, (8,)), reproducible_randn(2, (8,))):
        raise CheckFailed("seeds 1 and 2 gave the same numbers: use the seed argument")


# ---------------------------------------------------------------------------------------------
# Chapter 01: tensors


@_exercise("1.1", "pairwise squared distances by broadcasting")
def check_pairwise_sq_distances(
    pairwise_sq_distances: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> None:
    """``pairwise_sq_distances(x, y)``: x (N, D), y (M, D) -> (N, M) squared Euclidean distances."""
    g = _generator(12)
    for n, m, d in ((1, 1, 1), (4, 3, 2), (2, 6, 5), (5, 5, 3)):
        x, y = torch.randn(n, d, generator=g), torch.randn(m, d, generator=g)
        expected = torch.cdist(x, y) ** 2
        _expect_tensor(
            _call(pairwise_sq_distances, x, y),
            expected,
            f"x of shape {(n, d)}, y of shape {(m, d)}",
            atol=1e-4,
        )


@_exercise("1.2", "normalise each row to unit length")
def check_normalize_rows(normalize_rows: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """``normalize_rows(x)`` divides each row of a 2-D tensor by its L2 norm; zero rows stay zero."""
    g = _generator(11)
    for rows, cols in ((1, 1), (3, 5), (7, 2), (4, 4)):
        x = torch.randn(rows, cols, generator=g) * 3
        _expect_tensor(_call(normalize_rows, x), F.normalize(x, dim=1), f"x of shape {(rows, cols)}")
    x = torch.randn(3, 4, generator=g)
    x[1] = 0
    _expect_tensor(
        _call(normalize_rows, x), F.normalize(x, dim=1), "x with a row of zeros (it must stay zero)"
    )


@_exercise("1.3", "mean over the masked positions")
def check_masked_mean(masked_mean: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """``masked_mean(x, mask)``: x (B, T), bool mask (B, T) -> (B,) mean of the kept entries,
    0 for a row whose mask is all False."""
    g = _generator(13)
    for b, t in ((1, 1), (3, 5), (4, 2)):
        x = torch.randn(b, t, generator=g)
        mask = torch.rand(b, t, generator=g) > 0.4
        mask[:, 0] = True
        expected = (x * mask).sum(1) / mask.sum(1)
        _expect_tensor(_call(masked_mean, x, mask), expected, f"x of shape {(b, t)}")
    x = torch.randn(2, 3, generator=g)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    expected = torch.stack([(x[0, 0] + x[0, 2]) / 2, torch.tensor(0.0)])
    _expect_tensor(_call(masked_mean, x, mask), expected, "a row with no kept entry (must give 0)")


@_exercise("1.4", "batched dot products with einsum")
def check_batched_scores(batched_scores: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """``batched_scores(q, k)``: q (B, Tq, D), k (B, Tk, D) -> (B, Tq, Tk), q @ kᵀ per batch."""
    g = _generator(14)
    for b, tq, tk, d in ((1, 1, 1, 1), (2, 3, 4, 5), (3, 4, 2, 8)):
        q, k = torch.randn(b, tq, d, generator=g), torch.randn(b, tk, d, generator=g)
        _expect_tensor(
            _call(batched_scores, q, k),
            torch.bmm(q, k.transpose(1, 2)),
            f"q of shape {(b, tq, d)}, k of shape {(b, tk, d)}",
        )


# ---------------------------------------------------------------------------------------------
# Chapter 02: autograd


@_exercise("2.1", "a derivative with torch.autograd.grad")
def check_derivative_at(derivative_at: Callable[[Callable, float], float]) -> None:
    """``derivative_at(f, x)`` returns f'(x) as a float, computed by torch's autograd."""
    cases = (
        ("x**3 + 2*x at 2.0", lambda t: t**3 + 2 * t, 2.0, 14.0),
        ("sin(x) at 0.5", torch.sin, 0.5, math.cos(0.5)),
        ("exp(-x**2) at 1.0", lambda t: torch.exp(-(t**2)), 1.0, -2 * math.exp(-1.0)),
        ("a constant 3 at 1.0", lambda t: t * 0 + 3, 1.0, 0.0),
    )
    for name, f, x, expected in cases:
        _expect_number(derivative_at(f, x), expected, f"d/dx {name}", atol=1e-5, rtol=1e-5)


@_exercise("2.2", "sigmoid from the engine's operations")
def check_sigmoid(sigmoid: Callable[[Value], Value]) -> None:
    """``sigmoid(v)`` builds 1 / (1 + exp(-v)) from Value operations, so gradients flow."""
    for x in (-3.0, -0.5, 0.0, 0.7, 4.0):
        v = Value(x)
        out = sigmoid(v)
        if not isinstance(out, Value):
            raise CheckFailed(f"at x={x}: expected a Value, got {type(out).__name__}")
        out.backward()
        t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        ref = torch.sigmoid(t)
        ref.backward()
        _expect_number(out.data, ref.item(), f"sigmoid value at x={x}", atol=1e-9)
        if v.grad == 0.0 and t.grad.item() != 0.0:
            raise CheckFailed(
                f"at x={x}: no gradient reached the input; build the result from Value operations"
            )
        _expect_number(v.grad, t.grad.item(), f"gradient at x={x}", atol=1e-9)


@_exercise("2.3", "central finite differences")
def check_central_difference(central_difference: Callable[[Callable, float, float], float]) -> None:
    """``central_difference(f, x, eps)`` = (f(x + eps) - f(x - eps)) / (2 eps)."""
    cases = (
        ("exp at 1.0", math.exp, 1.0, math.exp(1.0)),
        ("x**3 at -2.0", lambda x: x**3, -2.0, 12.0),
        ("sin at 0.3", math.sin, 0.3, math.cos(0.3)),
    )
    for name, f, x, expected in cases:
        # With eps = 1e-3 central differences are within ~1e-6; forward differences are ~1e-3 off.
        _expect_number(central_difference(f, x, 1e-3), expected, f"{name} with eps=1e-3", atol=1e-5)


@_exercise("2.4", "the backward pass of a custom autograd Function")
def check_silu_function(silu_function: type) -> None:
    """``SiLU``, a ``torch.autograd.Function`` whose backward returns grad * d/dx [x·sigmoid(x)]."""
    if not (isinstance(silu_function, type) and issubclass(silu_function, torch.autograd.Function)):
        raise CheckFailed("expected a subclass of torch.autograd.Function")
    g = _generator(24)
    for shape in ((5,), (3, 4)):
        x = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
        upstream = torch.randn(shape, generator=g, dtype=torch.float64)
        (grad,) = torch.autograd.grad(silu_function.apply(x), x, upstream)
        (expected,) = torch.autograd.grad(F.silu(x), x, upstream)
        _expect_tensor(grad, expected, f"gradient for x of shape {shape}", atol=1e-10)
    x = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    if not torch.autograd.gradcheck(silu_function.apply, (x,), raise_exception=False):
        raise CheckFailed("torch.autograd.gradcheck disagrees with your backward")


# ---------------------------------------------------------------------------------------------
# Chapter 03: neural networks


@_exercise("3.1", "a numerically stable softmax")
def check_stable_softmax(stable_softmax: Callable[..., torch.Tensor]) -> None:
    """``stable_softmax(x, dim)`` equals ``torch.softmax(x, dim)``, also for logits like 1000."""
    g = _generator(31)
    for shape, dim in (((4, 5), -1), ((3, 6), 0), ((2, 3, 4), 1), ((1,), 0)):
        x = torch.randn(shape, generator=g) * 4
        _expect_tensor(_call(stable_softmax, x, dim), torch.softmax(x, dim), f"x of shape {shape}, dim={dim}")
    x = torch.tensor([[1000.0, 1001.0, 999.0], [-1000.0, -1002.0, -1001.0]])
    _expect_tensor(_call(stable_softmax, x, -1), torch.softmax(x, -1), "logits near ±1000 (subtract the max)")
    x = torch.tensor([[0.0, float("-inf"), 2.0]])
    _expect_tensor(_call(stable_softmax, x, -1), torch.softmax(x, -1), "a logit of -inf (a masked position)")


@_exercise("3.2", "cross-entropy from its formula")
def check_cross_entropy(cross_entropy: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """``cross_entropy(logits, targets)`` = −(1/N) Σᵢ log softmax(logitsᵢ)[targetᵢ]."""
    g = _generator(32)
    for n, c in ((1, 2), (8, 5), (16, 10)):
        logits = torch.randn(n, c, generator=g) * 3
        targets = torch.randint(0, c, (n,), generator=g)
        got = _call(cross_entropy, logits, targets)
        _expect_tensor(got, F.cross_entropy(logits, targets), f"logits of shape {(n, c)}", atol=1e-5)
    logits = torch.tensor([[500.0, 0.0, -500.0], [0.0, 800.0, 1.0]])
    targets = torch.tensor([0, 2])
    _expect_tensor(
        _call(cross_entropy, logits, targets), F.cross_entropy(logits, targets),
        "large logits (use the log-sum-exp form, not log(softmax))", rtol=1e-5,
    )


@_exercise("3.3", "one training step by hand")
def check_train_step(train_step: Callable[[nn.Module, torch.Tensor, torch.Tensor, float], float]) -> None:
    """``train_step(model, x, y, lr)``: zero the gradients, cross-entropy loss, backward, then
    p -= lr · p.grad for every parameter without recording it; return the loss as a float."""
    g = _generator(33)
    for step, lr in enumerate((0.1, 0.5)):
        with torch.random.fork_rng():  # fixed initial weights, and the caller's RNG untouched
            torch.manual_seed(33 + step)
            model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        reference = copy.deepcopy(model)
        for p in model.parameters():  # stale gradients from an earlier step must not leak in
            p.grad = torch.ones_like(p)
        x, y = torch.randn(6, 4, generator=g), torch.randint(0, 3, (6,), generator=g)
        optimizer = torch.optim.SGD(reference.parameters(), lr=lr)
        optimizer.zero_grad()
        expected_loss = F.cross_entropy(reference(x), y)
        expected_loss.backward()
        optimizer.step()
        got = train_step(model, x, y, lr)
        _expect_number(got, expected_loss.item(), f"step {step + 1}: the returned loss", atol=1e-6, rtol=1e-5)
        for (name, p), q in zip(model.named_parameters(), reference.parameters()):
            if p.requires_grad is False or p.grad_fn is not None:
                raise CheckFailed(f"step {step + 1}: parameter {name} is no longer a trainable leaf; update it under torch.no_grad()")
            _expect_tensor(p.detach(), q.detach(), f"step {step + 1}, lr={lr}: parameter {name} after the update", atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Chapter 04: attention


@_exercise("4.1", "scaled dot-product attention")
def check_attention(attention: Callable[..., torch.Tensor]) -> None:
    """``attention(q, k, v, mask=None)`` = softmax(q kᵀ / √d + mask) v, mask bool (True = attend)."""
    g = _generator(41)
    for b, tq, tk, d, dv in ((1, 1, 1, 1, 1), (2, 3, 5, 4, 6), (3, 4, 4, 8, 8)):
        q, k = torch.randn(b, tq, d, generator=g), torch.randn(b, tk, d, generator=g)
        v = torch.randn(b, tk, dv, generator=g)
        case = f"q {(b, tq, d)}, k {(b, tk, d)}, v {(b, tk, dv)}"
        _expect_tensor(_call(attention, q, k, v), F.scaled_dot_product_attention(q, k, v), case)
        mask = torch.rand(b, tq, tk, generator=g) > 0.3
        mask[..., 0] = True
        _expect_tensor(
            _call(attention, q, k, v, mask), F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
            f"{case} with a mask (True = may attend)",
        )


@_exercise("4.2", "the causal mask")
def check_causal_mask(make_causal_mask: Callable[[int], torch.Tensor]) -> None:
    """``make_causal_mask(T)``: (T, T) bool, True where key j ≤ query i (the diagonal included)."""
    for size in (1, 2, 5):
        expected = torch.ones(size, size, dtype=torch.bool).tril()
        _expect_tensor(make_causal_mask(size), expected, f"T={size}")


@_exercise("4.3", "splitting into heads")
def check_split_heads(split_heads: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
    """``split_heads(x, n_heads)``: (B, T, D) -> (B, n_heads, T, D / n_heads); head h gets
    features h·D/n_heads to (h+1)·D/n_heads − 1 of every token."""
    g = _generator(43)
    for b, t, d, h in ((1, 1, 2, 1), (2, 3, 8, 2), (2, 5, 12, 4)):
        x = torch.randn(b, t, d, generator=g)
        expected = x.reshape(b, t, h, d // h).transpose(1, 2)
        _expect_tensor(_call(split_heads, x, h), expected, f"x of shape {(b, t, d)}, n_heads={h}")


# ---------------------------------------------------------------------------------------------
# Chapter 05: BERT


@_exercise("5.1", "WordPiece: greedy longest match")
def check_wordpiece(wordpiece: Callable[[str, dict], list]) -> None:
    """``wordpiece(word, vocab)`` cuts a word into the longest vocabulary pieces from the left,
    ``##`` before every piece but the first; ``["[UNK]"]`` if some part matches nothing."""
    from course_lib.pretrained import bundled_model_path
    from course_lib.wordpiece import load_vocab, wordpiece as reference

    vocab = load_vocab(bundled_model_path())
    for word in ("the", "tokenization", "unbelievably", "xyzzyq", "transformers", "a", "☃x", "##"):
        expected = reference(word, vocab)
        got = wordpiece(word, vocab)
        if got != expected:
            raise CheckFailed(f"for {word!r}: got {got!r} ≠ expected {expected!r}")


@_exercise("5.2", "BERT's input embeddings")
def check_bert_embed(embed: Callable[..., torch.Tensor]) -> None:
    """``embed(embeddings, input_ids, token_type_ids)``: word + position + token-type embeddings,
    summed, then the module's LayerNorm (evaluation mode: no dropout)."""
    from course_lib.bert import BertConfig, BertEmbeddings

    g = _generator(52)
    with torch.random.fork_rng():
        torch.manual_seed(52)
        module = BertEmbeddings(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
                                           num_attention_heads=2, intermediate_size=16, max_position_embeddings=12)).eval()
        with torch.no_grad():
            module.LayerNorm.weight.uniform_(0.5, 1.5)
            module.LayerNorm.bias.uniform_(-0.5, 0.5)
    for b, t in ((1, 1), (2, 5), (3, 12)):
        ids = torch.randint(0, 50, (b, t), generator=g)
        types = torch.randint(0, 2, (b, t), generator=g)
        with torch.no_grad():
            _expect_tensor(_call(embed, module, ids, types), module(ids, types), f"input_ids of shape {(b, t)}")


@_exercise("5.3", "mean pooling over real tokens")
def check_mean_pool(mean_pool: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """``mean_pool(hidden, attention_mask)``: (B, T, H), (B, T) of 1/0 -> (B, H), the average of
    each sequence's real-token vectors."""
    from course_lib.bert import mean_pool as reference

    g = _generator(53)
    for b, t, h in ((1, 1, 4), (2, 5, 3), (4, 7, 8)):
        hidden = torch.randn(b, t, h, generator=g)
        lengths = torch.randint(1, t + 1, (b,), generator=g)
        mask = (torch.arange(t)[None] < lengths[:, None]).long()
        mask[0] = 1  # one full-length sequence
        if b > 1:
            mask[-1, 1:] = 0  # and one that is a single token followed by padding
        _expect_tensor(_call(mean_pool, hidden, mask), reference(hidden, mask), f"hidden of shape {(b, t, h)} with padding")


# ---------------------------------------------------------------------------------------------
# Chapter 06: pretraining


@_exercise("6.1", "the next-token loss")
def check_next_token_loss(next_token_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """``next_token_loss(logits, idx)``: the logits at position t predict token t+1, so compare
    logits[:, :-1] with idx[:, 1:] (cross-entropy, mean over all predicted positions)."""
    from course_lib.gpt import causal_lm_loss

    g = _generator(61)
    for b, t, v in ((1, 2, 3), (2, 5, 7), (3, 9, 11)):
        logits = torch.randn(b, t, v, generator=g) * 2
        idx = torch.randint(0, v, (b, t), generator=g)
        _expect_tensor(_call(next_token_loss, logits, idx), causal_lm_loss(logits, idx), f"logits of shape {(b, t, v)}")


@_exercise("6.2", "top-k filtering of logits")
def check_top_k_filter(top_k_filter: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
    """``top_k_filter(logits, k)``: (B, V) logits with every entry below the k-th largest of its
    row set to -inf; the k largest keep their values."""
    g = _generator(62)
    for b, v, k in ((1, 5, 1), (3, 10, 3), (2, 7, 7)):
        logits = torch.randn(b, v, generator=g)
        kth = torch.topk(logits, k, dim=-1).values[:, -1:]
        expected = logits.masked_fill(logits < kth, float("-inf"))
        _expect_tensor(_call(top_k_filter, logits, k), expected, f"logits of shape {(b, v)}, k={k}")


@_exercise("6.3", "choosing the tokens to mask")
def check_select_for_masking(select: Callable[..., torch.Tensor]) -> None:
    """``select(maskable, probability, generator)``: a bool tensor like ``maskable``, True for
    positions chosen independently with ``probability``, never where ``maskable`` is False."""
    maskable = torch.ones(400, 100, dtype=torch.bool)
    maskable[:, 0] = maskable[:, -1] = False
    maskable[:200, 60:] = False
    for probability in (0.15, 0.4):
        chosen = select(maskable, probability, _generator(63))
        if not isinstance(chosen, torch.Tensor) or chosen.dtype != torch.bool or chosen.shape != maskable.shape:
            raise CheckFailed(f"expected a bool tensor of shape {tuple(maskable.shape)}, got "
                              f"{getattr(chosen, 'dtype', type(chosen).__name__)} {tuple(getattr(chosen, 'shape', ()))}")
        if (chosen & ~maskable).any():
            raise CheckFailed("a position that is not maskable ([CLS], [SEP], padding) was chosen")
        rate = chosen.sum().item() / maskable.sum().item()
        if abs(rate - probability) > 0.02:
            raise CheckFailed(f"with probability={probability}, the fraction chosen is not close to it")
        rows = chosen[200:].float().mean(dim=1)
        if rows.std() < 0.01:
            raise CheckFailed("every row has the same number chosen: choose each position independently")


# ---------------------------------------------------------------------------------------------
# Chapter 07: fine-tuning


def _expect_metric_dict(got: Any, expected: dict[str, float], case: str) -> None:
    if not isinstance(got, dict):
        raise CheckFailed(f"{case}: expected a dict like {{'accuracy': ..., 'f1': ...}}, got {type(got).__name__}")
    for key, value in expected.items():
        if key not in got:
            raise CheckFailed(f"{case}: the dict has no {key!r} entry (its keys: {sorted(got)})")
        number = got[key]
        number = number.item() if hasattr(number, "item") else number
        _expect_number(number, value, f"{case}, {key!r}", atol=1e-6)


@_exercise("7.1", "compute_metrics for the Trainer")
def check_compute_metrics(compute_metrics: Callable[[Any], dict]) -> None:
    """``compute_metrics(eval_prediction)``: NumPy logits (N, C) in ``.predictions`` and labels in
    ``.label_ids`` → ``{"accuracy": ..., "f1": ...}`` with F1 averaged over the classes (macro)."""
    from transformers import EvalPrediction

    from course_lib.finetune import classification_metrics

    if not callable(compute_metrics):
        raise CheckFailed(f"expected a function, got {type(compute_metrics).__name__}")
    g = _generator(71)
    cases = []
    for n, c in ((40, 2), (60, 3)):
        labels = torch.randint(0, c, (n,), generator=g)
        logits = torch.randn(n, c, generator=g) + 1.5 * F.one_hot(labels, c)
        cases.append((f"{n} predictions of {c} classes", logits, labels))
    cases.append(("a model that always predicts class 0", torch.tensor([[2.0, -1.0]] * 6), torch.tensor([0, 1, 1, 0, 1, 1])))
    for case, logits, labels in cases:
        got = compute_metrics(EvalPrediction(predictions=logits.numpy(), label_ids=labels.numpy()))
        _expect_metric_dict(got, classification_metrics(logits, labels), case)


@_exercise("7.2", "the warm-up and linear-decay factor")
def check_warmup_linear_factor(warmup_linear_factor: Callable[[int, int, int], float]) -> None:
    """``warmup_linear_factor(step, warmup_steps, total_steps)``: the learning-rate multiplier,
    step / warmup_steps during warm-up, then falling linearly to 0 at total_steps (never below)."""
    from transformers import get_linear_schedule_with_warmup

    if not callable(warmup_linear_factor):
        raise CheckFailed(f"expected a function, got {type(warmup_linear_factor).__name__}")
    for warmup, total in ((10, 100), (0, 50), (3, 7)):
        optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
        reference = get_linear_schedule_with_warmup(optimizer, warmup, total).lr_lambdas[0]
        for step in sorted({0, 1, warmup // 2, warmup, warmup + 1, (warmup + total) // 2, total - 1, total, total + 5}):
            _expect_number(warmup_linear_factor(step, warmup, total), reference(step),
                           f"step={step}, warmup_steps={warmup}, total_steps={total}", atol=1e-9)


@_exercise("7.3", "expected calibration error")
def check_expected_calibration_error(ece: Callable[[torch.Tensor, torch.Tensor, int], float]) -> None:
    """``ece(probabilities, labels, n_bins)``: bin predictions by confidence (highest probability)
    into n_bins equal bins of [0, 1]; the |accuracy - mean confidence| of each bin, weighted by
    the fraction of predictions in it, summed."""
    from course_lib.train import expected_calibration_error

    g = _generator(73)
    cases = [("a hand-made example of 5", torch.tensor([[0.95, 0.05], [0.1, 0.9], [0.35, 0.65], [0.6, 0.4], [0.0, 1.0]]),
              torch.tensor([0, 0, 1, 0, 1]), 5)]
    for n, c, bins in ((200, 2, 10), (300, 4, 15)):
        probabilities = torch.softmax(3 * torch.randn(n, c, generator=g), -1)
        cases.append((f"{n} predictions of {c} classes, n_bins={bins}", probabilities, torch.randint(0, c, (n,), generator=g), bins))
    for case, probabilities, labels, bins in cases:
        got = _call(ece, probabilities, labels, bins)
        _expect_number(got, expected_calibration_error(probabilities, labels, bins), case, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Chapter 08: parameter-efficient fine-tuning


@_exercise("8.1", "the LoRA forward pass")
def check_lora_forward(lora_forward: Callable[..., torch.Tensor]) -> None:
    """``lora_forward(x, weight, bias, A, B, alpha)``: the frozen layer ``x Wᵀ + b`` plus the
    update ``(alpha / r) · x Aᵀ Bᵀ``, with r = A.shape[0]."""
    g = _generator(81)
    for batch, d_in, d_out, r, alpha in ((3, 8, 5, 2, 4.0), (2, 16, 16, 4, 4.0), (4, 6, 10, 1, 16.0)):
        x = torch.randn(batch, d_in, generator=g)
        weight, bias = torch.randn(d_out, d_in, generator=g), torch.randn(d_out, generator=g)
        a, b = torch.randn(r, d_in, generator=g), torch.randn(d_out, r, generator=g)
        expected = x @ weight.T + bias + (alpha / r) * (x @ a.T @ b.T)
        got = _call(lora_forward, x, weight, bias, a, b, alpha)
        _expect_tensor(got, expected, f"x {_shape(x)}, r={r}, alpha={alpha}")


@_exercise("8.2", "merging the update into the weight")
def check_merge_lora_weight(merge: Callable[..., torch.Tensor]) -> None:
    """``merge(weight, A, B, alpha)``: a new matrix W + (alpha / r) · B A (inputs unchanged), so
    the merged layer computes what the LoRA layer did."""
    g = _generator(82)
    for d_in, d_out, r, alpha in ((8, 5, 2, 4.0), (16, 16, 4, 4.0), (6, 10, 1, 16.0)):
        weight = torch.randn(d_out, d_in, generator=g)
        a, b = torch.randn(r, d_in, generator=g), torch.randn(d_out, r, generator=g)
        _expect_tensor(_call(merge, weight, a, b, alpha), weight + (alpha / r) * (b @ a),
                       f"weight {_shape(weight)}, r={r}, alpha={alpha}")


@_exercise("8.3", "freeze everything but the named parts")
def check_freeze_all_but(freeze_all_but: Callable[[nn.Module, list], int]) -> None:
    """``freeze_all_but(model, keep)``: ``requires_grad`` True exactly for the parameters whose
    name contains one of the strings in ``keep``, False for all others; return how many numbers
    (elements) remain trainable."""
    with torch.random.fork_rng():
        torch.manual_seed(83)
        model = nn.ModuleDict({
            "encoder": nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 8)),
            "lora_A": nn.Linear(8, 2, bias=False), "classifier": nn.Linear(8, 3),
        })
    names = dict(model.named_parameters())
    for keep in (["classifier"], ["lora_", "classifier"], ["encoder.0", "encoder.1"], []):
        for p in model.parameters():
            p.requires_grad_(True)
        model.encoder[0].weight.requires_grad_(False)  # frozen before: kept means trainable
        got = freeze_all_but(model, keep)
        expected = {n: any(k in n for k in keep) for n in names}
        actual = {n: p.requires_grad for n, p in names.items()}
        wrong = sorted(n for n in names if actual[n] != expected[n])
        if wrong:
            raise CheckFailed(f"keep={keep}: requires_grad is wrong for {wrong[:3]}")
        count = sum(p.numel() for n, p in names.items() if expected[n])
        _expect_number(got, count, f"keep={keep}: the number of trainable elements", atol=0)


# ---------------------------------------------------------------------------------------------
# Chapter 09: compression


@_exercise("9.1", "a magnitude-pruning mask")
def check_magnitude_mask(magnitude_mask: Callable[[torch.Tensor, float], torch.Tensor]) -> None:
    """``magnitude_mask(weight, amount)``: a float 0/1 tensor like ``weight`` with 0 at the
    ``round(amount · weight.numel())`` entries of smallest absolute value (as
    ``torch.nn.utils.prune.l1_unstructured``), 1 elsewhere."""
    from course_lib.prune import magnitude_mask as reference

    g = _generator(91)
    for shape, amount in (((6, 5), 0.5), ((10, 20), 0.3), ((4, 4), 0.0), ((3, 7), 1.0)):
        weight = torch.randn(shape, generator=g) - 0.2  # negative weights of large size must be kept
        _expect_tensor(_call(magnitude_mask, weight, amount), reference(weight, amount),
                       f"weight {_shape(weight)}, amount={amount}", atol=0, rtol=0)


@_exercise("9.2", "symmetric int8 quantization of a tensor")
def check_symmetric_quantize(symmetric_quantize: Callable[[torch.Tensor, int], tuple]) -> None:
    """``symmetric_quantize(x, bits)`` → ``(q, scale)``: scale = max|x| / (2^(bits-1) - 1) as a
    0-dim float tensor, q = round(x / scale) clamped to ±(2^(bits-1) - 1), as torch.int8."""
    from course_lib.quantize import qparams, quantize

    g = _generator(92)
    for shape, bits in (((5, 7), 8), ((30,), 8), ((4, 6), 4)):
        x = torch.randn(shape, generator=g) * 3
        out = _call(symmetric_quantize, x, bits)
        if not isinstance(out, tuple) or len(out) != 2:
            raise CheckFailed(f"x {_shape(x)}, bits={bits}: expected a tuple (q, scale), got {type(out).__name__}")
        q, scale = out
        params = qparams(x, bits, symmetric=True)
        case = f"x {_shape(x)}, bits={bits}"
        _expect_number(scale, params.scale.item(), f"{case}: scale", atol=1e-7, rtol=1e-6)
        _expect_tensor(q, quantize(x, params), f"{case}: q", atol=0, rtol=0)


@_exercise("9.3", "one scale per output channel")
def check_per_channel_scales(per_channel_scales: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
    """``per_channel_scales(weight, bits)``: for a weight (out, in), the symmetric scale of each
    output row, max|row| / (2^(bits-1) - 1), shape (out,)."""
    from course_lib.quantize import qparams

    g = _generator(93)
    for shape, bits in (((4, 9), 8), ((16, 3), 8), ((5, 5), 4)):
        weight = torch.randn(shape, generator=g) * torch.logspace(-2, 1, shape[0])[:, None]
        _expect_tensor(_call(per_channel_scales, weight, bits), qparams(weight, bits, axis=0).scale,
                       f"weight {_shape(weight)}, bits={bits}", atol=1e-8, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Chapter 10: deployment


@_exercise("10.1", "padding token ids into a batch")
def check_pad_batch(pad_batch: Callable[[list, int], tuple]) -> None:
    """``pad_batch(sequences, pad_id)``: lists of token ids → ``(input_ids, attention_mask)``, both
    int64 of shape (batch, longest), ids padded on the right with ``pad_id``, mask 1 on real tokens."""
    from torch.nn.utils.rnn import pad_sequence

    g = _generator(103)
    cases = [([[101, 7, 102]], 0), ([[101, 2023, 102], [101, 102]], 0), ([[5, 6, 7], [8]], 1), ([[4, 4], [9, 9]], 2)]
    cases += [([torch.randint(1, 1000, (n,), generator=g).tolist() for n in (4, 9, 1, 6)], 3)]
    for sequences, pad_id in cases:
        case = f"lengths {[len(s) for s in sequences]}, pad_id={pad_id}"
        out = pad_batch([list(s) for s in sequences], pad_id)
        if not isinstance(out, tuple) or len(out) != 2:
            raise CheckFailed(f"{case}: expected a tuple (input_ids, attention_mask), got {type(out).__name__}")
        tensors = [torch.tensor(s, dtype=torch.long) for s in sequences]
        ids = pad_sequence(tensors, batch_first=True, padding_value=pad_id)
        mask = pad_sequence([torch.ones_like(t) for t in tensors], batch_first=True, padding_value=0)
        _expect_tensor(out[0], ids, f"{case}: input_ids", atol=0, rtol=0)
        _expect_tensor(out[1], mask, f"{case}: attention_mask", atol=0, rtol=0)


def _describe_payload(payload: Any) -> str:
    def short(value: Any) -> str:
        if isinstance(value, str) and len(value) > 12:
            return f"'{value[0]}' * {len(value)}"
        if isinstance(value, list) and len(value) > 3:
            return f"[{short(value[0])}] * {len(value)}"
        return repr(value)

    if isinstance(payload, dict):
        return "{" + ", ".join(f"{k!r}: {short(v)}" for k, v in payload.items()) + "}"
    return short(payload)


@_exercise("10.2", "validating a request body")
def check_validate_texts(validate_texts: Callable[[Any], list]) -> None:
    """``validate_texts(payload)``: for a valid body (a dict whose only key is ``"texts"``: one
    string, or a list of 1 to 32 strings; each 1 to 2000 characters after stripping spaces at both
    ends) the list of stripped texts; for anything else a ``ValueError``. The service's
    ``PredictRequest`` is the reference."""
    from course_lib.serve import MAX_CHARS, MAX_TEXTS, PredictRequest

    good = [{"texts": "A fine film."}, {"texts": "  padded  "}, {"texts": ["one", " two ", "three"]},
            {"texts": ["x"] * MAX_TEXTS}, {"texts": "y" * MAX_CHARS}]
    bad = [{"texts": ""}, {"texts": "   "}, {"texts": []}, {"texts": ["ok", ""]}, {"texts": ["z"] * (MAX_TEXTS + 1)},
           {"texts": "w" * (MAX_CHARS + 1)}, {"texts": 42}, {"texts": ["ok", None]}, {"texts": None},
           {"text": "a typo in the key"}, {"texts": "ok", "extra": 1}, {}, ["not", "a", "dict"], "texts"]
    for payload in good:
        expected = PredictRequest.model_validate(payload).texts
        got = validate_texts(payload)
        if got != expected:
            shown = got if not isinstance(got, list) or len(got) <= 3 else f"a list of {len(got)}"
            raise CheckFailed(f"payload {_describe_payload(payload)}: returned {shown!r}, expected "
                              f"{expected if len(expected) <= 3 else f'a list of {len(expected)}'!r}")
    for payload in bad:
        try:
            validate_texts(payload)
        except ValueError:
            continue
        raise CheckFailed(f"payload {_describe_payload(payload)} is invalid: expected a ValueError, got a return value")


@_exercise("10.3", "a latency percentile")
def check_percentile(percentile: Callable[[list, float], float]) -> None:
    """``percentile(values, q)``: the q-th percentile (0 ≤ q ≤ 100) of a list of numbers in any
    order, interpolating linearly between the two nearest ranks (as ``numpy.percentile``)."""
    import numpy as np

    g = _generator(101)
    cases = [([5.0], 50), ([3.0, 1.0, 2.0], 50), ([4.0, 1.0, 3.0, 2.0], 50), ([10.0, 0.0], 25)]
    cases += [(torch.rand(n, generator=g).mul(40).add(5).tolist(), q) for n in (20, 101) for q in (0, 50, 95, 99, 100)]
    for values, q in cases:
        case = f"{len(values)} values, q={q}"
        original = list(values)
        got = percentile(values, q)
        if values != original:
            raise CheckFailed(f"{case}: the list was changed in place (sorted?); sort a copy")
        _expect_number(got, float(np.percentile(original, q)), case, atol=1e-9, rtol=1e-9)


# ---------------------------------------------------------------------------------------------
# Chapter 11: scaling


@_exercise("11.1", "gradient accumulation")
def check_accumulate_gradients(accumulate_gradients: Callable[[nn.Module, torch.Tensor, torch.Tensor, int], None]) -> None:
    """``accumulate_gradients(model, x, y, micro_batches)``: leaves in every parameter's ``.grad``
    the gradient of the mean cross-entropy over the whole batch, computed ``micro_batches`` pieces
    at a time (``x.split`` into pieces of ``ceil(len(x) / micro_batches)``, the last maybe smaller)."""
    g = _generator(112)
    for batch, micro in ((8, 1), (8, 4), (10, 3), (7, 7)):
        with torch.random.fork_rng(devices=[]):  # the check's own weights; the learner's random state is untouched
            torch.manual_seed(batch)
            model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
        x, y = torch.randn(batch, 5, generator=g), torch.randint(0, 3, (batch,), generator=g)
        reference = copy.deepcopy(model)
        F.cross_entropy(reference(x), y).backward()
        for p in model.parameters():
            p.grad = torch.full_like(p, 7.0)  # stale gradients from an earlier step must not survive
        _call(accumulate_gradients, model, x, y, micro)
        for (name, p), r in zip(model.named_parameters(), reference.parameters()):
            if p.grad is None:
                raise CheckFailed(f"batch {batch} in {micro} micro-batches: {name}.grad is None")
            _expect_tensor(p.grad, r.grad, f"batch {batch} in {micro} micro-batches: {name}.grad", atol=1e-6, rtol=1e-5)


@_exercise("11.2", "the memory of the training state")
def check_training_state_bytes(training_state_bytes: Callable[[int, str, str], int]) -> None:
    """``training_state_bytes(parameters, precision, optimizer)``: bytes of weights + gradients +
    optimizer state for ``precision`` in float32 / bfloat16 / mixed and ``optimizer`` in adamw /
    sgd_momentum / sgd, as ``course_lib.memory.bytes_per_parameter`` counts them."""
    from course_lib.memory import OPTIMIZERS, PRECISIONS, bytes_per_parameter

    for parameters in (1, 1000, 7_000_000_000):
        for precision in PRECISIONS:
            for optimizer in OPTIMIZERS:
                expected = parameters * sum(bytes_per_parameter(precision, optimizer).values())
                got = training_state_bytes(parameters, precision, optimizer)
                _expect_number(got, expected, f"{parameters:,} parameters, {precision}, {optimizer}", atol=0.5)


@_exercise("11.3", "the indices a rank reads")
def check_rank_indices(rank_indices: Callable[[int, int, int], list]) -> None:
    """``rank_indices(n, rank, world_size)``: the sample indices rank ``rank`` of ``world_size``
    reads from a data set of ``n`` (no shuffling): the indices 0..n-1, extended by repeating them
    from the start until the count divides evenly, then every ``world_size``-th from ``rank``
    (as ``torch.utils.data.DistributedSampler(shuffle=False)``)."""
    from torch.utils.data import DistributedSampler

    for n, world in ((8, 2), (10, 4), (3, 4), (1, 2), (12, 3)):
        for rank in range(world):
            expected = list(DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=False))
            got = rank_indices(n, rank, world)
            if isinstance(got, torch.Tensor):
                got = got.tolist()
            if not isinstance(got, list):
                raise CheckFailed(f"n={n}, rank {rank} of {world}: expected a list, got {type(got).__name__}")
            if got != expected:
                raise CheckFailed(f"n={n}, rank {rank} of {world}: got {got}, expected {expected}")
