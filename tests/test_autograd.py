import math
import random

import pytest
import torch

from course_lib.autograd import (
    Value,
    finite_difference_grad,
    gradcheck,
    random_expression,
    topological_order,
    zero_grad,
)

# Python floats are float64, so engine and torch (float64) should agree to rounding error.
TOL = dict(rtol=1e-6, atol=1e-6)


def _engine(f, point):
    values = [Value(p) for p in point]
    out = f(values)
    out.backward()
    return out.data, [v.grad for v in values]


def _torch(f, point):
    tensors = [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in point]
    out = f(tensors)
    out.backward()
    return out.item(), [t.grad.item() if t.grad is not None else 0.0 for t in tensors]


def _assert_same(f, point):
    value, grads = _engine(f, point)
    ref_value, ref_grads = _torch(f, point)
    torch.testing.assert_close(value, ref_value, **TOL)
    torch.testing.assert_close(grads, ref_grads, **TOL)


@pytest.mark.parametrize("seed", range(40))
def test_engine_matches_torch_on_random_expressions(seed):
    rng = random.Random(seed)
    for _ in range(5):
        n_inputs = rng.randint(1, 4)
        f, _ = random_expression(rng, n_inputs=n_inputs, n_ops=rng.randint(1, 12))
        _assert_same(f, [rng.uniform(-2, 2) for _ in range(n_inputs)])


OPS = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "pow": lambda a, b: a**3 + b**-2,
    "float pow": lambda a, b: (a * a) ** 1.5 + b**0.5,
    "exp": lambda a, b: (a * b).exp(),
    "log": lambda a, b: (a * b).log(),
    "tanh": lambda a, b: (a - b).tanh(),
    "relu": lambda a, b: (a - b).relu() + (b - a).relu() * 2,
    "neg": lambda a, b: -a * b,
    "reflected": lambda a, b: 2 + a * 3 - (1 - b) + 4 / b,
}


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("point", [(0.7, 1.9), (1.3, 0.4)])
def test_each_operation_matches_torch(name, point):
    _assert_same(lambda v: OPS[name](*v), point)


def test_relu_gradient_at_zero_is_zero_like_torch():
    _assert_same(lambda v: v[0].relu(), [0.0])


def test_a_value_used_twice_gets_both_gradients():
    x = Value(3.0)
    (x * x + x).backward()
    assert x.grad == 7.0


def test_gradients_accumulate_until_zeroed():
    x = Value(2.0)
    y = x * x
    y.backward()
    y.backward()
    assert x.grad == 8.0
    zero_grad(y)
    y.backward()
    assert x.grad == 4.0


def test_deep_graph_needs_no_recursion():
    x = Value(0.5)
    y = x
    for _ in range(5000):
        y = y * 1.0001
    y.backward()
    assert x.grad == pytest.approx(1.0001**5000)


def test_topological_order_lists_each_node_once_inputs_first():
    a, b = Value(1.0), Value(2.0)
    c = a * b
    d = c + a
    order = topological_order(d)
    assert len(order) == 4 and len({id(n) for n in order}) == 4
    assert order[-1] is d
    assert order.index(c) > order.index(a) and order.index(c) > order.index(b)


def test_bad_inputs_are_rejected_clearly():
    with pytest.raises(TypeError, match="data must be an int or float, got str"):
        Value("1")
    with pytest.raises(ValueError, match="log needs a positive input, got -1"):
        Value(-1.0).log()
    with pytest.raises(TypeError, match="exponent must be an int or float constant, got Value"):
        Value(2.0) ** Value(2.0)
    with pytest.raises(ValueError, match="eps must be > 0"):
        finite_difference_grad(lambda p: p[0], [1.0], eps=0)


def test_finite_differences_match_analytic_gradients():
    grad = finite_difference_grad(lambda p: math.sin(p[0]) * p[1] ** 2, [0.3, 2.0], eps=1e-5)
    torch.testing.assert_close(grad, [math.cos(0.3) * 4.0, math.sin(0.3) * 4.0], rtol=1e-7, atol=1e-8)


def test_gradcheck_passes_a_correct_engine_and_catches_a_wrong_backward():
    ok, diff = gradcheck(lambda v: (v[0] * v[1]).tanh() + v[0].exp(), [0.4, -1.1])
    assert ok and diff < 1e-6

    def broken(v):
        out = v[0] * v[1]
        out._backward = lambda: setattr(v[0], "grad", v[0].grad + 2 * out.grad)  # wrong: should be v[1]
        return out

    ok, diff = gradcheck(broken, [0.4, -1.1])
    assert not ok and diff > 1


def test_random_expression_uses_every_input_and_is_reproducible():
    f1, text1 = random_expression(random.Random(5), n_inputs=4, n_ops=3)
    f2, text2 = random_expression(random.Random(5), n_inputs=4, n_ops=3)
    assert text1 == text2
    assert all(f"x{i}" in text1 for i in range(4))
    _, grads = _torch(f1, [0.3, -0.2, 0.9, 1.4])
    assert len(grads) == 4
    with pytest.raises(ValueError, match="xs must hold 4 values, got 3"):
        f1([0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="n_inputs and n_ops must be >= 1"):
        random_expression(random.Random(0), n_inputs=0)
