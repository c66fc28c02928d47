"""Checks of chapter 00 (setup)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from course_lib.checks.verdict import UNREADABLE, Check, CheckFailed, expect_tensor, expect_type, generator, seeded
from course_lib.plain import type_name


def _frozen_embedding() -> nn.Module:
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)
    return model


# The models of 0.2, by the name a case carries: the probe and the judge each build their own.
_MODELS: dict[str, Callable[[], nn.Module]] = {
    "nn.Linear(3, 4)": lambda: nn.Linear(3, 4),
    "nn.Linear(3, 4, bias=False)": lambda: nn.Linear(3, 4, bias=False),
    "an MLP 8 -> 16 -> 2": lambda: nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)),
    "a model with a frozen embedding": _frozen_embedding,
    "nn.ReLU() (no parameters)": lambda: nn.ReLU(),
}


def _build(name: str) -> nn.Module:
    """The model called ``name``, with fixed weights and the caller's random state untouched."""
    return seeded(0, _MODELS[name])


class ToFloatTensor(Check):
    """``to_float_tensor(values)`` returns a 1-D float32 tensor holding the numbers in order.
    Catches: ``torch.tensor(values)`` alone (int64 for a list of ints), returning the list itself."""

    exercise = "0.1"

    def cases(self) -> list:
        return [[1, 2, 3], [0.5, -1.25], [7], []]

    def probe(self, to_float_tensor, values):
        return to_float_tensor(values)

    def judge(self, values, got):
        expect_tensor(got, torch.tensor(values, dtype=torch.float32), f"for {values}")


class CountParameters(Check):
    """``count_parameters(model)`` counts the elements of the parameters that require grad.
    Catches: counting frozen parameters too, counting parameter tensors instead of elements,
    returning something other than an int."""

    exercise = "0.2"

    def cases(self) -> list:
        return list(_MODELS)

    def probe(self, count_parameters, name):
        return count_parameters(_build(name))

    def judge(self, name, got):
        expected = sum(p.numel() for p in _build(name).parameters() if p.requires_grad)
        expect_type(got, int, "an int", f"for {name}")
        if got != expected:
            raise CheckFailed(f"for {name}: got {got} ≠ expected {expected}")


class ReproducibleRandn(Check):
    """``reproducible_randn(seed, shape)`` seeds torch, then draws ``torch.randn(shape)``.
    The probe first puts the random state somewhere else, so the function must seed itself.
    Catches: no seeding, seeding with a fixed number instead of the argument."""

    exercise = "0.3"

    def cases(self) -> list:
        return [(0, (3,)), (42, (2, 5)), (7, (4, 1, 2)), {"seeds": (1, 2), "shape": (8,)}]

    def probe(self, reproducible_randn, case):
        with torch.random.fork_rng(devices=[]):  # the learner's random state is left as it was
            if type(case) is dict:  # two seeds must give two different draws
                return tuple(reproducible_randn(seed, case["shape"]) for seed in case["seeds"])
            seed, shape = case
            torch.manual_seed(seed + 1)  # a different state first: the function must seed itself
            return reproducible_randn(seed, shape)

    def judge(self, case, got):
        if type(case) is dict:
            if type(got) is not tuple or len(got) != len(case["seeds"]):
                raise CheckFailed(UNREADABLE)
            for seed, draw in zip(case["seeds"], got):
                if not isinstance(draw, torch.Tensor):
                    raise CheckFailed(f"seed {seed}, shape {case['shape']}: expected a torch.Tensor, "
                                      f"got {type_name(draw)}")
            if torch.equal(*got):
                raise CheckFailed("seeds 1 and 2 gave the same numbers: use the seed argument")
            return
        seed, shape = case
        expect_tensor(got, torch.randn(shape, generator=generator(seed)), f"seed {seed}, shape {shape}")


CHECKS = {c.exercise: c for c in (ToFloatTensor(), CountParameters(), ReproducibleRandn())}
