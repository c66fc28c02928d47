"""Checks of chapter 02 (autograd)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from course_lib.autograd import Value
from course_lib.checks.verdict import UNREADABLE, Check, CheckFailed, expect_fields, expect_number, expect_tensor, generator
from course_lib.plain import type_name

# The functions 2.1 differentiates, by the name a case carries: (f on a tensor, its derivative).
_DERIVATIVES = {
    "x**3 + 2*x": (lambda t: t**3 + 2 * t, lambda x: 3 * x**2 + 2),
    "sin(x)": (torch.sin, math.cos),
    "exp(-x**2)": (lambda t: torch.exp(-(t**2)), lambda x: -2 * x * math.exp(-(x**2))),
    "a constant 3": (lambda t: t * 0 + 3, lambda x: 0.0),
}

# The functions 2.3 differentiates numerically, by name: (f on a float, its derivative).
_FUNCTIONS = {
    "exp": (math.exp, math.exp),
    "x**3": (lambda x: x**3, lambda x: 3 * x**2),
    "sin": (math.sin, math.cos),
}


def _short(number: float) -> str:
    """``1e-3`` for 0.001: how the exercise writes a step size."""
    mantissa, exponent = f"{number:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"



class DerivativeAt(Check):
    """``derivative_at(f, x)`` returns f'(x) as a float, computed by torch's autograd.
    Catches: returning f(x) instead of f'(x), returning something other than a number."""

    exercise = "2.1"

    def cases(self) -> list:
        return [("x**3 + 2*x", 2.0), ("sin(x)", 0.5), ("exp(-x**2)", 1.0), ("a constant 3", 1.0)]

    def probe(self, derivative_at, case):
        name, x = case
        return derivative_at(_DERIVATIVES[name][0], x)

    def judge(self, case, got):
        name, x = case
        expect_number(got, _DERIVATIVES[name][1](x), f"d/dx {name} at {x}", atol=1e-5, rtol=1e-5)


class Sigmoid(Check):
    """``sigmoid(v)`` builds 1 / (1 + exp(-v)) from Value operations, so gradients flow.
    The probe calls it on a fresh ``Value(x)``, runs ``backward()`` on the result and reports the
    result's data and the input's gradient. Catches: computing the number with ``math`` and
    wrapping it in a new Value (no gradient reaches the input), exp(v) instead of exp(-v),
    returning a float."""

    exercise = "2.2"

    def cases(self) -> list:
        return [-3.0, -0.5, 0.0, 0.7, 4.0]

    def probe(self, sigmoid, x):
        v = Value(x)
        out = sigmoid(v)
        if not isinstance(out, Value):
            return {"is_value": False, "returned": out}
        out.backward()
        return {"is_value": True, "data": out.data, "grad": v.grad}

    def judge(self, x, got):
        (is_value,) = expect_fields(got, "is_value")
        if is_value is not True:
            raise CheckFailed(f"at x={x}: expected a Value, got {type_name(got.get('returned'))}")
        data, grad = expect_fields(got, "data", "grad")
        value = 1 / (1 + math.exp(-x))
        slope = value * (1 - value)
        expect_number(data, value, f"sigmoid value at x={x}", atol=1e-9)
        if type(grad) in (int, float) and grad == 0.0 and slope != 0.0:
            raise CheckFailed(f"at x={x}: no gradient reached the input; build the result from Value operations")
        expect_number(grad, slope, f"gradient at x={x}", atol=1e-9)


class CentralDifference(Check):
    """``central_difference(f, x, eps)`` = (f(x + eps) - f(x - eps)) / (2 eps). With eps = 1e-3
    central differences are within ~1e-6 of f'(x); forward differences are ~1e-3 off.
    Catches: the forward difference, dividing by eps instead of 2 eps."""

    exercise = "2.3"

    def cases(self) -> list:
        return [("exp", 1.0, 1e-3), ("x**3", -2.0, 1e-3), ("sin", 0.3, 1e-3)]

    def probe(self, central_difference, case):
        name, x, eps = case
        return central_difference(_FUNCTIONS[name][0], x, eps)

    def judge(self, case, got):
        name, x, eps = case
        expect_number(got, _FUNCTIONS[name][1](x), f"{name} at {x} with eps={_short(eps)}", atol=1e-5)


class SiLUFunction(Check):
    """``SiLU``, a ``torch.autograd.Function`` whose backward returns grad * d/dx [x·sigmoid(x)].
    The probe reports whether the candidate is such a subclass, and its output and the gradient it
    sends back for a given x and upstream gradient (float64); the judge compares both with torch's
    ``F.silu`` (a stricter test than ``gradcheck``'s agreement of the two with each other).
    Catches: forgetting the product rule (grad * sigmoid(x)), a plain function instead of a
    Function subclass, a forward pass that is not x·sigmoid(x)."""

    exercise = "2.4"

    def cases(self) -> list:
        g = generator(24)
        cases = []
        for shape in ((5,), (3, 4)):
            x = torch.randn(shape, generator=g, dtype=torch.float64)
            cases.append({"x": x, "upstream": torch.randn(shape, generator=g, dtype=torch.float64)})
        return cases

    def probe(self, silu_function, case):
        if not (isinstance(silu_function, type) and issubclass(silu_function, torch.autograd.Function)):
            return {"is_function": False}
        x = case["x"].requires_grad_(True)
        out = silu_function.apply(x)
        (grad,) = torch.autograd.grad(out, x, case["upstream"])
        return {"is_function": True, "out": out.detach(), "grad": grad}

    def judge(self, case, got):
        (is_function,) = expect_fields(got, "is_function")
        if is_function is not True:
            raise CheckFailed("expected a subclass of torch.autograd.Function")
        x = case["x"].detach().clone().requires_grad_(True)
        expected_out = F.silu(x)
        (expected,) = torch.autograd.grad(expected_out, x, case["upstream"])
        out, grad = expect_fields(got, "out", "grad")
        shape = tuple(x.shape)
        expect_tensor(out, expected_out.detach(), f"output for x of shape {shape}", atol=1e-10)
        expect_tensor(grad, expected, f"gradient for x of shape {shape}", atol=1e-10)


# A program builds one expression: ("leaf", value), (op, i, j) for "+" and "*", ("**", i, exponent),
# ("tanh", i) or ("exp", i), where i and j index earlier nodes; the last node is the output.
_UNARY = {"tanh": torch.tanh, "exp": torch.exp}
_SHARED = ("a value used twice must receive the sum of both contributions (+=), and a node may pass "
           "its gradient on only once every use of it has added to it (visit nodes in reverse topological order)")


def _random_program(rng: random.Random, n_leaves: int, n_ops: int) -> list:
    """A random expression whose nodes are reused (shared sub-expressions), values kept moderate."""
    while True:
        program: list = [("leaf", round(rng.uniform(-1.5, 1.5), 3)) for _ in range(n_leaves)]
        for _ in range(n_ops):
            op = rng.choice(["+", "*", "**", "tanh", "exp", "+", "*"])
            i = rng.randrange(len(program))
            if op in ("+", "*"):
                program.append((op, i, rng.randrange(len(program))))
            elif op == "**":
                program.append((op, i, rng.choice([2, 3])))
            else:
                program.append((op, i))
        values = _run_torch(program)[0]
        if all(abs(v.item()) < 50 for v in values):
            return program


def _evaluate(program: list, leaf: Callable[[float], Any], unary: Callable[[Any, str], Any]) -> list:
    """Every node of ``program``, built with ``leaf(value)`` for the inputs, Python's + * ** for the
    binary operations and ``unary(node, "tanh" or "exp")``: on torch tensors or on a learner's class."""
    nodes: list = []
    for op, *args in program:
        if op == "leaf":
            nodes.append(leaf(args[0]))
        elif op == "+":
            nodes.append(nodes[args[0]] + nodes[args[1]])
        elif op == "*":
            nodes.append(nodes[args[0]] * nodes[args[1]])
        elif op == "**":
            nodes.append(nodes[args[0]] ** args[1])
        else:
            nodes.append(unary(nodes[args[0]], op))
    return nodes


def _run_torch(program: list) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Every node's value and the gradient of the output for every leaf, by torch.autograd (float64)."""
    nodes = _evaluate(program, lambda v: torch.tensor(float(v), dtype=torch.float64, requires_grad=True),
                      lambda node, op: _UNARY[op](node))
    leaves = [n for n, (op, *_) in zip(nodes, program) if op == "leaf"]
    grads = torch.autograd.grad(nodes[-1], leaves, allow_unused=True) if nodes[-1].requires_grad else [None] * len(leaves)
    return nodes, [torch.zeros((), dtype=torch.float64) if g is None else g for g in grads]


class ScalarBackward(Check):
    """``Scalar.backward()``: fill ``.grad`` of every node the output depends on, for ``+ * ** tanh
    exp``, on expressions that reuse nodes; compared with ``torch.autograd`` in float64. Catches:
    ``=`` instead of ``+=`` (a node used twice), gradients passed on before they are complete (no
    topological order), tanh's derivative taken at the input instead of the output, a missing
    ``out.grad = 1``."""

    exercise = "2.5"

    def cases(self) -> list:
        named = [
            ("a lone leaf a (d a/d a = 1)", [("leaf", 0.5)]),
            ("a + b", [("leaf", 0.5), ("leaf", -2.0), ("+", 0, 1)]),
            ("a * b", [("leaf", 0.5), ("leaf", -2.0), ("*", 0, 1)]),
            ("a ** 3", [("leaf", 0.5), ("**", 0, 3)]),
            ("tanh(a)", [("leaf", 0.5), ("tanh", 0)]),
            ("exp(a)", [("leaf", 0.5), ("exp", 0)]),
            ("a * a (one value used twice)", [("leaf", 1.5), ("*", 0, 0)]),
            ("c = a * b; c * c + tanh(c) (a shared sub-expression)",
             [("leaf", 0.7), ("leaf", -0.4), ("*", 0, 1), ("*", 2, 2), ("tanh", 2), ("+", 3, 4)]),
        ]
        rng = random.Random(25)
        randoms = [(f"random expression #{n + 1} (nodes reused)", _random_program(rng, 3, 10)) for n in range(6)]
        return [[name, program] for name, program in named + randoms]

    def probe(self, scalar_class, case):
        nodes = _evaluate(case[1], scalar_class, lambda node, op: getattr(node, op)())
        nodes[-1].backward()
        return {"out": float(nodes[-1].data),
                "grads": [float(n.grad) for n, (op, *_) in zip(nodes, case[1]) if op == "leaf"]}

    def judge(self, case, got):
        name, program = case
        out, grads = expect_fields(got, "out", "grads")
        values, expected = _run_torch(program)
        expect_number(out, values[-1].item(), f"{name}: the output's value", atol=1e-9, rtol=1e-9)
        if type(grads) is not list or len(grads) != len(expected):
            raise CheckFailed(UNREADABLE)
        leaves = "abcdefgh"
        for index, (g, e) in enumerate(zip(grads, expected)):
            if type(g) is not float or not math.isclose(g, e.item(), rel_tol=1e-7, abs_tol=1e-9):
                shown = f"{g:.6g}" if type(g) is float else type_name(g)
                hint = ("backward() must start with the output's own gradient, 1" if len(program) == 1
                        else _SHARED if "twice" in name or "shared" in name or "reused" in name
                        else f"check the local derivative of {program[-1][0]}")
                raise CheckFailed(f"{name}: gradient of {leaves[index]} is {shown}, expected {e.item():.6g}; {hint}")


CHECKS = {c.exercise: c for c in (DerivativeAt(), Sigmoid(), CentralDifference(), SiLUFunction(), ScalarBackward())}
