"""Exercise notebooks and their grading.

``generate``: each source notebook ``notebooks/NN_topic.ipynb`` becomes ``exercises/NN_topic.ipynb``
with every solution region replaced by a ``raise NotImplementedError`` stub.

``grade``: a submission's exercise cells are taken out of it and put into a copy of the *reference*
notebook (reference setup, reference checks, reference expected outputs), which nbval executes in
lax mode. Nothing else the submission stores is trusted: edited outputs, deleted or altered check
cells and stored metadata do not change its score.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import io
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

import nbformat
from nbformat import NotebookNode

from course_lib import grading
from course_lib.runner import chapter_notebooks, find_notebooks, notebooks_dir, repo_root

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
CHECK_CALL = re.compile(r"\bgrading\.(check_\w+)\(")
GRADING_SKIP = "grading-skip"  # tag: a cell no exercise or check needs (timings, big plots)
META = "course"  # key of this course's metadata in notebooks and cells


class UnusableSubmission(ValueError):
    """The file cannot be graded at all (not a notebook, or no chapter it belongs to)."""


# ---------------------------------------------------------------------------------------------
# Finding exercises in a source notebook


@dataclass(frozen=True)
class ExerciseCells:
    """One exercise in a notebook: its registry entry, its solution cells and its check cell
    (indices into ``notebook.cells``)."""

    exercise: grading.Exercise
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
            check = getattr(grading, match.group(1), None)
            exercise = getattr(check, "exercise", None)
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


def strip_solutions(source: str, exercise: grading.Exercise) -> str:
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
    """The learner's version of a source notebook: stubs instead of solutions, outputs only on
    check cells (the line a correct solution prints), exercise ids and points in the metadata."""
    nb = nbformat.read(source, as_version=4)
    exercises = find_exercises(nb, source.name)
    role: dict[int, tuple[str, grading.Exercise]] = {}
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
        if kind != "check":
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


# ---------------------------------------------------------------------------------------------
# Grading


@dataclass(frozen=True)
class ExerciseResult:
    exercise: grading.Exercise
    earned: int
    reason: str = ""  # why no points: the first line of the check's verdict or of the error

    @property
    def passed(self) -> bool:
        return self.earned == self.exercise.points


@dataclass
class SubmissionResult:
    path: Path
    chapter: str
    exercises: list[ExerciseResult]
    setup_errors: list[str] = field(default_factory=list)  # reference cells that failed

    @property
    def earned(self) -> int:
        return sum(r.earned for r in self.exercises)

    @property
    def possible(self) -> int:
        return sum(r.exercise.points for r in self.exercises)


def read_submission(path: Path) -> NotebookNode:
    """Read a notebook, or raise :class:`UnusableSubmission` saying why it cannot be."""
    if not path.is_file():
        raise UnusableSubmission(f"{path}: no such file")
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as error:  # nbformat raises several types for broken JSON or schemas
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UnusableSubmission(f"{path}: not a readable Jupyter notebook ({reason})") from None
    if not isinstance(nb.get("cells"), list):
        raise UnusableSubmission(f"{path}: not a Jupyter notebook (no cells)")
    return nb


def chapter_of(path: Path, nb: NotebookNode) -> Path:
    """The reference notebook of a submission: from its metadata, else its file name (which
    must contain a chapter's name such as ``01_tensors``)."""
    chapters = {p.stem: p for p in find_notebooks()}
    stored = nb.metadata.get(META, {}).get("chapter") if isinstance(nb.metadata.get(META), dict) else None
    if stored in chapters:
        return chapters[stored]
    named = [stem for stem in chapters if stem in path.stem]
    if len(named) == 1:
        return chapters[named[0]]
    raise UnusableSubmission(
        f"{path}: cannot tell which chapter this is (no course metadata, and the file name contains "
        f"none of: {', '.join(chapters)})"
    )


def _defined_names(source: str) -> set[str]:
    """Top-level functions and classes a cell defines (by regex when it does not parse)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set(re.findall(r"^(?:def|class)\s+(\w+)", source, re.M))
    return {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}


def learner_cells(submission: NotebookNode, exercise_id: str, reference_sources: list[str]) -> list[str] | None:
    """The submission's code for one exercise: cells whose metadata names the exercise, else (for
    a notebook whose metadata was stripped) the last cell defining each reference cell's names."""
    code = [c for c in submission.cells if c.get("cell_type") == "code"]
    tagged = [
        c.source for c in code
        if isinstance(c.metadata.get(META), dict)
        and c.metadata[META].get("exercise") == exercise_id
        and c.metadata[META].get("role") == "solution"
    ]
    if tagged:
        return tagged
    found = []
    for reference in reference_sources:
        names = _defined_names(reference)
        matches = [c.source for c in code if names and names <= _defined_names(c.source)]
        if not matches:
            return None
        found.append(matches[-1])
    return found


# Runs before each check in a graded notebook: a fresh copy of the check functions, so a
# submission that replaced or patched them gains nothing.
_FRESH_CHECKS = (
    "import importlib as _importlib, sys as _sys\n"
    "_sys.modules.pop('course_lib.grading', None)\n"
    "_importlib.import_module('course_lib.grading')"
)


@dataclass(frozen=True)
class _Plan:
    """Which graded-notebook cells belong to which exercise."""

    exercises: dict[str, grading.Exercise]
    exercise_cells: dict[str, list[int]]  # exercise id -> solution, fresh-checks and check cells
    missing: dict[str, str]  # exercise id -> why the learner's cell was not found
    labels: dict[int, str]  # every other cell -> a short description for setup errors


def build_graded_notebook(reference_path: Path, submission: NotebookNode) -> tuple[NotebookNode, _Plan]:
    """The reference notebook, code cells only, with the learner's exercise cells in place of the
    solutions and everything else (setup, checks, expected outputs) from the reference."""
    reference = nbformat.read(reference_path, as_version=4)
    exercises = find_exercises(reference, reference_path.name)
    owner = {i: e for e in exercises for i in e.solution_cells}
    checks = {e.check_cell: e for e in exercises}

    graded = nbformat.v4.new_notebook()
    graded.metadata = reference.metadata
    cells: list[NotebookNode] = [
        nbformat.v4.new_code_cell(f"import os\nos.chdir({str(reference_path.parent)!r})")
    ]
    labels = {0: "working directory"}
    exercise_cells: dict[str, list[int]] = {e.exercise.id: [] for e in exercises}
    missing: dict[str, str] = {}
    learner: dict[str, list[str]] = {}
    for item in exercises:
        sources = [reference.cells[i].source for i in item.solution_cells]
        found = learner_cells(submission, item.exercise.id, sources)
        if found is None or len(found) != len(sources):
            missing[item.exercise.id] = "exercise cell not found in the submission"
            found = [strip_solutions(s, item.exercise) for s in sources]
        learner[item.exercise.id] = found

    for index, cell in enumerate(reference.cells):
        if cell.cell_type != "code" or GRADING_SKIP in cell.metadata.get("tags", []):
            continue
        if index in owner:
            item = owner[index]
            exercise_id = item.exercise.id
            source = learner[exercise_id][item.solution_cells.index(index)]
            exercise_cells[exercise_id].append(len(cells))
            cells.append(nbformat.v4.new_code_cell(source))
        elif index in checks:
            exercise_id = checks[index].exercise.id
            exercise_cells[exercise_id].append(len(cells))
            cells.append(nbformat.v4.new_code_cell(_FRESH_CHECKS))
            exercise_cells[exercise_id].append(len(cells))
            check = nbformat.v4.new_code_cell(cell.source)
            check.outputs = cell.outputs
            check.execution_count = cell.execution_count or 1  # nbval compares only "run" cells
            cells.append(check)
        else:
            first = next((ln for ln in cell.source.splitlines() if ln.strip()), "")
            labels[len(cells)] = f"reference cell {index} ({first.strip()[:50]!r})"
            cells.append(nbformat.v4.new_code_cell(cell.source))
    for number, cell in enumerate(cells):
        cell.id = f"graded-{number}"
    graded.cells = cells
    plan = _Plan({e.exercise.id: e.exercise for e in exercises}, exercise_cells, missing, labels)
    return graded, plan


@dataclass(frozen=True)
class _CellOutcome:
    passed: bool
    reason: str


class _Recorder:
    """A pytest plugin that keeps nbval's verdict and the actual outputs of every cell."""

    def __init__(self) -> None:
        self.outcomes: dict[tuple[str, int], _CellOutcome] = {}

    def pytest_runtest_makereport(self, item, call):  # noqa: ANN001 (pytest hook)
        cell_num = getattr(item, "cell_num", None)
        if cell_num is None or call.when != "call":
            return
        key = (Path(str(item.fspath)).name, cell_num)
        if call.excinfo is None or call.excinfo.typename == "Skipped":
            self.outcomes[key] = _CellOutcome(True, "")
            return
        self.outcomes[key] = _CellOutcome(False, _reason(item, call.excinfo.value))


def _first_line(text: str) -> str:
    return next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")


def _reason(item, error: BaseException) -> str:  # noqa: ANN001 (an nbval cell item)
    message = _first_line(error.args[0]) if error.args else _first_line(str(error))
    if message.startswith("Timeout"):
        return f"timed out ({message})"
    if message.startswith("Kernel dead"):
        return "not run: the kernel stopped after an earlier cell"
    outputs = getattr(item, "test_outputs", None) or []
    errors = [o for o in outputs if o.get("output_type") == "error"]
    if errors:
        ename, evalue = errors[0].get("ename", "Error"), _first_line(errors[0].get("evalue", ""))
        return f"{ename}: {evalue}" if evalue else ename
    printed = _first_line("".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream"))
    if printed:
        return printed
    return message or type(error).__name__


def _run_nbval(paths: Sequence[Path], timeout: float, workdir: Path) -> tuple[dict, str]:
    """Execute notebooks with nbval in lax mode inside this process; return every cell's outcome
    and pytest's own report (for when something other than a cell went wrong)."""
    import pytest

    from course_lib.runtime import temporary_environment

    ini = workdir / "pytest.ini"
    ini.write_text("[pytest]\n", encoding="utf-8")
    sanitize = Path(__file__).with_name("nbval_sanitize.cfg")
    args = [
        *map(str, paths), "-c", str(ini), "--rootdir", str(workdir), "-p", "no:cacheprovider",
        "--nbval-lax", "--nbval-current-env", f"--nbval-cell-timeout={timeout}",
        f"--nbval-sanitize-with={sanitize}", "-q", "--no-header", "-W", "ignore::DeprecationWarning",
    ]
    recorder = _Recorder()
    log = io.StringIO()
    with temporary_environment(COURSE_FAST="1", COURSE_HEADLESS="1"), contextlib.redirect_stdout(log):
        pytest.main(args, plugins=[recorder])
    return recorder.outcomes, log.getvalue()


def grade(paths: Sequence[Path], timeout: float = 60.0) -> tuple[list[SubmissionResult], list[str]]:
    """Grade submissions; returns the results and the error messages of unusable inputs."""
    if timeout <= 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    errors: list[str] = []
    jobs = []
    with tempfile.TemporaryDirectory(prefix="course-grade-") as tmp:
        workdir = Path(tmp)
        for number, path in enumerate(paths):
            try:
                submission = read_submission(path)
                reference = chapter_of(path, submission)
            except UnusableSubmission as error:
                errors.append(str(error))
                continue
            graded, plan = build_graded_notebook(reference, submission)
            graded_path = workdir / f"s{number:04d}_{reference.name}"
            nbformat.write(graded, graded_path)
            jobs.append((path, reference, graded_path, plan))
        outcomes, log = _run_nbval([job[2] for job in jobs], timeout, workdir) if jobs else ({}, "")

    results = []
    for path, reference, graded_path, plan in jobs:
        ran = {cell for (name, cell) in outcomes if name == graded_path.name}
        results.append(_score(path, reference.stem, graded_path.name, plan, outcomes, ran, log))
    return results, errors


def _score(
    path: Path, chapter: str, graded_name: str, plan: _Plan,
    outcomes: dict[tuple[str, int], _CellOutcome], ran: set[int], log: str,
) -> SubmissionResult:
    """Points per exercise: all of its cells (learner's code, fresh checks, check) must pass."""
    results = []
    for exercise_id, cells in plan.exercise_cells.items():
        exercise = plan.exercises[exercise_id]
        reason = plan.missing.get(exercise_id, "")
        if not reason:
            for cell in cells:
                outcome = outcomes.get((graded_name, cell))
                if outcome is None:
                    reason = "not executed (see the grader's log)"
                    break
                if not outcome.passed:
                    reason = outcome.reason.removeprefix(f"Exercise {exercise_id} ")
                    break
        results.append(ExerciseResult(exercise, 0 if reason else exercise.points, reason))
    setup_errors = [
        f"{label}: {outcomes[(graded_name, cell)].reason}"
        for cell, label in plan.labels.items()
        if (graded_name, cell) in outcomes and not outcomes[(graded_name, cell)].passed
    ]
    if not ran:
        setup_errors.append("nbval executed nothing: " + _first_line(log[-2000:]))
    return SubmissionResult(path, chapter, results, setup_errors)


# ---------------------------------------------------------------------------------------------
# Reports


def report(result: SubmissionResult) -> str:
    """A table for one submission: exercise, title, points, and why points were lost."""
    rows = [(r.exercise.id, r.exercise.title, f"{r.earned}/{r.exercise.points}",
             "passed" if r.passed else r.reason) for r in result.exercises]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(("exercise", "title", "points"))]
    head = f"{'exercise':<{widths[0]}}  {'title':<{widths[1]}}  {'points':<{widths[2]}}  result"
    lines = [f"{result.path} — chapter {result.chapter}", head, "-" * len(head)]
    lines += [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:<{widths[2]}}  {d}" for a, b, c, d in rows]
    lines.append(f"total: {result.earned}/{result.possible}")
    lines += [f"note: {error}" for error in result.setup_errors]
    return "\n".join(lines)


def write_csv(results: Sequence[SubmissionResult], path: Path) -> None:
    """One row per (submission, exercise), for a whole class in a spreadsheet."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["submission", "chapter", "exercise", "title", "points", "possible", "result"])
        for result in results:
            for r in result.exercises:
                writer.writerow([str(result.path), result.chapter, r.exercise.id, r.exercise.title,
                                 r.earned, r.exercise.points, "passed" if r.passed else r.reason])


def write_junit(results: Sequence[SubmissionResult], path: Path) -> None:
    """JUnit XML for CI dashboards: a test suite per submission, a test case per exercise."""
    suites = ElementTree.Element("testsuites")
    for result in results:
        failures = sum(not r.passed for r in result.exercises)
        suite = ElementTree.SubElement(
            suites, "testsuite", name=str(result.path), tests=str(len(result.exercises)),
            failures=str(failures), errors="0",
        )
        for r in result.exercises:
            case = ElementTree.SubElement(
                suite, "testcase", classname=result.chapter, name=f"Exercise {r.exercise.id} — {r.exercise.title}"
            )
            if not r.passed:
                ElementTree.SubElement(case, "failure", message=r.reason)
    ElementTree.indent(suites)
    ElementTree.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)
