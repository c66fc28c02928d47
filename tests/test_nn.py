"""course_lib.nn against torch: activations, softmax family, Linear, cross-entropy, MSE."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib import nn as cnn

# float32 formulas with different rounding: agree to a few ulps; float64 to 1e-12.
F32 = dict(rtol=1e-5, atol=1e-6)
F64 = dict(rtol=1e-12, atol=1e-12)


def _inputs(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 7, generator=g, dtype=dtype) * 10
    extremes = torch.tensor([-1000.0, -88.0, -1.0, 0.0, 1.0, 88.0, 1000.0], dtype=dtype)
    return torch.cat([x, extremes[None]])


@pytest.mark.parametrize("dtype, tol", [(torch.float32, F32), (torch.float64, F64)])
@pytest.mark.parametrize(
    "ours, theirs",
    [
        (cnn.relu, torch.relu),
        (cnn.gelu, F.gelu),
        (lambda x: cnn.gelu(x, "tanh"), lambda x: F.gelu(x, approximate="tanh")),
        (cnn.sigmoid, torch.sigmoid),
        (cnn.tanh, torch.tanh),
    ],
    ids=["relu", "gelu", "gelu-tanh", "sigmoid", "tanh"],
)
def test_activations_match_torch_including_extremes(ours, theirs, dtype, tol):
    x = _inputs(dtype)
    out = ours(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, theirs(x), **tol)


@pytest.mark.parametrize("ours, theirs", [(cnn.sigmoid, torch.sigmoid), (cnn.tanh, torch.tanh), (cnn.gelu, F.gelu)])
def test_activation_gradients_match_torch(ours, theirs):
    # exactly 0 included: where |x| is computed with abs(), the slope there comes out 0
    grid = torch.linspace(-20, 20, 201, dtype=torch.float64)
    x = torch.cat([grid, torch.tensor([0.0, -0.0, 1e-30, -1e-30, -1000.0, 1000.0], dtype=torch.float64)])
    x.requires_grad_(True)
    (g_ours,) = torch.autograd.grad(ours(x).sum(), x)
    (g_theirs,) = torch.autograd.grad(theirs(x).sum(), x)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, F32), (torch.float64, F64)])
def test_softmax_family_matches_torch(dim, dtype, tol):
    x = _inputs(dtype)
    torch.testing.assert_close(cnn.softmax(x, dim), torch.softmax(x, dim), **tol)
    torch.testing.assert_close(cnn.log_softmax(x, dim), torch.log_softmax(x, dim), **tol)
    torch.testing.assert_close(cnn.logsumexp(x, dim), torch.logsumexp(x, dim), **tol)


def test_softmax_handles_minus_infinity_like_torch():
    x = torch.tensor([[0.0, float("-inf"), 1.0], [float("-inf")] * 3])
    torch.testing.assert_close(cnn.softmax(x[:1]), torch.softmax(x[:1], -1))
    torch.testing.assert_close(cnn.logsumexp(x), torch.logsumexp(x, -1))  # all -inf row: -inf


@pytest.mark.parametrize("bad_dim", [2, -3])
def test_softmax_rejects_a_missing_dimension(bad_dim):
    with pytest.raises(ValueError, match=r"dim must be in \[-2, 1\]"):
        cnn.softmax(torch.zeros(2, 3), bad_dim)


def test_activations_reject_non_tensors():
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got list"):
        cnn.relu([1.0])
    with pytest.raises(ValueError, match="approximate must be 'none' or 'tanh'"):
        cnn.gelu(torch.zeros(1), "erf")


def test_linear_matches_nn_linear_with_the_same_weights():
    ours = cnn.Linear(6, 4)
    theirs = nn.Linear(6, 4)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(3, 5, 6)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-6, atol=1e-6)
    no_bias = cnn.Linear(6, 4, bias=False)
    torch.testing.assert_close(no_bias(x), x @ no_bias.weight.T)
    assert no_bias.bias is None and "bias=False" in repr(no_bias)


def test_linear_initialisation_is_bounded_like_pytorch():
    layer = cnn.Linear(100, 50)
    assert layer.weight.abs().max() <= 0.1 and layer.bias.abs().max() <= 0.1
    assert layer.weight.std() > 0.04  # uniform on ±0.1 has std 0.058: not all zeros


def test_linear_rejects_wrong_sizes():
    with pytest.raises(ValueError, match=r"last dimension in_features=6, got shape \(2, 5\)"):
        cnn.Linear(6, 4)(torch.randn(2, 5))
    with pytest.raises(ValueError, match="in_features must be an int >= 1, got 0"):
        cnn.Linear(0, 4)


def _classification(n=12, c=5, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g) * scale, torch.randint(0, c, (n,), generator=g)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.5])
def test_cross_entropy_matches_torch(reduction, label_smoothing):
    logits, targets = _classification()
    targets[[2, 7]] = -100
    expected = F.cross_entropy(logits, targets, reduction=reduction, label_smoothing=label_smoothing)
    got = cnn.cross_entropy(logits, targets, reduction=reduction, label_smoothing=label_smoothing)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_cross_entropy_custom_ignore_index_and_gradients():
    logits, targets = _classification()
    targets[0] = 3
    logits64 = logits.double().requires_grad_()
    (g_ours,) = torch.autograd.grad(cnn.cross_entropy(logits64, targets, ignore_index=3), logits64)
    (g_theirs,) = torch.autograd.grad(F.cross_entropy(logits64, targets, ignore_index=3), logits64)
    torch.testing.assert_close(g_ours, g_theirs)


def test_cross_entropy_is_stable_where_the_formula_overflows():
    logits, targets = _classification(scale=400.0)
    assert torch.isnan(cnn.cross_entropy_naive(logits, targets))
    torch.testing.assert_close(cnn.cross_entropy(logits, targets), F.cross_entropy(logits, targets))
    small, small_targets = _classification(scale=1.0)
    torch.testing.assert_close(cnn.cross_entropy_naive(small, small_targets), F.cross_entropy(small, small_targets))


def test_cross_entropy_of_only_ignored_targets_is_nan_like_torch():
    logits, _ = _classification()
    ignored = torch.full((12,), -100)
    assert torch.isnan(cnn.cross_entropy(logits, ignored)) and torch.isnan(F.cross_entropy(logits, ignored))
    assert cnn.cross_entropy(logits, ignored, reduction="sum").item() == 0.0


@pytest.mark.parametrize(
    "logits, targets, kwargs, error, message",
    [
        (torch.zeros(3), torch.zeros(3, dtype=torch.long), {}, ValueError, r"logits must have shape \(N, C\)"),
        (torch.zeros(3, 2), torch.zeros(4, dtype=torch.long), {}, ValueError, r"targets must have shape \(3,\)"),
        (torch.zeros(3, 2), torch.zeros(3), {}, TypeError, "integer class indices"),
        (torch.zeros(3, 2), torch.tensor([0, 2, 1]), {}, ValueError, r"targets must be in \[0, 1\]"),
        (torch.zeros(3, 2), torch.tensor([0, 1, 1]), {"label_smoothing": 1.5}, ValueError, "label_smoothing"),
        (torch.zeros(3, 2), torch.tensor([0, 1, 1]), {"reduction": "avg"}, ValueError, "reduction must be"),
    ],
)
def test_cross_entropy_rejects_bad_input(logits, targets, kwargs, error, message):
    with pytest.raises(error, match=message):
        cnn.cross_entropy(logits, targets, **kwargs)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_matches_torch(reduction):
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    torch.testing.assert_close(cnn.mse_loss(a, b, reduction), F.mse_loss(a, b, reduction=reduction))


def test_mse_refuses_to_broadcast():
    with pytest.raises(ValueError, match=r"same shape, got \(4, 1\) and \(4,\)"):
        cnn.mse_loss(torch.zeros(4, 1), torch.zeros(4))
