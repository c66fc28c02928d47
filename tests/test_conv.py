"""course_lib.conv against torch: im2col = F.unfold, conv2d = F.conv2d (values and gradients), pooling =
F.max_pool2d / F.avg_pool2d, the Conv2d layer and the SmallCNN."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib import conv as C

# float32: the same sums in a different order (a matrix product vs torch's kernels), a few ulps of
# values of size ~10; float64: rounding only.
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float64: dict(atol=1e-12, rtol=1e-10)}


def _randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# (kernel_size, stride, padding, dilation) on a non-square 2×3×9×11 input
UNFOLD_CASES = [
    (1, 1, 0, 1),
    (3, 1, 0, 1),
    (3, 1, 1, 1),
    (3, 2, 1, 1),
    ((2, 3), (1, 2), (0, 1), 1),
    ((3, 2), (2, 1), (1, 0), (2, 1)),
    (3, 3, 2, 2),
    ((4, 5), (3, 2), (2, 2), (1, 2)),
    ((9, 11), 1, 0, 1),  # the kernel covers the whole image: one column
]


@pytest.mark.parametrize("kernel_size, stride, padding, dilation", UNFOLD_CASES)
def test_im2col_equals_unfold(kernel_size, stride, padding, dilation):
    x = _randn(2, 3, 9, 11)
    got = C.im2col(x, kernel_size, stride, padding, dilation)
    expected = F.unfold(x, kernel_size, dilation=dilation, padding=padding, stride=stride)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=0, rtol=0)  # copies, no arithmetic: exact


def test_im2col_pad_value_fills_only_the_padding():
    x = _randn(1, 2, 4, 5)
    cols = C.im2col(x, 3, padding=1, pad_value=-7.0)
    reference = F.unfold(F.pad(x, (1, 1, 1, 1), value=-7.0), 3)
    torch.testing.assert_close(cols, reference, atol=0, rtol=0)
    assert (cols == -7.0).any() and not (C.im2col(x, 3, padding=1) == -7.0).any()


def test_im2col_rows_follow_a_flattened_kernel():
    # one output position of the convolution = the flattened kernel times that column
    x, w = _randn(1, 3, 5, 5), _randn(4, 3, 3, 3, seed=1)
    cols = C.im2col(x, 3)
    torch.testing.assert_close((w.reshape(4, -1) @ cols[0]).reshape(4, 3, 3), F.conv2d(x, w)[0], **TOL[torch.float32])


# (in_channels, out_channels, kernel, stride, padding, dilation, groups, bias)
CONV_CASES = [
    (3, 4, 3, 1, 0, 1, 1, True),
    (3, 4, 3, 1, 1, 1, 1, False),
    (3, 5, 3, 2, 1, 1, 1, True),
    (2, 3, (3, 5), (2, 1), (1, 2), 1, 1, True),
    (4, 6, (2, 3), (1, 2), (0, 1), (2, 1), 1, False),
    (4, 6, 3, 1, 2, 2, 2, True),  # dilation and two groups
    (6, 6, 3, 1, 1, 1, 6, True),  # depthwise: groups == in_channels
    (4, 8, 3, 2, 1, 1, 4, False),  # depthwise with a channel multiplier of 2
    (6, 9, 1, 1, 0, 1, 3, True),  # grouped 1×1
    (3, 2, (9, 11), 1, 0, 1, 1, True),  # kernel as large as the image
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cin, cout, kernel, stride, padding, dilation, groups, bias", CONV_CASES)
def test_conv2d_equals_torch(cin, cout, kernel, stride, padding, dilation, groups, bias, dtype):
    kh, kw = C.pair("kernel", kernel)
    x = _randn(2, cin, 9, 11, dtype=dtype)
    w = _randn(cout, cin // groups, kh, kw, seed=1, dtype=dtype)
    b = _randn(cout, seed=2, dtype=dtype) if bias else None
    got = C.conv2d(x, w, b, stride, padding, dilation, groups)
    expected = F.conv2d(x, w, b, stride, padding, dilation, groups)
    assert got.shape == expected.shape and got.dtype == dtype
    torch.testing.assert_close(got, expected, **TOL[dtype])


@pytest.mark.parametrize("cin, cout, kernel, stride, padding, dilation, groups, bias",
                         [CONV_CASES[2], CONV_CASES[4], CONV_CASES[5], CONV_CASES[6]])
def test_conv2d_gradients_equal_torch(cin, cout, kernel, stride, padding, dilation, groups, bias):
    dtype = torch.float64
    kh, kw = C.pair("kernel", kernel)
    x = _randn(2, cin, 9, 11, dtype=dtype)
    w = _randn(cout, cin // groups, kh, kw, seed=1, dtype=dtype)
    b = _randn(cout, seed=2, dtype=dtype) if bias else None
    upstream = _randn(*F.conv2d(x, w, b, stride, padding, dilation, groups).shape, seed=3, dtype=dtype)
    leaves = [x, w] + ([b] if bias else [])

    def grads(fn):
        inputs = [t.clone().requires_grad_(True) for t in leaves]
        out = fn(inputs[0], inputs[1], inputs[2] if bias else None, stride, padding, dilation, groups)
        return torch.autograd.grad((out * upstream).sum(), inputs)

    for got, expected in zip(grads(C.conv2d), grads(F.conv2d), strict=True):
        torch.testing.assert_close(got, expected, **TOL[dtype])


def test_conv2d_is_cross_correlation_not_convolution():
    # an asymmetric kernel on a single bright pixel: the output shows the kernel flipped (as in torch)
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 2] = 1.0
    w = torch.arange(9.0).reshape(1, 1, 3, 3)
    out = C.conv2d(x, w, padding=1)[0, 0, 1:4, 1:4]
    torch.testing.assert_close(out, w[0, 0].flip(0, 1))


# (kernel, stride, padding) on a non-square, odd-sized 2×3×9×11 input
POOL_CASES = [
    (2, None, 0),  # stride defaults to the kernel; the odd last row/column is dropped
    (3, None, 1),
    (3, 1, 1),
    (3, 2, 0),
    ((2, 3), None, (1, 1)),
    ((3, 2), (2, 1), (1, 0)),
    (5, 2, 2),
]


@pytest.mark.parametrize("kernel, stride, padding", POOL_CASES)
def test_max_pool2d_equals_torch_on_negative_inputs(kernel, stride, padding):
    x = -_randn(2, 3, 9, 11).abs() - 1.0  # all < -1: zero padding would win every border window
    got = C.max_pool2d(x, kernel, stride, padding)
    expected = F.max_pool2d(x, kernel, stride, padding)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    assert (got < -1).all()


@pytest.mark.parametrize("kernel, stride, padding", POOL_CASES)
def test_avg_pool2d_equals_torch(kernel, stride, padding):
    x = _randn(2, 3, 9, 11) + 0.5  # nonzero mean: counting the padding in the mean shows
    got = C.avg_pool2d(x, kernel, stride, padding)
    expected = F.avg_pool2d(x, kernel, stride, padding)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, **TOL[torch.float32])


def test_pooling_defaults_to_non_overlapping_windows():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    torch.testing.assert_close(C.max_pool2d(x, 2), torch.tensor([[[[5.0, 7.0], [13.0, 15.0]]]]))
    torch.testing.assert_close(C.avg_pool2d(x, 2), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))


@pytest.mark.parametrize("size, kernel, stride, padding, dilation",
                         [(28, 3, 1, 1, 1), (28, 3, 2, 1, 1), (9, 4, 3, 2, 1), (11, 3, 2, 0, 3), (5, 5, 1, 0, 1),
                          (7, 2, 2, 0, 1), (224, 7, 2, 3, 1), (10, 3, 4, 1, 2)])
def test_output_size_matches_torch(size, kernel, stride, padding, dilation):
    x, w = torch.zeros(1, 1, size, size + 3), torch.zeros(1, 1, kernel, kernel)
    out = F.conv2d(x, w, stride=stride, padding=padding, dilation=dilation)
    assert C.output_size(size, kernel, stride, padding, dilation) == out.shape[2]
    assert C.output_size(size + 3, kernel, stride, padding, dilation) == out.shape[3]


@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_layer_loads_an_nn_conv2d_state_dict(bias):
    torch.manual_seed(0)
    reference = nn.Conv2d(4, 6, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2, bias=bias)
    layer = C.Conv2d(4, 6, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2, bias=bias)
    assert layer.state_dict().keys() == reference.state_dict().keys()
    assert all(layer.state_dict()[k].shape == v.shape for k, v in reference.state_dict().items())
    x = _randn(2, 4, 9, 11)
    assert not torch.allclose(layer(x), reference(x))  # different random initialisations until loaded
    layer.load_state_dict(reference.state_dict())
    torch.testing.assert_close(layer(x), reference(x), **TOL[torch.float32])
    reference.load_state_dict(layer.state_dict())  # and the other way round
    assert len(list(layer.parameters())) == (2 if bias else 1)


def test_conv2d_layer_initialises_like_torch():
    torch.manual_seed(3)
    reference = nn.Conv2d(8, 16, 3)
    torch.manual_seed(3)
    layer = C.Conv2d(8, 16, 3)
    torch.testing.assert_close(layer.weight, reference.weight, atol=0, rtol=0)
    torch.testing.assert_close(layer.bias, reference.bias, atol=0, rtol=0)


def _small_cnn_parameters(in_channels, num_classes, channels, image_size):
    total, previous, size = 0, in_channels, image_size
    for width in channels:
        total += 9 * previous * width + 2 * width  # 3×3 conv without bias, batch-norm scale and shift
        previous, size = width, size // 2
    return total + (previous * size * size + 1) * num_classes


@pytest.mark.parametrize("in_channels, image_size, channels",
                         [(1, 28, (32, 64, 64)), (3, 32, (32, 64, 64)), (1, 32, (8, 16)), (3, 28, (4,)),
                          (1, 8, (8, 8, 8))])
def test_small_cnn_shapes_and_parameter_count(in_channels, image_size, channels):
    torch.manual_seed(0)
    model = C.SmallCNN(in_channels=in_channels, num_classes=7, channels=channels, image_size=image_size)
    assert sum(p.numel() for p in model.parameters()) == _small_cnn_parameters(in_channels, 7, channels, image_size)
    x = _randn(2, in_channels, image_size, image_size)
    model.eval()
    assert model(x).shape == (2, 7)
    size = image_size
    for _ in channels:
        size //= 2
    assert model.features(x).shape == (2, channels[-1], size, size)


def test_small_cnn_default_parameter_count():
    # 28×28 → 14 → 7 → 3: the default configuration's count, written out
    model = C.SmallCNN()
    expected = (9 * 1 * 32 + 64) + (9 * 32 * 64 + 128) + (9 * 64 * 64 + 128) + (64 * 3 * 3 + 1) * 10
    assert sum(p.numel() for p in model.parameters()) == expected == 61_674


def test_small_cnn_refuses_too_many_stages_and_no_stages():
    with pytest.raises(ValueError, match="stages"):
        C.SmallCNN(channels=(8, 8, 8), image_size=4)  # 4 → 2 → 1 → 0
    C.SmallCNN(channels=(8, 8), image_size=4)  # 4 → 2 → 1 is fine
    with pytest.raises(ValueError, match="channels"):
        C.SmallCNN(channels=())


def test_conv2d_errors_name_the_argument():
    x, w = _randn(2, 4, 6, 6), _randn(6, 4, 3, 3)
    with pytest.raises(ValueError, match="x must be"):
        C.conv2d(x[0], w)  # 3-D
    with pytest.raises(ValueError, match="weight"):
        C.conv2d(x, w[0])
    with pytest.raises(ValueError, match="weight expects 3 input channels"):
        C.conv2d(x, _randn(6, 3, 3, 3))
    with pytest.raises(ValueError, match="groups=3"):
        C.conv2d(_randn(2, 6, 6, 6), _randn(4, 2, 3, 3), groups=3)  # 3 does not divide out_channels=4
    with pytest.raises(ValueError, match="groups=4"):
        C.conv2d(_randn(2, 6, 6, 6), _randn(8, 1, 3, 3), groups=4)  # nor in_channels=6
    with pytest.raises(ValueError, match="groups"):
        C.conv2d(x, w, groups=0)
    with pytest.raises(ValueError, match="bias must be None or a tensor of shape"):
        C.conv2d(x, w, torch.zeros(5))
    with pytest.raises(ValueError, match="kernel_size"):
        C.conv2d(x, _randn(6, 4, 9, 3))  # taller than the 6-pixel image
    C.conv2d(x, _randn(6, 4, 8, 3), padding=1)  # fits once padded
    with pytest.raises(ValueError, match="stride"):
        C.conv2d(x, w, stride=0)
    with pytest.raises(ValueError, match="padding"):
        C.conv2d(x, w, padding=-1)
    with pytest.raises(ValueError, match="dilation"):
        C.conv2d(x, w, dilation=(1, 2, 3))


def test_im2col_and_layer_errors():
    with pytest.raises(ValueError, match="x must be"):
        C.im2col(torch.zeros(3, 5, 5), 3)
    with pytest.raises(ValueError, match="kernel_size"):
        C.im2col(torch.zeros(1, 1, 5, 5), 3, dilation=3)  # spans 7 pixels
    with pytest.raises(ValueError, match="groups=4"):
        C.Conv2d(6, 8, 3, groups=4)


def test_pooling_errors():
    x = _randn(1, 2, 6, 6)
    with pytest.raises(ValueError, match="padding"):
        C.max_pool2d(x, 3, padding=2)
    with pytest.raises(ValueError, match="padding"):
        C.avg_pool2d(x, (4, 2), padding=(2, 2))
    with pytest.raises(RuntimeError):
        F.max_pool2d(x, 3, padding=2)  # torch refuses it too
    C.max_pool2d(x, (4, 2), padding=(2, 1))  # exactly half is allowed
    with pytest.raises(ValueError, match="x must be"):
        C.max_pool2d(x[0], 2)
    with pytest.raises(ValueError, match="kernel_size"):
        C.avg_pool2d(x, 0)
