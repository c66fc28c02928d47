"""course_lib.quantize against PyTorch's own quantization arithmetic, with error bounds."""

import warnings

import pytest
import torch
from torch import nn

from course_lib import quantize as Q


def _weights(seed=0, shape=(16, 64)):
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-2, 1, shape[0])[:, None]  # rows of very different magnitude
    return torch.randn(shape, generator=g) * scales


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("symmetric", [True, False])
def test_per_tensor_matches_torch_fake_quantize(bits, symmetric):
    x = _weights(bits)
    p = Q.qparams(x, bits, symmetric)
    ours = Q.fake_quantize(x, bits, symmetric)
    theirs = torch.fake_quantize_per_tensor_affine(x, p.scale.item(), int(p.zero_point), p.qmin, p.qmax)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6 * p.scale.item() + 1e-7)


@pytest.mark.parametrize("symmetric", [True, False])
def test_per_channel_matches_torch_fake_quantize(symmetric):
    x = _weights(1)
    p = Q.qparams(x, 8, symmetric, axis=0)
    theirs = torch.fake_quantize_per_channel_affine(x, p.scale, p.zero_point.to(torch.int32), 0, p.qmin, p.qmax)
    torch.testing.assert_close(Q.fake_quantize(x, 8, symmetric, axis=0), theirs, rtol=0, atol=1e-6)


def test_int8_values_match_torch_quantize_per_tensor():
    x = _weights(2)
    p = Q.qparams(x, 8, symmetric=True)
    q = Q.quantize(x, p)
    assert q.dtype == torch.int8 and q.min() >= -127 and q.max() <= 127
    with warnings.catch_warnings():  # quantized dtypes are on their way out of PyTorch: torch warns once
        warnings.filterwarnings("ignore", message="torch.quantize_per_tensor", category=UserWarning)  # per process
        reference = torch.quantize_per_tensor(x, p.scale.item(), 0, torch.qint8).int_repr()
    assert (q != reference).float().mean() < 1e-3  # at most a rare tie rounded the other way
    assert (q.int() - reference.int()).abs().max() <= 1


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("axis", [None, 0])
def test_round_trip_error_is_at_most_half_a_step(bits, symmetric, axis):
    x = _weights(3)
    p = Q.qparams(x, bits, symmetric, axis)
    error = (Q.dequantize(Q.quantize(x, p), p) - x).abs()
    step = p._shaped(p.scale, x.ndim)
    assert (error <= step / 2 * (1 + 1e-5) + 1e-7).all()


def test_per_channel_beats_per_tensor_when_rows_differ_in_scale():
    x = _weights(4)
    small_rows = slice(0, 8)  # rows 100x smaller than the largest
    per_tensor = (Q.fake_quantize(x, 8) - x)[small_rows].abs().max()
    per_channel = (Q.fake_quantize(x, 8, axis=0) - x)[small_rows].abs().max()
    assert per_channel < per_tensor / 10
    assert Q.quantization_error(x, 8, axis=0)["sqnr_db"] > Q.quantization_error(x, 8)["sqnr_db"]


def test_each_bit_buys_about_six_decibels():
    x = torch.randn(256, 256, generator=torch.Generator().manual_seed(5))
    sqnr = [Q.quantization_error(x, bits, axis=0)["sqnr_db"] for bits in (4, 6, 8)]
    assert all(10 < b - a < 14 for a, b in zip(sqnr, sqnr[1:]))  # ~6 dB per bit, two bits apart


def test_asymmetric_keeps_zero_exact_and_uses_the_range():
    x = torch.rand(1000, generator=torch.Generator().manual_seed(6)) * 3 + 0.5  # all positive
    p = Q.qparams(x, 8, symmetric=False)
    q = Q.quantize(x, p)
    assert q.dtype == torch.uint8 and q.max() == 255
    zero = Q.dequantize(Q.quantize(torch.zeros(1), p), p)
    assert zero.item() == 0.0
    constant = Q.fake_quantize(torch.zeros(5))  # an all-zero tensor must not divide by zero
    assert torch.equal(constant, torch.zeros(5))


@pytest.mark.parametrize("call, error, message", [
    (lambda: Q.qparams(torch.randn(4), bits=1), ValueError, "bits must be an int from 2 to 8"),
    (lambda: Q.qparams(torch.randn(4), bits=16), ValueError, "got 16"),
    (lambda: Q.qparams(torch.randn(4), bits=True), ValueError, "bits must be"),
    (lambda: Q.qparams(torch.randn(4, 3), axis=2), ValueError, r"axis must be None or in \[-2, 1\]"),
    (lambda: Q.qparams(torch.arange(4)), TypeError, "x must be a floating-point tensor, got torch.int64"),
])
def test_bad_input_is_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_sizes_of_fp32_and_int8_linear_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(1000, 256), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 2))
    fp32 = Q.linear_bytes(model)
    assert (256 * 256 + 256 + 256 * 2 + 2) * 4 <= fp32 < (256 * 256 + 256 + 256 * 2 + 2) * 4 + 4000
    assert Q.state_dict_bytes(model) > fp32 + 1000 * 256 * 4
    with pytest.warns(DeprecationWarning, match="torch.ao.quantization is deprecated"):
        quantized = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    assert Q.linear_bytes(quantized) < 0.3 * fp32
    with pytest.raises(ValueError, match="has no linear layers"):
        Q.linear_bytes(nn.Sequential(nn.ReLU()))


def _tiny_classifier():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=200, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, num_labels=2)
    return BertForSequenceClassification(config).eval()


def test_library_routes_quantize_a_copy_and_stay_close_to_fp32():
    model = _tiny_classifier()
    inputs = {"input_ids": torch.randint(0, 200, (4, 16), generator=torch.Generator().manual_seed(1))}
    with torch.no_grad():
        reference = model(**inputs).logits
        for build in (Q.legacy_dynamic_int8, Q.torchao_int8, lambda m: Q.torchao_int8(m, weight_only=True)):
            quantized = build(model)
            assert type(model.bert.encoder.layer[0].intermediate.dense) is nn.Linear  # the original is untouched
            assert Q.linear_bytes(quantized) < 0.4 * Q.linear_bytes(model)
            torch.testing.assert_close(quantized(**inputs).logits, reference, rtol=0, atol=0.05)


def test_fixed_shape_batches_and_side_by_side_latency():
    from course_lib.pretrained import load_tokenizer

    tokenizer = load_tokenizer()
    batch = Q.fixed_shape_batch(tokenizer, ["a short one", "and a much longer sentence than that one is"], 3, 6)
    assert batch["input_ids"].shape == (3, 6) and batch["attention_mask"][0].tolist() == [1, 1, 1, 1, 1, 0]
    model = _tiny_classifier()
    timings = Q.measure_latency({"fp32": model, "int8": Q.legacy_dynamic_int8(model)},
                                {"input_ids": batch["input_ids"] % 200}, warmup=1, repeat=2)
    assert [t.name for t in timings] == ["fp32", "int8"] and all(len(t.times) == 2 for t in timings)
    with pytest.raises(ValueError, match="batch must be an int >= 1, got 0"):
        Q.fixed_shape_batch(tokenizer, ["x"], 0, 6)


# ---------------------------------------------------------------------------------------------
# Int8DynamicLinear: the int8 layer written out


def _int8_inputs(seed=0, d_in=64, d_out=32):
    g = torch.Generator().manual_seed(seed)
    linear = torch.nn.Linear(d_in, d_out)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(d_out, d_in, generator=g) * 0.05)
        linear.bias.copy_(torch.randn(d_out, generator=g) * 0.1)
    return linear, torch.randn(3, 7, d_in, generator=g)


def test_int8_linear_is_the_integer_arithmetic_it_claims():
    linear, x = _int8_inputs()
    layer = Q.Int8DynamicLinear(linear)
    assert layer.qweight.dtype == torch.int8 and layer.weight_scale.shape == (32,)
    w_scale = linear.weight.detach().abs().amax(1) / 127
    x_scale = x.abs().amax(-1, keepdim=True) / 127
    qw = torch.round(linear.weight.detach() / w_scale[:, None]).clamp(-127, 127)
    qx = torch.round(x / x_scale).clamp(-127, 127)
    expected = (qx.double() @ qw.double().T) * x_scale.double() * w_scale.double() + linear.bias.double()
    torch.testing.assert_close(layer(x).double(), expected, rtol=1e-6, atol=1e-6)


def test_int8_linear_is_close_to_fp32_and_to_torch_ao():
    """Stated tolerances: within 2% of fp32 (relative Frobenius error), and within 3% of torch.ao's
    dynamic int8 Linear, which quantizes per tensor and its activations asymmetrically."""
    import warnings

    linear, x = _int8_inputs(1)
    with torch.no_grad():
        reference = linear(x)
        ours = Q.Int8DynamicLinear(linear)(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ao = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(linear), {torch.nn.Linear}, dtype=torch.qint8)(x)
    relative = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
    assert relative(ours, reference) < 0.02
    assert relative(ao, reference) < 0.02
    assert relative(ours, ao) < 0.03


def test_int8_linear_handles_zero_rows_and_tokens_and_refuses_bad_input():
    linear, x = _int8_inputs(2, d_in=8, d_out=4)
    with torch.no_grad():
        linear.weight[0] = 0.0
    x[0, 0] = 0.0
    layer = Q.Int8DynamicLinear(linear)
    out = layer(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[..., 0], linear.bias[0].expand(out.shape[:-1]).detach())
    torch.testing.assert_close(out[0, 0], linear.bias.detach())
    with pytest.raises(TypeError, match="linear must be an nn.Linear, got Conv1d"):
        Q.Int8DynamicLinear(torch.nn.Conv1d(2, 2, 1))
    with pytest.raises(ValueError, match=r"x must be a float tensor \(\.\.\., 8\), got torch.float32 \(2, 5\)"):
        layer(torch.randn(2, 5))
