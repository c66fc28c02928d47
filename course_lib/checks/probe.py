"""The grader's code inside a learner's sandboxed kernel: the kernel's launcher and the probe runner.

``python -m course_lib.checks.probe --exercises 4.1,4.2 [limits] -- -f CONNECTION_FILE`` sets the
resource limits, drops root to the sandbox's user id, switches off the course_lib references of the
chapter's exercises (before any learner code runs) and then starts an IPython kernel. The grader
then sends the learner's cells and, where a check cell stood, ``run(exercise_id, lambda: name)``,
which probes the learner's object and writes plain data for the grader to judge in its own process.

Nothing here decides a verdict: the learner's code shares this process and may have changed anything
in it, so all that leaves it is data the grader checks against its own reference.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from course_lib.checks import EXERCISES

FILE_LIMIT = 512 * 2**20  # the largest file the kernel may write


class ReferenceBlocked(RuntimeError):
    """Raised by a course_lib reference that is switched off while its exercise is graded."""


_course_reference_blocked = ReferenceBlocked  # the name _blocked's code looks up, here and in each module


def _blocked(*args: Any, **kwargs: Any) -> Any:
    # runs with the globals of the reference's module: only builtins and the name block() put there
    raise _course_reference_blocked("this exercise asks you to write it yourself: the reference is switched off while graded")


def block(target: str) -> None:
    """Switch off ``module:qualified.name`` everywhere in this process: the function object keeps
    its identity (so aliases imported earlier are switched off too) but its code now raises
    :class:`ReferenceBlocked`."""
    module_name, _, qualified = target.partition(":")
    module = importlib.import_module(module_name)
    owner: Any = module
    *path, name = qualified.split(".")
    for part in path:
        owner = getattr(owner, part)
    function = getattr(owner, name)
    module.__dict__["_course_reference_blocked"] = ReferenceBlocked
    if getattr(function, "__closure__", None) is None and hasattr(function, "__code__"):
        function.__code__ = _blocked.__code__
    else:  # a closure cannot take foreign code: replace the attribute instead
        setattr(owner, name, _blocked)


def run(exercise_id: str, candidate: Callable[[], Any], folder: str | Path = ".") -> None:
    """Probe the learner's object (``candidate()`` looks it up, so a missing name is reported, not
    raised) on the cases the grader wrote, and write what came back as plain data."""
    import torch

    from course_lib import plain
    from course_lib.checks import load
    from course_lib.checks.verdict import Raised, run_probes

    folder = Path(folder)
    cases = plain.read(folder / f"in-{exercise_id}")
    try:
        learner_object = candidate()
    except NameError:
        plain.write(folder / f"out-{exercise_id}", {"undefined": True})
        return
    with torch.random.fork_rng(devices=[]):  # as in the notebook: the learner's random state is kept
        outputs = run_probes(load(exercise_id), learner_object, cases, with_messages=False)
    plain.write(folder / f"out-{exercise_id}", {"outputs": [o.to_plain() if isinstance(o, Raised) else o for o in outputs]})


def _limit(kind: int, value: int) -> None:
    import resource

    soft, hard = resource.getrlimit(kind)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(kind, (value, value if hard == resource.RLIM_INFINITY else hard))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m course_lib.checks.probe")
    parser.add_argument("--exercises", default="", help="comma-separated exercise ids whose references to switch off")
    parser.add_argument("--memory", type=int, default=0, help="address-space limit in bytes (0: none)")
    parser.add_argument("--processes", type=int, default=0, help="limit on processes and threads of this user (0: none)")
    parser.add_argument("--uid", type=int, default=-1, help="user id to switch to when started as root (-1: stay)")
    parser.add_argument("kernel_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    try:
        import resource
    except ImportError:  # Windows: no resource limits (the grader says it runs without a sandbox)
        resource = None
    if resource is not None:
        _limit(resource.RLIMIT_CORE, 0)
        _limit(resource.RLIMIT_FSIZE, FILE_LIMIT)
        if args.memory:
            _limit(resource.RLIMIT_AS, args.memory)
        if args.processes and hasattr(resource, "RLIMIT_NPROC"):
            _limit(resource.RLIMIT_NPROC, args.processes)
    if args.uid >= 0 and hasattr(os, "geteuid") and os.geteuid() == 0:
        os.setgroups([])
        os.setgid(args.uid)
        os.setuid(args.uid)  # from root to another user: every capability is gone
    for exercise_id in filter(None, args.exercises.split(",")):
        for target in EXERCISES[exercise_id].blocks:
            block(target)

    from ipykernel.kernelapp import IPKernelApp

    kernel_args = args.kernel_args[1:] if args.kernel_args[:1] == ["--"] else args.kernel_args
    IPKernelApp.launch_instance(argv=kernel_args)


if __name__ == "__main__":
    sys.exit(main())
