"""Exercise notebooks: each source notebook ``notebooks/NN_topic.ipynb`` becomes
``exercises/NN_topic.ipynb`` with every solution region replaced by a ``raise NotImplementedError``
stub and no stored outputs, so a learner sees a verdict only once they run its check. Grading is
``course_lib.grader``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbformat import NotebookNode

from course_lib.checks import BY_CHECK, Exercise
from course_lib.runner import chapter_notebooks, notebooks_dir
from course_lib.runtime import repo_root

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
CHECK_CALL = re.compile(r"\bgrading\.(check_\w+)\(")
GRADING_SKIP = "grading-skip"  # tag: a cell no exercise or check needs (timings, big plots)
META = "course"  # key of this course's metadata in notebooks and cells


# ---------------------------------------------------------------------------------------------
# Finding exercises in a source notebook


@dataclass(frozen=True)
class ExerciseCells:
    """One exercise in a notebook: its registry entry, its solution cells and its check cell
    (indices into ``notebook.cells``)."""

    exercise: Exercise
    solution_cells: tuple[int, ...]
    check_cell: int


def find_exercises(nb: NotebookNode, name: str = "notebook") -> list[ExerciseCells]:
    """Pair each check cell with the solution cells before it (since the previous check)."""
    found: list[ExerciseCells] = []
    pending: list[int] = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if BEGIN in cell.source:
            pending.append(index)
        match = CHECK_CALL.search(cell.source)
        if match:
            exercise = BY_CHECK.get(match.group(1))
            if exercise is None:
                raise ValueError(f"{name}: cell {index} calls grading.{match.group(1)}, which is not a check")
            if not pending:
                raise ValueError(f"{name}: check of exercise {exercise.id} (cell {index}) follows no solution cell")
            found.append(ExerciseCells(exercise, tuple(pending), index))
            pending = []
    if pending:
        raise ValueError(f"{name}: solution cell(s) {pending} have no check cell after them")
    ids = [e.exercise.id for e in found]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{name}: an exercise is checked twice: {ids}")
    return found


def strip_solutions(source: str, exercise: Exercise) -> str:
    """Replace every BEGIN/END SOLUTION region with a stub, indented like the region."""
    out: list[str] = []
    inside = False
    for line in source.split("\n"):
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise ValueError(f"exercise {exercise.id}: {BEGIN} inside another solution region")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f"{indent}# YOUR CODE HERE")
            out.append(f'{indent}raise NotImplementedError("Exercise {exercise.id} — {exercise.title}")')
        elif stripped == END:
            if not inside:
                raise ValueError(f"exercise {exercise.id}: {END} without {BEGIN}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"exercise {exercise.id}: {BEGIN} is never closed by {END}")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Generating exercise notebooks


def make_exercise_notebook(source: Path) -> NotebookNode:
    """The learner's version of a source notebook: stubs instead of solutions, no stored outputs
    (no check shows a verdict before the learner runs it), exercise ids and points in the metadata."""
    nb = nbformat.read(source, as_version=4)
    exercises = find_exercises(nb, source.name)
    role: dict[int, tuple[str, Exercise]] = {}
    for item in exercises:
        role.update({i: ("solution", item.exercise) for i in item.solution_cells})
        role[item.check_cell] = ("check", item.exercise)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        kind, exercise = role.get(index, (None, None))
        if exercise is not None:
            cell.metadata[META] = {"exercise": exercise.id, "points": exercise.points, "role": kind}
        if kind == "solution":
            cell.source = strip_solutions(cell.source, exercise)
        cell.outputs = []
        cell.execution_count = None
    nb.metadata[META] = {"chapter": source.stem, "generated_from": f"notebooks/{source.name}"}
    return nb


def render(nb: NotebookNode) -> str:
    """The exact text written to disk (nbformat's sorted, indented JSON and a final newline)."""
    return nbformat.writes(nb) + "\n"


def generate(
    source_dir: Path | None = None, target_dir: Path | None = None, check: bool = False
) -> list[str]:
    """Write ``exercises/`` from ``notebooks/`` (or, with ``check``, only compare). Returns the
    problems found: exercise notebooks that are stale, missing, or have no source notebook."""
    source_dir = source_dir or notebooks_dir()
    target_dir = target_dir or repo_root() / "exercises"
    expected = {s.name: render(make_exercise_notebook(s)) for s in chapter_notebooks(source_dir)}
    if not expected:
        raise FileNotFoundError(f"no chapter notebooks (NN_*.ipynb) in {source_dir}")
    problems = []
    if not check:
        target_dir.mkdir(exist_ok=True)
    for name, text in expected.items():
        path = target_dir / name
        current = path.read_text(encoding="utf-8") if path.is_file() else None
        if current == text:
            continue
        if check:
            problems.append(f"{target_dir.name}/{name} is {'missing' if current is None else 'stale'}")
        else:
            path.write_text(text, encoding="utf-8")
    extra = sorted(p.name for p in target_dir.glob("*.ipynb") if p.name not in expected) if target_dir.is_dir() else []
    problems += [f"{target_dir.name}/{name} has no source notebook in {source_dir.name}/" for name in extra]
    return problems
