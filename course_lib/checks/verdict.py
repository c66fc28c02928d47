"""How a check reaches its verdict, in three parts that never share a process when graded.

``cases()`` (trusted) makes the inputs as plain data; ``probe(candidate, case)`` runs beside the
learner's code and returns plain data (what the learner's function returned, or facts about the
objects it changed); ``judge(case, got)`` (trusted) compares with the reference and raises
:class:`CheckFailed` in words a learner can act on. In a notebook all three run in the learner's
kernel, so the learner sees the verdict at once; the grader runs only ``probe`` in the learner's
sandboxed kernel and ``cases``/``judge`` in its own process, so nothing the learner's code prints,
patches or subclasses can change a verdict.

A verdict is one deterministic line: ``Exercise 4.1 passed``, ``Exercise 4.1 failed: <why>`` or
``Exercise 4.1 not yet solved: …``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from course_lib import plain
from course_lib.plain import type_name

UNREADABLE = "the check's results could not be read"
T = TypeVar("T")
NOT_SOLVED = "not yet solved: replace the `raise NotImplementedError` with your code"
BLOCKED = "ReferenceBlocked"  # the exception a switched-off course_lib reference raises
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,79}")


class CheckFailed(Exception):
    """Raised by a judge to report what is wrong, in words a learner can act on."""


@dataclass(frozen=True)
class Raised:
    """The learner's code raised: the names of the exception's classes (most derived first) and,
    only when the check runs in the learner's own notebook, the first line of its message."""

    names: tuple[str, ...]
    message: str = ""

    def to_plain(self) -> dict:
        return {"raised": list(self.names)}

    @classmethod
    def from_plain(cls, value: Any) -> Raised | None:
        """A :class:`Raised` read back from the sandbox, or ``None`` if ``value`` is not one."""
        if type(value) is dict and set(value) == {"raised"} and type(value["raised"]) is list:
            names = tuple(n for n in value["raised"][:12] if type(n) is str and _NAME.fullmatch(n))
            return cls(names or ("Exception",))
        return None

    def is_a(self, name: str) -> bool:
        return name in self.names


def raised(error: BaseException, with_message: bool) -> Raised:
    names = tuple(c.__name__ for c in type(error).__mro__ if c not in (object, BaseException))
    text = str(error).strip()
    message = text.splitlines()[0][:200] if with_message and text else ""
    return Raised(names, message)


class Check:
    """One exercise's check. Subclasses set ``exercise`` and implement the three parts."""

    exercise: str = ""

    def cases(self) -> list[Any]:
        """The inputs, as plain data (``course_lib.plain``); made on the trusted side."""
        raise NotImplementedError

    def probe(self, candidate: Any, case: Any) -> Any:
        """Run the learner's ``candidate`` on one case and return plain data. By default the case is
        the tuple of arguments: :func:`call` reports the output and the tensor arguments afterwards
        (the judge then uses :func:`expect_unchanged`)."""
        return call(candidate, *case)

    def judge(self, case: Any, got: Any) -> None:
        """Raise :class:`CheckFailed` unless ``got`` is right for ``case``."""
        raise NotImplementedError


def run_probes(check: Check, candidate: Any, cases: Sequence[Any], with_messages: bool) -> list[Any]:
    """Probe every case; an exception from the learner's code becomes a :class:`Raised`."""
    results: list[Any] = []
    for case in cases:
        try:
            results.append(check.probe(candidate, case))
        except KeyboardInterrupt:
            raise
        except BaseException as error:  # noqa: BLE001 (SystemExit from learner code is an answer too)
            results.append(raised(error, with_messages))
    return results


@dataclass(frozen=True)
class Verdict:
    """A check's outcome: whether it passed, and its one line. Graders read ``passed``, never the
    line's words (a failure message may quote the name of a type the learner chose)."""

    exercise: str
    passed: bool
    reason: str  # "passed", "not yet solved: …" or "failed: …"

    @property
    def line(self) -> str:
        return f"Exercise {self.exercise} {self.reason}"


def judge(check: Check, cases: Sequence[Any], outputs: Sequence[Any]) -> Verdict:
    """The verdict on the probes' ``outputs`` (as read back: :class:`Raised` allowed)."""
    def failed(reason: str) -> Verdict:
        return Verdict(check.exercise, False, f"failed: {reason}")

    if len(outputs) != len(cases):
        return failed(f"the check's results were incomplete ({len(outputs)} of {len(cases)} cases)")
    try:
        for case, got in zip(cases, outputs):
            error = got if isinstance(got, Raised) else Raised.from_plain(got)
            if error is not None:
                if error.is_a("NotImplementedError"):
                    return Verdict(check.exercise, False, NOT_SOLVED)
                if error.is_a(BLOCKED):
                    raise CheckFailed("your code called the course's reference, which is switched off while "
                                      "it is graded: this exercise asks you to write it yourself")
                raise CheckFailed(f"your code raised {error.names[0]}" + (f": {error.message}" if error.message else ""))
            try:
                check.judge(case, got)
            except CheckFailed:
                raise
            except Exception as error:  # noqa: BLE001 (data of an unexpected form: a failure, never a crash)
                raise CheckFailed(f"{UNREADABLE} ({type(error).__name__} while comparing)") from None
    except CheckFailed as failure:
        return failed(str(failure))
    return Verdict(check.exercise, True, "passed")


def run_local(check: Check, candidate: Any) -> str:
    """Cases, probes and judge in this process (a learner's notebook): the same plain-data round
    trips as in the grader, so the verdict here is the verdict there."""
    with torch.random.fork_rng(devices=[]):
        cases = check.cases()
        outputs = run_probes(check, candidate, plain.roundtrip(cases), with_messages=True)
        readable = [o if isinstance(o, Raised) else plain.roundtrip(o) for o in outputs]
        return judge(check, cases, readable).line


# ---------------------------------------------------------------------------------------------
# What judges use


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def seeded(seed: int, build: Callable[[], T]) -> T:
    """``build()`` with torch's global generator seeded, the caller's random state left as it was
    (a check's models get the same weights in every process, and the learner's draws are untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def call(fn: Any, *args: Any) -> dict:
    """Probe side: call the learner's ``fn`` and report its output and the tensor arguments as they
    are afterwards, so the judge can tell a function that changed its inputs in place."""
    out = fn(*args)
    return {"out": out, "args": [a if isinstance(a, torch.Tensor) else None for a in args]}


def expect_unchanged(case_args: Sequence[Any], got: dict) -> Any:
    """Judge side of :func:`call`: fail if a tensor argument came back changed; return the output."""
    after = got.get("args") if type(got) is dict else None
    if type(after) is not list or len(after) != len(case_args):
        raise CheckFailed(UNREADABLE)
    for i, (before, now) in enumerate(zip(case_args, after)):
        if isinstance(before, torch.Tensor) and not (
            isinstance(now, torch.Tensor) and now.shape == before.shape and now.dtype == before.dtype
            and (torch.equal(now, before) or (now.is_floating_point() and torch.allclose(now, before, 0, 0, True)))
        ):
            raise CheckFailed(f"argument {i + 1} was modified in place; leave inputs unchanged")
    return got.get("out")


def expect_fields(got: Any, *keys: str) -> list[Any]:
    """The values of ``keys`` in a probe's dict, or a failure if ``got`` is not such a dict."""
    if type(got) is not dict or not all(key in got for key in keys):
        raise CheckFailed(UNREADABLE)
    return [got[key] for key in keys]


def expect_tensor(got: Any, expected: torch.Tensor, case: str, atol: float = 1e-5, rtol: float = 1e-4,
                  mistakes: dict[str, torch.Tensor] | None = None) -> None:
    """Fail with a message naming the case unless ``got`` matches ``expected`` in type, shape,
    dtype and values (NaN only where the reference has NaN). ``mistakes`` maps a hint ("the scores
    were not divided by √d") to what that mistake computes: when the values match one, the
    failure says which, so a learner knows what to fix."""
    if not isinstance(got, torch.Tensor):
        raise CheckFailed(f"{case}: expected a torch.Tensor, got {type_name(got)}")
    if got.shape != expected.shape:
        raise CheckFailed(f"{case}: output shape {shape(got)} ≠ expected {shape(expected)}")
    if got.dtype != expected.dtype:
        raise CheckFailed(f"{case}: output dtype {got.dtype} ≠ expected {expected.dtype}")
    if got.is_floating_point() and torch.isnan(got).any() and not torch.isnan(expected).any():
        raise CheckFailed(f"{case}: output contains NaN")
    if not torch.allclose(got, expected, atol=atol, rtol=rtol, equal_nan=True):
        for hint, wrong in (mistakes or {}).items():
            if wrong.shape == got.shape and torch.allclose(got, wrong.to(got.dtype), atol=atol, rtol=rtol):
                raise CheckFailed(f"{case}: values differ from the reference; they are what you get when {hint}")
        raise CheckFailed(f"{case}: values differ from the reference")


def expect_number(got: Any, expected: float, case: str, atol: float, rtol: float = 0.0) -> None:
    """Fail unless ``got`` is an int or float (or a one-element tensor) close to ``expected``."""
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if type(got) not in (int, float):
        raise CheckFailed(f"{case}: expected a number, got {type_name(got)}")
    if not math.isclose(got, expected, abs_tol=atol, rel_tol=rtol):
        raise CheckFailed(f"{case}: value differs from the reference")


def expect_type(got: Any, kinds: type | tuple[type, ...], what: str, case: str) -> None:
    """Fail unless ``got`` is exactly one of the plain types ``kinds``."""
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if type(got) not in kinds:
        raise CheckFailed(f"{case}: expected {what}, got {type_name(got)}")

