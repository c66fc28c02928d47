"""Exercise notebooks are generated, current and deterministic; the grader scores what the learner
wrote and nothing a submission stores."""

import ast
import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import nbformat
import pytest

from course_lib import grading
from course_lib.checks import EXERCISES as REGISTRY
from course_lib.runner import chapter_notebooks
from course_lib.exercises import (
    find_exercises,
    generate,
    strip_solutions,
)

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
EXERCISES = ROOT / "exercises"
EXERCISE = grading.Exercise("9.9", "a test exercise", "check_test")


def _grade(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "course_lib", "grade", "--workers", "2", *map(str, args)],
        capture_output=True, text=True, timeout=600, cwd=cwd,
    )


# ---------------------------------------------------------------------------------------------
# Generator


def test_exercises_on_main_are_up_to_date():
    assert generate(check=True) == []


def test_check_reports_stale_missing_and_orphaned_files(tmp_path):
    source, target = tmp_path / "notebooks", tmp_path / "exercises"
    shutil.copytree(NOTEBOOKS, source)
    shutil.copytree(EXERCISES, target)
    assert generate(source, target, check=True) == []

    nb = nbformat.read(source / "01_tensors.ipynb", as_version=4)
    nb.cells[0].source += "\nAn edited sentence."
    nbformat.write(nb, source / "01_tensors.ipynb")
    (target / "00_setup.ipynb").unlink()
    (target / "99_old.ipynb").write_text("{}")
    assert generate(source, target, check=True) == [
        "exercises/00_setup.ipynb is missing",
        "exercises/01_tensors.ipynb is stale",
        "exercises/99_old.ipynb has no source notebook in notebooks/",
    ]
    assert generate(source, target) == ["exercises/99_old.ipynb has no source notebook in notebooks/"]
    (target / "99_old.ipynb").unlink()
    assert generate(source, target, check=True) == []


def test_generation_is_byte_for_byte_deterministic():
    """Two processes with different hash seeds (set and dict orders) write the same bytes."""
    code = ("import hashlib; from course_lib.exercises import make_exercise_notebook, render; "
            "from course_lib.runner import chapter_notebooks, notebooks_dir; "
            "print(hashlib.sha256(''.join(render(make_exercise_notebook(p)) for p in chapter_notebooks(notebooks_dir())).encode()).hexdigest())")
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                              env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert len(digests) == 1


@pytest.mark.parametrize("path", sorted(EXERCISES.glob("*.ipynb")), ids=lambda p: p.name)
def test_exercise_notebooks_hold_stubs_not_solutions(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata["course"]["chapter"] == path.stem
    roles = {}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        assert "### BEGIN SOLUTION" not in cell.source
        meta = cell.metadata.get("course")
        assert cell.outputs == [] and cell.execution_count is None  # no verdict before the learner runs it
        if meta is None:
            continue
        roles.setdefault(meta["exercise"], []).append(meta["role"])
        assert meta["points"] == grading.EXERCISES[meta["exercise"]].points
        if meta["role"] == "solution":
            title = grading.EXERCISES[meta["exercise"]].title
            assert f'raise NotImplementedError("Exercise {meta["exercise"]} — {title}")' in cell.source
            assert "# YOUR CODE HERE" in cell.source
    assert len(roles) >= 3 and all(r[-1] == "check" and "solution" in r for r in roles.values())


def test_strip_solutions_keeps_indentation_and_the_code_around():
    source = "def f(x):\n    y = 1\n    ### BEGIN SOLUTION\n    return x + y\n    ### END SOLUTION\n\nz = 2"
    assert strip_solutions(source, EXERCISE) == (
        "def f(x):\n    y = 1\n    # YOUR CODE HERE\n"
        '    raise NotImplementedError("Exercise 9.9 — a test exercise")\n\nz = 2'
    )


def test_strip_solutions_handles_several_regions():
    source = "### BEGIN SOLUTION\na = 1\n### END SOLUTION\nb = 2\n### BEGIN SOLUTION\nc = 3\n### END SOLUTION"
    assert strip_solutions(source, EXERCISE).count("raise NotImplementedError") == 2
    assert "b = 2" in strip_solutions(source, EXERCISE)


@pytest.mark.parametrize(
    "source, message",
    [
        ("### BEGIN SOLUTION\nx = 1", "never closed"),
        ("x = 1\n### END SOLUTION", "without"),
        ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION", "inside another"),
    ],
)
def test_malformed_solution_regions_are_errors(source, message):
    with pytest.raises(ValueError, match=message):
        strip_solutions(source, EXERCISE)


def test_a_solution_without_a_check_is_an_error():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("def f():\n    ### BEGIN SOLUTION\n    pass\n    ### END SOLUTION")]
    with pytest.raises(ValueError, match="have no check cell after them"):
        find_exercises(nb)
    nb.cells.append(nbformat.v4.new_code_cell("grading.check_not_a_check(f)"))
    with pytest.raises(ValueError, match="which is not a check"):
        find_exercises(nb)


# ---------------------------------------------------------------------------------------------
# Grader


def _solutions(chapter):
    """Exercise id -> the solution cell's source in the reference notebook."""
    nb = nbformat.read(NOTEBOOKS / f"{chapter}.ipynb", as_version=4)
    return {e.exercise.id: nb.cells[e.solution_cells[0]].source for e in find_exercises(nb)}


def _submission(tmp_path, name, chapter="01_tensors", solve=(), replace=None, edit=None):
    """An exercise notebook as a learner would hand it in: ``solve`` copies reference solutions
    in, ``replace`` maps exercise id -> the learner's own cell, ``edit`` changes anything else."""
    nb = nbformat.read(EXERCISES / f"{chapter}.ipynb", as_version=4)
    solutions = _solutions(chapter)
    for cell in nb.cells:
        meta = cell.metadata.get("course", {})
        if meta.get("role") == "solution":
            if meta["exercise"] in solve:
                cell.source = solutions[meta["exercise"]]
            if replace and meta["exercise"] in replace:
                cell.source = replace[meta["exercise"]]
    if edit:
        edit(nb)
    path = tmp_path / name
    nbformat.write(nb, path)
    return path


def _points(stdout, submission):
    """Exercise id -> (points earned, result) from the grader's table for one submission."""
    block = stdout.split(f"{submission} — chapter ")[1].split("\ntotal:")[0]
    rows = {}
    for line in block.splitlines()[3:]:
        parts = line.split()
        earned = next(p for p in parts if "/" in p and p.split("/")[0].isdigit())
        rows[parts[0]] = (int(earned.split("/")[0]), line.split(earned, 1)[1].strip())
    return rows


@pytest.mark.slow
def test_unsolved_exercises_score_zero_and_solutions_full_marks(tmp_path):
    """Every chapter's exercise notebook and reference notebook, graded once each: every stub is
    "not yet solved", and every reference solution earns its point in the sandbox, where the
    course's own references are off. (The exercise notebooks are not executed anywhere else: see
    test_run_all_in_an_exercise_notebook_cannot_stop_at_a_stub for why that suffices.)"""
    unsolved = sorted(EXERCISES.glob("*.ipynb"))
    solved = chapter_notebooks(NOTEBOOKS)
    csv_path, junit_path = tmp_path / "grades.csv", tmp_path / "grades.xml"
    result = _grade(*unsolved, *solved, "--csv", csv_path, "--junit", junit_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "note:" not in result.stdout, "a reference cell failed while grading:\n" + result.stdout
    for path in unsolved:
        rows = _points(result.stdout, path)
        assert rows and all(points == 0 and "not yet solved" in why for points, why in rows.values()), rows
    for path in solved:
        rows = _points(result.stdout, path)
        assert rows and all(points == REGISTRY[exercise].points and why == "passed"
                            for exercise, (points, why) in rows.items()), rows

    with csv_path.open() as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 2 * len(grading.EXERCISES)
    assert {row["exercise"] for row in table} == set(grading.EXERCISES)
    assert sum(int(row["points"]) for row in table) == sum(e.points for e in grading.EXERCISES.values())
    suites = ElementTree.parse(junit_path).getroot()
    assert len(suites) == len(unsolved) + len(solved)
    assert sum(int(s.get("failures")) for s in suites) == len(grading.EXERCISES)


def _alternative_pairwise():
    return (
        "def pairwise_sq_distances(x, y):\n"
        "    # expand |x - y|^2 = |x|^2 + |y|^2 - 2 x.y\n"
        "    return (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T\n"
    )


def _strip_metadata(nb):
    nb.metadata.pop("course")
    for cell in nb.cells:
        cell.metadata.pop("course", None)


def _set_stored_outputs_to_passed(nb):
    for cell in nb.cells:
        meta = cell.metadata.get("course", {})
        if meta.get("role") == "check":
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"Exercise {meta['exercise']} passed\n")]


def _delete_check_cells(nb):
    nb.cells = [c for c in nb.cells if c.metadata.get("course", {}).get("role") != "check"]


def _alter_check_cells(nb):
    for cell in nb.cells:
        meta = cell.metadata.get("course", {})
        if meta.get("role") == "check":
            cell.source = f'print("Exercise {meta["exercise"]} passed")'


CHEAT = (
    "from course_lib import grading\n"
    "grading.check_normalize_rows = lambda f: print('Exercise 1.2 passed')\n"
    "def normalize_rows(x):\n"
    "    raise NotImplementedError\n"
)


@pytest.mark.slow
def test_the_grader_scores_the_code_not_the_stored_notebook(tmp_path):
    everything = ("1.1", "1.2", "1.3", "1.4")
    subs = {
        "alternative": _submission(tmp_path, "alternative-01_tensors.ipynb", solve=everything,
                                   replace={"1.1": _alternative_pairwise()}),
        "wrong_axis": _submission(tmp_path, "wrong_axis-01_tensors.ipynb", solve=everything, replace={
            "1.2": "def normalize_rows(x):\n    return x / x.norm(dim=0, keepdim=True).clamp_min(1e-12)\n"}),
        "no_metadata": _submission(tmp_path, "bob-01_tensors.ipynb", solve=everything, edit=_strip_metadata),
        "edited_outputs": _submission(tmp_path, "edited.ipynb", edit=_set_stored_outputs_to_passed),
        "deleted_checks": _submission(tmp_path, "deleted.ipynb", solve=("1.1",), edit=_delete_check_cells),
        "altered_checks": _submission(tmp_path, "altered.ipynb", edit=_alter_check_cells),
        "cheat": _submission(tmp_path, "cheat.ipynb", replace={"1.2": CHEAT}),
        "infinite_loop": _submission(tmp_path, "loop.ipynb", solve=everything, replace={
            "1.3": "def masked_mean(x, mask):\n    while True:\n        pass\n"}),
    }
    result = _grade(*subs.values(), "--timeout", "8")
    assert result.returncode == 0, result.stdout + result.stderr
    points = {name: _points(result.stdout, path) for name, path in subs.items()}

    assert {k: v[0] for k, v in points["alternative"].items()} == dict.fromkeys(everything, 1)
    assert points["wrong_axis"]["1.2"] == (0, "failed: x of shape (3, 5): values differ from the reference")
    assert {k: v[0] for k, v in points["wrong_axis"].items() if k != "1.2"} == {"1.1": 1, "1.3": 1, "1.4": 1}
    assert {k: v[0] for k, v in points["no_metadata"].items()} == dict.fromkeys(everything, 1)
    for name in ("edited_outputs", "altered_checks"):
        assert all(p == 0 and "not yet solved" in why for p, why in points[name].values()), points[name]
    assert points["deleted_checks"]["1.1"][0] == 1
    assert all(points["deleted_checks"][e][0] == 0 for e in ("1.2", "1.3", "1.4"))
    assert points["cheat"]["1.2"][0] == 0 and "not yet solved" in points["cheat"]["1.2"][1]
    assert points["infinite_loop"]["1.3"][0] == 0 and "timed out" in points["infinite_loop"]["1.3"][1]
    assert {k: v[0] for k, v in points["infinite_loop"].items() if k != "1.3"} == {"1.1": 1, "1.2": 1, "1.4": 1}
    assert "8 submissions graded" in result.stdout


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("broken-01_tensors.ipynb", "this is not JSON", "not a readable Jupyter notebook"),
        ("essay-01_tensors.ipynb", '{"title": "my essay"}', "not a readable Jupyter notebook"),
        ("homework.ipynb", None, "cannot tell which chapter this is"),
    ],
)
def test_unusable_input_is_a_clear_error_without_a_traceback(tmp_path, name, content, message):
    path = tmp_path / name
    if content is None:
        nbformat.write(nbformat.v4.new_notebook(), path)
    else:
        path.write_text(content)
    result = _grade(path)
    assert result.returncode == 2
    assert message in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_a_missing_file_is_a_clear_error(tmp_path):
    result = _grade(tmp_path / "nothing.ipynb")
    assert result.returncode == 2 and "no such file" in result.stderr


def _bound_at_top_level(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    return names


def _run_all_stoppers(cells) -> list[str]:
    """Why "Run All" would stop in an exercise notebook whose code cells are ``cells``: a stub at a
    cell's top level, or a later cell (not the exercise's check) using what a stub cell defines
    before importing or defining it anew."""
    problems, learner_names = [], {}  # a name a stub cell defines -> its exercise id
    for index, cell in enumerate(cells):
        meta = cell.metadata.get("course", {})
        tree = ast.parse(cell.source)
        if meta.get("role") == "solution":
            inside = {id(n) for d in ast.walk(tree) if isinstance(d, (ast.FunctionDef, ast.AsyncFunctionDef))
                      for n in ast.walk(d)}
            if any(isinstance(n, ast.Raise) and id(n) not in inside for n in ast.walk(tree)):
                problems.append(f"cell {index}: exercise {meta['exercise']}'s stub raises outside a function")
            learner_names.update(dict.fromkeys(_bound_at_top_level(tree), meta["exercise"]))
            continue
        if meta.get("role") == "check":
            continue
        loaded = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        rebound = _bound_at_top_level(tree)
        used = sorted(name for name in learner_names if name in loaded and name not in rebound)
        if used:
            problems.append(f"cell {index} uses {used} (exercise {learner_names[used[0]]}) before importing the reference")
        for name in rebound:
            learner_names.pop(name, None)
    return problems


@pytest.mark.parametrize("path", sorted(EXERCISES.glob("*.ipynb")), ids=lambda p: p.name)
def test_run_all_in_an_exercise_notebook_cannot_stop_at_a_stub(path):
    """An exercise notebook is its reference notebook (which nbval executes) with each solution
    replaced by `raise NotImplementedError` inside the function to write. So "Run All" reaches the
    end exactly when no stub raises at a cell's top level and no later cell but the check uses the
    learner's function before the chapter imports the tested reference. Checked statically instead
    of executing every exercise notebook a second time."""
    cells = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    assert _run_all_stoppers(cells) == []


def test_the_run_all_analysis_finds_what_would_stop_a_learner():
    def cell(source, role=None):
        meta = {"course": {"role": role, "exercise": "9.9"}} if role else {}
        return nbformat.v4.new_code_cell(source, metadata=meta)

    stub = cell("def f(x):\n    # YOUR CODE HERE\n    raise NotImplementedError('9.9')", "solution")
    check = cell("grading.check_f(f)", "check")
    assert _run_all_stoppers([stub, check, cell("from course_lib.x import f\ny = f(1)")]) == []
    assert _run_all_stoppers([stub, check, cell("def f(x):\n    return x"), cell("f(2)")]) == []
    assert _run_all_stoppers([stub, check, cell("y = f(1)")]) == [
        "cell 2 uses ['f'] (exercise 9.9) before importing the reference"]
    assert _run_all_stoppers([stub, check, cell("def g():\n    return f(0)")]) == [
        "cell 2 uses ['f'] (exercise 9.9) before importing the reference"]
    top_level = cell("x = 1\n# YOUR CODE HERE\nraise NotImplementedError('9.9')", "solution")
    assert _run_all_stoppers([top_level]) == ["cell 0: exercise 9.9's stub raises outside a function"]
