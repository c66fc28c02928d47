"""course_lib.attention against F.scaled_dot_product_attention and nn.MultiheadAttention."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib import attention as A

# float32: sums in a different order, a few ulps; float64: rounding only.
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float64: dict(rtol=1e-10, atol=1e-12)}
SHAPES = [(1, 1, 1, 1, 4), (2, 3, 5, 7, 8), (2, 4, 16, 16, 32)]  # (B, H, Tq, Tk, d)


def _qkv(b, h, tq, tk, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, tq, d, generator=g, dtype=dtype), torch.randn(b, h, tk, d, generator=g, dtype=dtype),
            torch.randn(b, h, tk, d + 1, generator=g, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_sdpa_without_a_mask(shape, dtype):
    q, k, v = _qkv(*shape, dtype)
    out, weights = A.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), **TOL[dtype])
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1], dtype=dtype), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_sdpa_with_bool_and_additive_masks(shape, dtype):
    q, k, v = _qkv(*shape, dtype)
    b, h, tq, tk, _ = shape
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(b, 1, tq, tk, generator=g) > 0.4  # broadcasts over heads
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(A.scaled_dot_product_attention(q, k, v, mask)[0], expected, **TOL[dtype])
    additive = torch.randn(tq, tk, generator=g, dtype=dtype)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=additive)
    torch.testing.assert_close(A.scaled_dot_product_attention(q, k, v, additive)[0], expected, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tq, tk", [(5, 5), (3, 6), (6, 3)])
def test_is_causal_and_custom_scale_match_sdpa(tq, tk, dtype):
    q, k, v = _qkv(2, 2, tq, tk, 8, dtype)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3)
    torch.testing.assert_close(A.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3)[0], expected, **TOL[dtype])


def test_fully_masked_rows_give_zeros_not_nan_like_sdpa():
    q, k, v = _qkv(1, 1, 3, 4, 8, torch.float32)
    mask = torch.tensor([[True, False, True, False], [False] * 4, [True] * 4])
    out, weights = A.scaled_dot_product_attention(q, k, v, mask)
    assert not torch.isnan(out).any() and not torch.isnan(weights).any()
    assert (out[..., 1, :] == 0).all() and (weights[..., 1, :] == 0).all()
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    q.requires_grad_()
    A.scaled_dot_product_attention(q, k, v, mask)[0].sum().backward()
    assert torch.isfinite(q.grad).all()


def test_causal_with_a_padding_mask_that_blocks_everything_before():
    q, k, v = _qkv(1, 1, 3, 3, 4, torch.float32)
    mask = torch.tensor([False, True, True])  # key 0 is padding: query 0 can see nothing
    out, _ = A.scaled_dot_product_attention(q, k, v, mask, is_causal=True)
    assert (out[..., 0, :] == 0).all() and torch.isfinite(out).all()


def test_dropout_drops_weights_only_when_asked():
    q, k, v = _qkv(1, 1, 8, 8, 4, torch.float32)
    torch.manual_seed(0)
    _, weights = A.scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    assert (weights == 0).any() and weights.max() > 1 / 8  # kept weights are scaled by 1/(1-p)
    _, plain = A.scaled_dot_product_attention(q, k, v)
    assert (plain > 0).all()


@pytest.mark.parametrize(
    "args, kwargs, error, message",
    [
        ((torch.zeros(2, 3, 4), torch.zeros(2, 3, 5), torch.zeros(2, 3, 5)), {}, ValueError, "same last dimension"),
        ((torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.zeros(2, 2, 4)), {}, ValueError, "k and v must agree"),
        ((torch.zeros(2, 3, 4), torch.zeros(1, 3, 4), torch.zeros(1, 3, 4)), {}, ValueError, "same batch dimensions"),
        ((torch.zeros(4), torch.zeros(4), torch.zeros(4)), {}, ValueError, r"q must have shape \(..., T, d\)"),
        ((torch.zeros(2, 3, 4),) * 3, {"mask": torch.ones(3, 4, dtype=torch.bool)}, ValueError,
         r"mask of shape \(3, 4\) does not broadcast to the attention scores' shape \(2, 3, 3\)"),
        ((torch.zeros(2, 3, 4),) * 3, {"mask": torch.ones(3, 3, dtype=torch.long)}, TypeError, "mask must be bool"),
        ((torch.zeros(2, 3, 4),) * 3, {"dropout_p": 1.0}, ValueError, "dropout_p must be in"),
        (([1.0], torch.zeros(2, 2), torch.zeros(2, 2)), {}, TypeError, "q must be a torch.Tensor, got list"),
    ],
)
def test_bad_input_is_a_clear_error(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        A.scaled_dot_product_attention(*args, **kwargs)


def test_masks_from_sizes_and_lengths():
    assert A.causal_mask(3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert A.padding_mask(torch.tensor([2, 0, 3])).tolist() == [
        [True, True, False], [False, False, False], [True, True, True]]
    assert A.padding_mask(torch.tensor([1]), max_len=3).tolist() == [[True, False, False]]
    assert A.attention_mask_from_padding(A.padding_mask(torch.tensor([2, 1]))).shape == (2, 1, 1, 2)
    with pytest.raises(ValueError, match="size must be an int >= 1, got 0"):
        A.causal_mask(0)
    with pytest.raises(ValueError, match="max_len=2 is shorter than the longest sequence"):
        A.padding_mask(torch.tensor([3]), max_len=2)
    with pytest.raises(ValueError, match="lengths must be a 1-D integer tensor"):
        A.padding_mask(torch.tensor([1.5]))


def test_split_and_merge_heads_are_inverse_and_slice_features():
    x = torch.arange(2 * 3 * 8).reshape(2, 3, 8).float()
    heads = A.split_heads(x, 4)
    assert heads.shape == (2, 4, 3, 2)
    torch.testing.assert_close(heads[:, 1], x[..., 2:4])
    torch.testing.assert_close(A.merge_heads(heads), x)
    with pytest.raises(ValueError, match="n_heads must divide d_model=8, got 3"):
        A.split_heads(x, 3)
    with pytest.raises(ValueError, match=r"x must have shape \(B, n_heads, T, d_head\)"):
        A.merge_heads(x)


def _mha_pair(d_model=16, n_heads=4, bias=True):
    torch.manual_seed(0)
    ours = A.MultiHeadAttention(d_model, n_heads, bias=bias)
    theirs = nn.MultiheadAttention(d_model, n_heads, batch_first=True, bias=bias)
    with torch.no_grad():
        theirs.in_proj_weight.copy_(ours.qkv.weight)
        theirs.out_proj.weight.copy_(ours.out.weight)
        if bias:
            theirs.in_proj_bias.copy_(ours.qkv.bias)
            theirs.out_proj.bias.copy_(ours.out.bias)
    return ours, theirs


@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_multi_head_attention_matches_torch_with_copied_weights(need_weights, bias):
    ours, theirs = _mha_pair(bias=bias)
    x = torch.randn(3, 6, 16)
    real = A.padding_mask(torch.tensor([6, 4, 1]))
    out, weights = ours(x, attention_mask=real, need_weights=need_weights)
    expected, expected_weights = theirs(x, x, x, key_padding_mask=~real, average_attn_weights=False)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    if need_weights:
        torch.testing.assert_close(weights, expected_weights, rtol=1e-5, atol=1e-6)
    else:
        assert weights is None


@pytest.mark.parametrize("need_weights", [False, True])
def test_multi_head_causal_matches_torch(need_weights):
    ours, theirs = _mha_pair()
    x = torch.randn(2, 5, 16)
    expected, _ = theirs(x, x, x, attn_mask=~A.causal_mask(5))  # PyTorch: True = blocked
    torch.testing.assert_close(ours(x, causal=True, need_weights=need_weights)[0], expected, rtol=1e-5, atol=1e-6)
    real = A.padding_mask(torch.tensor([5, 3]))
    both, _ = ours(x, attention_mask=real, causal=True, need_weights=need_weights)
    expected, _ = theirs(x, x, x, attn_mask=~A.causal_mask(5), key_padding_mask=~real)
    torch.testing.assert_close(both, expected, rtol=1e-5, atol=1e-6)


def test_multi_head_gradients_match_torch():
    ours, theirs = _mha_pair()
    x = torch.randn(2, 4, 16)
    ours(x)[0].square().sum().backward()
    theirs(x, x, x)[0].square().sum().backward()
    torch.testing.assert_close(ours.qkv.weight.grad, theirs.in_proj_weight.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ours.out.weight.grad, theirs.out_proj.weight.grad, rtol=1e-4, atol=1e-6)


def test_multi_head_attention_rejects_bad_configuration_and_input():
    with pytest.raises(ValueError, match="n_heads must divide d_model=10, got 3"):
        A.MultiHeadAttention(10, 3)
    with pytest.raises(ValueError, match="dropout must be in"):
        A.MultiHeadAttention(8, 2, dropout=1.0)
    mha = A.MultiHeadAttention(8, 2)
    with pytest.raises(ValueError, match=r"x must have shape \(B, T, 8\), got \(2, 3, 4\)"):
        mha(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match=r"attention_mask must be a bool tensor of shape \(2, 3\)"):
        mha(torch.zeros(2, 3, 8), attention_mask=torch.ones(2, 3))


def test_dropout_is_off_in_eval_mode():
    mha = A.MultiHeadAttention(8, 2, dropout=0.5).eval()
    x = torch.randn(1, 4, 8)
    torch.testing.assert_close(mha(x)[0], mha(x)[0])


def test_sinusoidal_positions_follow_the_formula():
    pe = A.sinusoidal_positions(50, 16)
    pos, i = 17, 3
    torch.testing.assert_close(pe[pos, 2 * i], torch.tensor(math.sin(pos / 10000 ** (2 * i / 16))))
    torch.testing.assert_close(pe[pos, 2 * i + 1], torch.tensor(math.cos(pos / 10000 ** (2 * i / 16))))
    assert len({tuple(row.tolist()) for row in pe}) == 50  # every position distinct
    with pytest.raises(ValueError, match="d_model must be even"):
        A.sinusoidal_positions(4, 5)


def test_positional_modules_add_positions_and_check_lengths():
    x = torch.zeros(2, 5, 8)
    torch.testing.assert_close(A.SinusoidalPositionalEncoding(8, 10)(x)[0], A.sinusoidal_positions(5, 8))
    learned = A.LearnedPositionalEmbedding(10, 8)
    torch.testing.assert_close(learned(x)[1], learned.embedding.weight[:5])
    with pytest.raises(ValueError, match=r"x must have shape \(B, T <= 4, 8\)"):
        A.SinusoidalPositionalEncoding(8, 4)(x)
    with pytest.raises(ValueError, match=r"x must have shape \(B, T <= 4, 8\)"):
        A.LearnedPositionalEmbedding(4, 8)(x)


def test_attention_without_positions_is_permutation_equivariant():
    mha = A.MultiHeadAttention(8, 2)
    x = torch.randn(1, 5, 8)
    perm = torch.tensor([4, 2, 0, 1, 3])
    torch.testing.assert_close(mha(x)[0][:, perm], mha(x[:, perm])[0], rtol=1e-5, atol=1e-6)
