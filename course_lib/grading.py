"""What the notebooks call: ``grading.check_<name>(candidate)`` prints the exercise's one verdict
line (``Exercise 4.1 passed``, ``… failed: <why>`` or ``… not yet solved: …``).

In a notebook the whole check runs in the learner's kernel, for instant feedback. The grader
(``python -m course_lib grade``) runs only the check's probe beside the learner's code and
decides the verdict in its own process (see ``course_lib.checks.verdict``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from course_lib.checks import BY_CHECK, EXERCISES, Exercise, load
from course_lib.checks.verdict import run_local

__all__ = ["EXERCISES", "Exercise", *BY_CHECK]


def _check_function(exercise: Exercise) -> Callable[[Any], None]:
    def check(candidate: Any) -> None:
        print(run_local(load(exercise.id), candidate))

    check.__name__ = check.__qualname__ = exercise.check
    check.__doc__ = f"Check exercise {exercise.id} ({exercise.title}) and print its verdict line."
    return check


globals().update({name: _check_function(exercise) for name, exercise in BY_CHECK.items()})
