"""A notebook's record of the course_lib modules its stored outputs came from, and `execute`."""

import nbformat
import pytest

from course_lib import freshness
from course_lib.runner import execute_in_place


def _notebook(*sources):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    return nb


def test_the_modules_a_notebook_uses_include_what_they_import_but_not_the_checked_machinery():
    nb = _notebook("from course_lib import train\nfrom course_lib.grading import check_softmax", "%matplotlib inline")
    used = freshness.modules_used(nb)
    assert {"course_lib.train", "course_lib.runtime", "course_lib.arguments"} <= set(used)
    assert not [m for m in used if m.startswith(("course_lib.grading", "course_lib.checks", "course_lib.plain"))]


def test_a_stamp_goes_stale_when_a_module_changes_and_names_it(tmp_path):
    path = tmp_path / "nb.ipynb"
    nb = _notebook("import course_lib.bench")
    nbformat.write(nb, path)
    assert "never executed with `python -m course_lib execute`" in freshness.stale(path)
    freshness.stamp(nb)
    nbformat.write(nb, path)
    assert freshness.stale(path) is None
    nb.metadata["course"][freshness.KEY]["course_lib.bench"] = "0" * 16  # as if bench.py changed since
    nbformat.write(nb, path)
    assert freshness.stale(path) == "nb.ipynb: executed before changes to course_lib.bench"


@pytest.mark.slow
def test_execute_saves_fresh_outputs_and_the_record_or_leaves_a_failing_notebook_alone(tmp_path):
    good, bad = tmp_path / "good.ipynb", tmp_path / "bad.ipynb"
    nbformat.write(_notebook("from course_lib.runtime import fast_mode\nprint('fast' if fast_mode() else 'full')"), good)
    nbformat.write(_notebook("print('before')", "1 / 0"), bad)
    before = bad.read_bytes()
    execute_in_place(good, progress=False)
    executed = nbformat.read(good, as_version=4)
    assert executed.cells[0].outputs[0]["text"] == "full\n"  # full size, whatever the caller's COURSE_FAST
    assert freshness.stale(good) is None
    with pytest.raises(Exception, match="ZeroDivisionError"):
        execute_in_place(bad, progress=False)
    assert bad.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.ipynb", "good.ipynb"], "the kernel's sockets stay out"
