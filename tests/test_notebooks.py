"""The course's notebook conventions, and proof that nbval really compares check outputs.

(pytest also executes every notebook in notebooks/ through nbval; see pyproject.toml.)
"""

import ast
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from course_lib.checks import BY_CHECK, EXERCISES
from course_lib.exercises import CHECK_CALL
from course_lib.runner import chapter_notebooks, notebook_parameters

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = chapter_notebooks(ROOT / "notebooks")


def _code_cells(path):
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def _text(cell):
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def test_the_first_chapters_exist():
    assert [p.stem[:2] for p in NOTEBOOKS][:3] == ["00", "01", "02"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_code_cell_is_the_parameters_cell_of_literals(path):
    """papermill only understands `NAME[: type] = literal  # help` lines: anything else (a call,
    `4 if FAST else 40`, an `=` inside the comment) is skipped with a warning, and `-p NAME` for
    it is then "unknown". So every assignment is a literal that papermill lists with its type."""
    first = _code_cells(path)[0]
    assert "parameters" in first.metadata.get("tags", []), "papermill needs a cell tagged 'parameters'"
    tree = ast.parse(first.source)
    assigned = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == "typing":
            continue  # the Optional of the annotations
        assert isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name), (
            f"line {node.lineno}: only `NAME: type = literal` assignments belong in a parameters cell")
        ast.literal_eval(node.value)  # raises for a non-literal
        assigned[node.target.id] = ast.unparse(node.annotation)
    assert list(assigned)[:3] == ["FAST", "DEVICE", "SEED"]
    assert "=" not in "".join(line.partition("#")[2] for line in first.source.splitlines()), (
        "an '=' inside a comment makes papermill skip the line")
    listed = {name: p["inferred_type_name"] for name, p in notebook_parameters(path).items()}
    assert listed == assigned, "papermill must see every parameter with its type"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_the_setup_cell_resolves_fast_and_every_size_left_at_none(path):
    """A parameter defaulting to None is a size with a fast and a full value: the setup cell (the
    next code cell that calls setup) resolves FAST from the environment and then each of them."""
    cells = _code_cells(path)
    setup_cell = next(c for c in cells[1:4] if "setup(" in c.source)
    assert "fast=FAST" in setup_cell.source and "FAST = session.fast" in setup_cell.source
    sizes = [name for name, p in notebook_parameters(path).items() if p["default"] == "None" and name != "FAST"]
    for name in sizes:
        if name in ("CLASSIFIER", "EXPORT_DIR"):  # None means "the default folder", resolved where used
            continue
        assert f"if {name} is None:\n    {name} = " in setup_cell.source, f"{name} is never resolved"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_exercises_have_checks_with_stored_passing_outputs(path):
    cells = _code_cells(path)
    solutions = sum(c.source.count("### BEGIN SOLUTION") for c in cells)
    assert solutions == sum(c.source.count("### END SOLUTION") for c in cells)
    checks = [c for c in cells if CHECK_CALL.search(c.source)]
    assert len(checks) >= 3, "each chapter has at least three exercises"
    for cell in checks:
        check = CHECK_CALL.search(cell.source).group(1)
        exercise = BY_CHECK[check].id
        assert cell.source.startswith("# NBVAL_CHECK_OUTPUT"), f"{check}: mark it for nbval"
        assert _text(cell) == f"Exercise {exercise} passed\n", f"{check}: stored output must be the pass line"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_outputs_hold_no_errors_warnings_or_widgets(path):
    for cell in _code_cells(path):
        for output in cell.outputs:
            assert output.output_type != "error", f"stored error in: {cell.source[:60]!r}"
            assert not (output.output_type == "stream" and output.name == "stderr"), (
                f"stderr noise a learner would see in: {cell.source[:60]!r}: {output.text[:200]!r}"
            )
            assert "application/vnd.jupyter.widget-view+json" not in output.get("data", {}), (
                f"a stored widget (a progress bar?) that a reader sees as 'Loading widget…' in: {cell.source[:60]!r}"
            )
    assert "widgets" not in nbformat.read(path, as_version=4).metadata, "leftover widget state in the metadata"


@pytest.mark.slow
def test_nbval_fails_when_a_stored_check_output_is_edited(tmp_path):
    """If nbval did not compare, a notebook whose stored verdict was tampered with would pass."""
    nb = nbformat.read(ROOT / "notebooks" / "00_setup.ipynb", as_version=4)
    check = next(c for c in nb.cells if c.cell_type == "code" and "check_to_float_tensor" in c.source)
    check.outputs[0]["text"] = "Exercise 0.1 failed: edited by hand\n"
    tampered = tmp_path / "00_setup.ipynb"
    nbformat.write(nb, tampered)

    result = subprocess.run(
        [sys.executable, "-m", "pytest", str(tampered), "-c", str(ROOT / "pyproject.toml"),
         "--rootdir", str(tmp_path), "-p", "no:cacheprovider", "-q"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert result.returncode == 1, result.stdout
    assert "1 failed" in result.stdout
    assert "Exercise 0.1 failed: edited by hand" in result.stdout


def test_exercise_headings_and_the_registry_name_each_exercise_alike():
    """One title per exercise: the notebook's heading (what the learner reads), the registry (what
    the grader's report and the stub's message say) agree, backticks aside."""
    headings = {}
    for path in NOTEBOOKS:
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "markdown":
                for number, title in re.findall(r"^#+ .*?Exercise (\d+\.\d+) — (.+)$", cell.source, re.M):
                    headings[number] = title.replace("`", "").strip()
    assert headings == {e.id: e.title for e in EXERCISES.values()}
