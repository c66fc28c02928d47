"""A micro autograd engine on scalars, and a finite-difference gradient check.

:class:`Value` records every operation that produced it; :meth:`Value.backward` walks that graph
in reverse topological order applying the chain rule, exactly what ``torch.autograd`` does with
tensors instead of scalars.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

Number = int | float


class Value:
    """A scalar that remembers how it was computed, so gradients can flow back to its inputs."""

    __slots__ = ("data", "grad", "_parents", "_op", "_backward", "label")

    def __init__(
        self,
        data: Number,
        parents: tuple[Value, ...] = (),
        op: str = "",
        label: str = "",
    ) -> None:
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            raise TypeError(f"data must be an int or float, got {type(data).__name__}")
        self.data = float(data)
        self.grad = 0.0
        self._parents = parents
        self._op = op
        self._backward: Callable[[], None] = lambda: None
        self.label = label

    def __repr__(self) -> str:
        name = f"{self.label}=" if self.label else ""
        return f"Value({name}{self.data:.6g}, grad={self.grad:.6g})"

    @property
    def parents(self) -> tuple[Value, ...]:
        return self._parents

    @property
    def op(self) -> str:
        return self._op

    @staticmethod
    def _lift(other: Value | Number) -> Value:
        return other if isinstance(other, Value) else Value(other)

    # Each operation computes its output and stores a closure that adds the local derivative
    # times the output's gradient into each input's gradient (+=, because an input can be used
    # more than once).
    def __add__(self, other: Value | Number) -> Value:
        other = self._lift(other)
        out = Value(self.data + other.data, (self, other), "+")

        def backward() -> None:
            self.grad += out.grad
            other.grad += out.grad

        out._backward = backward
        return out

    def __mul__(self, other: Value | Number) -> Value:
        other = self._lift(other)
        out = Value(self.data * other.data, (self, other), "*")

        def backward() -> None:
            self.grad += other.data * out.grad
            other.grad += self.data * out.grad

        out._backward = backward
        return out

    def __pow__(self, exponent: Number) -> Value:
        if isinstance(exponent, bool) or not isinstance(exponent, (int, float)):
            raise TypeError(
                f"exponent must be an int or float constant, got {type(exponent).__name__}"
            )
        out = Value(self.data**exponent, (self,), f"**{exponent:g}")

        def backward() -> None:
            self.grad += exponent * self.data ** (exponent - 1) * out.grad

        out._backward = backward
        return out

    def exp(self) -> Value:
        out = Value(math.exp(self.data), (self,), "exp")

        def backward() -> None:
            self.grad += out.data * out.grad

        out._backward = backward
        return out

    def log(self) -> Value:
        if self.data <= 0:
            raise ValueError(f"log needs a positive input, got {self.data:g}")
        out = Value(math.log(self.data), (self,), "log")

        def backward() -> None:
            self.grad += out.grad / self.data

        out._backward = backward
        return out

    def tanh(self) -> Value:
        out = Value(math.tanh(self.data), (self,), "tanh")

        def backward() -> None:
            self.grad += (1.0 - out.data**2) * out.grad

        out._backward = backward
        return out

    def relu(self) -> Value:
        out = Value(max(self.data, 0.0), (self,), "relu")

        def backward() -> None:
            self.grad += (self.data > 0) * out.grad  # derivative 0 at 0, as torch uses

        out._backward = backward
        return out

    # Everything else is built from the operations above, so it needs no backward of its own.
    def __neg__(self) -> Value:
        return self * -1

    def __sub__(self, other: Value | Number) -> Value:
        return self + (-self._lift(other))

    def __truediv__(self, other: Value | Number) -> Value:
        return self * self._lift(other) ** -1

    def __radd__(self, other: Number) -> Value:
        return self + other

    def __rmul__(self, other: Number) -> Value:
        return self * other

    def __rsub__(self, other: Number) -> Value:
        return self._lift(other) - self

    def __rtruediv__(self, other: Number) -> Value:
        return self._lift(other) / self

    def backward(self) -> None:
        """Fill ``.grad`` of every value this one depends on with d(self)/d(value).

        Gradients accumulate, as in PyTorch: call :func:`zero_grad` before a second backward.
        """
        self.grad = 1.0
        for node in reversed(topological_order(self)):
            node._backward()


def topological_order(root: Value) -> list[Value]:
    """Every value ``root`` depends on, inputs first and ``root`` last (each exactly once).

    Iterative, so deep graphs (long chains of operations) do not hit Python's recursion limit.
    """
    order: list[Value] = []
    visited: set[int] = set()
    stack: list[tuple[Value, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        stack.extend((parent, False) for parent in node.parents if id(parent) not in visited)
    return order


def zero_grad(root: Value) -> None:
    """Reset ``.grad`` to 0 on ``root`` and everything it depends on."""
    for node in topological_order(root):
        node.grad = 0.0


def finite_difference_grad(
    f: Callable[[Sequence[float]], float], xs: Sequence[float], eps: float = 1e-6
) -> list[float]:
    """Estimate the gradient of a scalar function ``f(xs)`` by central differences,
    (f(x + eps) - f(x - eps)) / (2 eps) for each coordinate: error of order eps**2.
    """
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    point = [float(x) for x in xs]
    grad = []
    for i in range(len(point)):
        up, down = list(point), list(point)
        up[i] += eps
        down[i] -= eps
        grad.append((float(f(up)) - float(f(down))) / (2 * eps))
    return grad


def gradcheck(
    f: Callable[[Sequence[Value]], Value],
    xs: Sequence[float],
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-4,
) -> tuple[bool, float]:
    """Compare the engine's gradient of ``f`` at ``xs`` with finite differences.

    ``f`` takes a list of :class:`Value` and returns a :class:`Value`. Returns whether every
    coordinate agrees within ``atol + rtol * |numeric|`` and the largest absolute difference.
    """
    inputs = [Value(float(x)) for x in xs]
    out = f(inputs)
    if not isinstance(out, Value):
        raise TypeError(f"f must return a Value, got {type(out).__name__}")
    out.backward()
    numeric = finite_difference_grad(lambda p: f([Value(v) for v in p]).data, xs, eps)
    diffs = [abs(v.grad - n) for v, n in zip(inputs, numeric)]
    ok = all(d <= atol + rtol * abs(n) for d, n in zip(diffs, numeric))
    return ok, max(diffs, default=0.0)


# Operations a random expression is built from, with how each is written. Each works on Value
# and on torch tensors alike, and keeps log and negative powers away from zero and negatives.
_UNARY: dict[str, tuple[Callable, str]] = {
    "tanh": (lambda a: a.tanh(), "tanh({})"),
    "relu": (lambda a: a.relu(), "relu({})"),
    "exp": (lambda a: (a * 0.5).exp(), "exp({}/2)"),
    "log": (lambda a: (a * a + 1).log(), "log({}²+1)"),
    "square": (lambda a: a**2, "({})²"),
    "cube": (lambda a: a**3, "({})³"),
    "inverse": (lambda a: (a * a + 1) ** -1, "1/({}²+1)"),
    "neg": (lambda a: -a, "-({})"),
}
_BINARY: dict[str, tuple[Callable, str]] = {
    "+": (lambda a, b: a + b, "{} + {}"),
    "-": (lambda a, b: a - b, "{} - ({})"),
    "*": (lambda a, b: a * b, "({}) * ({})"),
    "/": (lambda a, b: a / (b * b + 1), "({}) / (({})²+1)"),
}
_OPS = {**_UNARY, **_BINARY}


def random_expression(
    rng: random.Random, n_inputs: int = 3, n_ops: int = 8
) -> tuple[Callable[[Sequence], object], str]:
    """A random expression of ``n_inputs`` variables built from ``n_ops`` operations.

    Returns ``(f, text)``: ``f(xs)`` evaluates it on a list of :class:`Value` or of torch tensors
    (the same arithmetic, so the two can be compared), ``text`` shows it in readable form.
    Every intermediate result is used, so every input reaches the output.
    """
    if n_inputs < 1 or n_ops < 1:
        raise ValueError(f"n_inputs and n_ops must be >= 1, got {n_inputs} and {n_ops}")
    # A program over registers: registers 0..n_inputs-1 hold inputs, each step appends one.
    steps: list[tuple[str, tuple[int, ...]]] = []
    for step in range(n_ops):
        available = n_inputs + step
        if rng.random() < 0.5:
            steps.append((rng.choice(list(_BINARY)), (rng.randrange(available), rng.randrange(available))))
        else:
            steps.append((rng.choice(list(_UNARY)), (rng.randrange(available),)))
    # Add every register no step consumed into the result: then each input reaches the output.
    consumed = {i for _, args in steps for i in args}
    for index in range(n_inputs + n_ops - 1):
        if index not in consumed:
            steps.append(("+", (n_inputs + len(steps) - 1, index)))

    names = [f"x{i}" for i in range(n_inputs)]
    for op, args in steps:
        names.append(_OPS[op][1].format(*(names[i] for i in args)))

    def f(xs: Sequence) -> object:
        if len(xs) != n_inputs:
            raise ValueError(f"xs must hold {n_inputs} values, got {len(xs)}")
        registers = list(xs)
        for op, args in steps:
            registers.append(_OPS[op][0](*(registers[i] for i in args)))
        return registers[-1]

    return f, names[-1]
