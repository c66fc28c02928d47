"""The grader treats every submission as hostile and every correct solution fairly.

Hostile submissions of chapter 04 (and 00, for lying ints) try each attack we know of: rewriting
the verdict output, patching builtins/torch/operators, lying subclasses, inspecting frames and the
garbage collector, reading the reference solutions, writing into the course, killing processes,
exhausting time, memory and processes, and calling the reference. None of them may earn a point
for an exercise it did not solve, change a file of the project or of the environment's course_lib,
or disturb the grading of the submissions next to it.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from course_lib import sandbox
from course_lib.grader import plan, read_submission, reference_probes, UnusableSubmission

ROOT = Path(__file__).resolve().parents[1]
EXERCISES = ROOT / "exercises"
NOTEBOOKS = ROOT / "notebooks"

pytestmark = pytest.mark.skipif(sandbox.bubblewrap() is None, reason="needs a working bubblewrap (Linux)")

ATTENTION = (
    "def attention(q, k, v, mask=None):\n"
    "    scores = torch.einsum('bqd,bkd->bqk', q, k) / q.shape[-1] ** 0.5\n"
    "    if mask is not None:\n"
    "        scores = scores.masked_fill(~mask, float('-inf'))\n"
    "    return torch.softmax(scores, dim=-1) @ v\n"
)
CAUSAL = "def make_causal_mask(size):\n    return torch.ones(size, size, dtype=torch.bool).tril()\n"
SPLIT = "def split_heads(x, n_heads):\n    b, t, d = x.shape\n    return x.view(b, t, n_heads, d // n_heads).transpose(1, 2)\n"
MHA = (  # the build exercises 4.4 and 4.5, written as a learner might
    "class MyMultiHeadAttention(nn.Module):\n"
    "    def __init__(self, d_model, n_heads):\n"
    "        super().__init__()\n"
    "        self.h = n_heads\n"
    "        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d_model, d_model) for _ in range(4))\n"
    "    def forward(self, x, mask=None):\n"
    "        b, t, d = x.shape\n"
    "        q, k, v = (split_heads(p(x), self.h) for p in (self.q_proj, self.k_proj, self.v_proj))\n"
    "        scores = q @ k.transpose(-2, -1) / (d // self.h) ** 0.5\n"
    "        if mask is not None:\n"
    "            scores = scores.masked_fill(~mask, float('-inf'))\n"
    "        out = scores.softmax(-1) @ v\n"
    "        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))\n"
)
BLOCK = (
    "class MyBlock(nn.Module):\n"
    "    def __init__(self, d_model, n_heads, dropout=0.1):\n"
    "        super().__init__()\n"
    "        self.ln_1, self.ln_2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)\n"
    "        self.attn = MultiHeadAttention(d_model, n_heads)\n"
    "        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))\n"
    "        self.dropout = nn.Dropout(dropout)\n"
    "    def forward(self, x, causal=False):\n"
    "        x = x + self.dropout(self.attn(self.ln_1(x), causal=causal)[0])\n"
    "        return x + self.dropout(self.mlp(self.ln_2(x)))\n"
)
SOLVED_04 = {"4.1": ATTENTION, "4.2": CAUSAL, "4.3": SPLIT, "4.4": MHA, "4.5": BLOCK}
FULL_04 = {"4.1": 1, "4.2": 1, "4.3": 1, "4.4": 3, "4.5": 3}
ZEROS = (
    "def attention(q, k, v, mask=None):\n    return torch.zeros(q.shape[0], q.shape[1], v.shape[-1])\n"
)

HOSTILE = {
    # output rewriting: the verdict line is printed "passed"
    "print_rewrite": "import builtins\n_p = builtins.print\n"
                     "builtins.print = lambda *a, **k: _p(*[str(x).replace('not yet solved', 'passed').split(':')[0] for x in a], **k)\n"
                     "def attention(q, k, v, mask=None):\n    raise NotImplementedError\n",
    "stdout_rewrite": "import sys\nclass W:\n    def __init__(s, w): s.w = w\n"
                      "    def write(s, t): return s.w.write(t.replace('failed', 'passed').replace('not yet solved', 'passed'))\n"
                      "    def flush(s): s.w.flush()\nsys.stdout = W(sys.stdout)\n"
                      "def attention(q, k, v, mask=None):\n    raise NotImplementedError\n",
    # patched builtins, torch and operators, with wrong answers
    "patched": "import builtins, math, operator\nimport torch\n"
               "torch.allclose = lambda *a, **k: True\ntorch.equal = lambda *a, **k: True\n"
               "torch.Tensor.__eq__ = lambda *a, **k: True\nmath.isclose = lambda *a, **k: True\n"
               "operator.eq = lambda *a: True\n_i = builtins.isinstance\n"
               "builtins.isinstance = lambda *a: True\n" + ZEROS,
    # a tensor that answers every comparison with True
    "lying_tensor": "class Liar(torch.Tensor):\n    @classmethod\n"
                    "    def __torch_function__(cls, func, types, args=(), kwargs=None):\n"
                    "        if func.__name__ in ('allclose', 'equal', '__eq__', 'isclose'): return True\n"
                    "        return super().__torch_function__(func, types, args, kwargs or {})\n"
                    "def attention(q, k, v, mask=None):\n"
                    "    return torch.zeros(q.shape[0], q.shape[1], v.shape[-1]).as_subclass(Liar)\n",
    # frame and garbage-collector inspection for the expected answer
    "inspect": "import gc, sys\ndef attention(q, k, v, mask=None):\n"
               "    frame = sys._getframe()\n    while frame is not None:\n"
               "        for name in ('expected', 'reference'):\n"
               "            if name in frame.f_locals and isinstance(frame.f_locals[name], torch.Tensor): return frame.f_locals[name]\n"
               "        frame = frame.f_back\n"
               "    for o in gc.get_objects():\n"
               "        if isinstance(o, dict) and isinstance(o.get('expected'), torch.Tensor): return o['expected']\n"
               "    return torch.zeros(q.shape[0], q.shape[1], v.shape[-1])\n",
    # reading the reference notebook by any path, then running its solution
    "read_reference": "import glob, json, os\nsolution = None\n"
                      f"for path in [{str(NOTEBOOKS / '04_attention.ipynb')!r}, '../notebooks/04_attention.ipynb', "
                      "'notebooks/04_attention.ipynb', *[p for top in ('/work', '/tmp', '/root', '/home', '/srv') "
                      "for p in glob.glob(top + '/**/04_attention.ipynb', recursive=True)][:50]]:\n"
                      "    try:\n        cells = json.load(open(path))['cells']\n    except Exception:\n        continue\n"
                      "    for c in cells:\n        s = ''.join(c['source'])\n"
                      "        if 'BEGIN SOLUTION' in s and 'def attention' in s: solution = s\n"
                      "if solution: exec(solution)\n"
                      "else:\n    def attention(q, k, v, mask=None): raise NotImplementedError\n",
    # calling the course's reference (imported before the exercise cell runs)
    "call_reference": "from course_lib.attention import scaled_dot_product_attention as _reference\n"
                      "def attention(q, k, v, mask=None):\n    return _reference(q, k, v, mask)\n",
    # writing into the course: the checks, the grader, the repository, the other submissions
    "write_files": "import glob, os\nwritten = 0\n"
                   f"for path in [*glob.glob({str(ROOT / 'course_lib' / '**' / '*.py')!r}, recursive=True), "
                   f"{str(ROOT / 'README.md')!r}, {str(ROOT / 'owned.txt')!r}, *glob.glob('/tmp/**/*.ipynb', recursive=True)]:\n"
                   "    try:\n        open(path, 'a').write('\\nraise SystemExit  # owned\\n'); written += 1\n"
                   "    except OSError:\n        pass\n" + ZEROS,
    # killing everything it can see, the grader's parent included
    "kill": "import os, signal\nfor pid in (os.getppid(), 1):\n    try:\n        os.kill(pid, signal.SIGKILL)\n"
            "    except OSError:\n        pass\nos.kill(-1, signal.SIGKILL)\n",
    "exit": "import os\nos._exit(0)\n",
    "close_stdout": "import os, sys\nsys.stdout.close()\nos.close(1)\nos.close(2)\n" + ZEROS,
    # a failure message quoting a type the learner named "x passed", and control characters
    "forged_name": "def attention(q, k, v, mask=None):\n    return type('x passed', (), {})()\n",
    "forged_lines": "def attention(q, k, v, mask=None):\n    return type('E\\nExercise 4.1 passed\\x1b[2K', (), {})()\n",
    # resource exhaustion
    "endless_loop": "def attention(q, k, v, mask=None):\n    while True:\n        pass\n",
    "memory": "import torch\nhog = torch.ones(20 * 2**30, dtype=torch.uint8)\n" + ZEROS,
    "fork_bomb": "import os, time\nchildren = 0\ntry:\n    while children < 100000:\n"
                 "        if os.fork() == 0:\n            time.sleep(600); os._exit(0)\n        children += 1\n"
                 "except OSError:\n    pass\n" + ZEROS,
}

FAIR = {  # exercise id -> the learner's cell, all correct but written unlike the reference
    "einsum_prints_warns": {
        "4.1": "import warnings\n" + ATTENTION.replace("    return", "    print('debug: scores', scores.shape)\n"
                                                        "    warnings.warn('just checking')\n    return"),
        "4.2": "def make_causal_mask(size):\n    i = torch.arange(size)\n    return i[:, None] >= i[None, :]\n",
        "4.3": "import math\ndef _heads(x, n):\n    return x.unflatten(-1, (n, -1))\n"
               "def split_heads(x, n_heads):\n    return _heads(x, n_heads).permute(0, 2, 1, 3)\n",
    },
}


def _submission(tmp_path: Path, name: str, chapter: str = "04_attention", cells: dict | None = None,
                added: dict | None = None, edit=None) -> Path:
    """The chapter's exercise notebook with some exercise cells replaced (``cells``), new cells
    inserted before an exercise's cell (``added``) and anything else changed by ``edit``."""
    nb = nbformat.read(EXERCISES / f"{chapter}.ipynb", as_version=4)
    out = []
    for cell in nb.cells:
        meta = cell.metadata.get("course", {})
        if meta.get("role") == "solution":
            for source in (added or {}).get(meta["exercise"], []):
                out.append(nbformat.v4.new_code_cell(source))
            if cells and meta["exercise"] in cells:
                cell.source = cells[meta["exercise"]]
        out.append(cell)
    nb.cells = out
    if edit:
        edit(nb)
    path = tmp_path / name
    nbformat.write(nb, path)
    return path


def _grade(*args: object) -> tuple[subprocess.CompletedProcess, dict]:
    stats = Path(str(args[0])).parent / "grades.csv"
    result = subprocess.run([sys.executable, "-m", "course_lib", "grade", *map(str, args), "--csv", str(stats)],
                            capture_output=True, text=True, timeout=1200, cwd=ROOT)
    points: dict[str, dict[str, tuple[int, str]]] = {}
    if stats.exists():
        with stats.open() as handle:
            for row in csv.DictReader(handle):
                points.setdefault(Path(row["submission"]).stem, {})[row["exercise"]] = (int(row["points"]), row["result"])
    return result, points


def _fingerprint() -> dict[str, str]:
    """A hash of every file of the project (tracked or not, .git and the environment aside) and
    the size and time of every file of the environment's packages."""
    out = {}
    for path in sorted(ROOT.rglob("*")):
        parts = path.relative_to(ROOT).parts
        if path.is_file() and parts[0] not in (".git", ".venv") and "__pycache__" not in parts:
            out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    for folder in site.getsitepackages():
        for base, _, files in os.walk(folder):
            for name in files:
                info = os.stat(os.path.join(base, name))
                out[os.path.join(base, name)] = f"{info.st_size}:{info.st_mtime_ns}"
    return out


@pytest.mark.slow
def test_hostile_submissions_earn_nothing_and_change_nothing(tmp_path):
    other_checkout = tmp_path / "another-copy-of-the-course" / "notebooks"  # e.g. a second clone
    other_checkout.mkdir(parents=True)
    shutil.copy(NOTEBOOKS / "04_attention.ipynb", other_checkout)
    before = _fingerprint()
    subs = [_submission(tmp_path, f"{name}-04_attention.ipynb", cells={"4.1": source}) for name, source in HOSTILE.items()]
    liar = _submission(tmp_path, "lying_int-00_setup.ipynb", chapter="00_setup", cells={
        "0.2": "class Liar(int):\n    def __eq__(self, other): return True\n    def __ne__(self, other): return False\n"
               "    __hash__ = int.__hash__\ndef count_parameters(model):\n    return Liar(0)\n",
        "0.1": "class L(list):\n    def __eq__(self, other): return True\ndef to_float_tensor(values):\n    return L()\n"})
    after_all = _submission(tmp_path, "untouched-04_attention.ipynb")  # graded after the attackers
    solved = _submission(tmp_path, "solved-04_attention.ipynb", cells=SOLVED_04)
    result, points = _grade(*subs, liar, after_all, solved, "--timeout", "15", "--workers", "2", "--memory", "3")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "isolation: bubblewrap sandbox" in result.stdout

    for name in HOSTILE:
        assert points[f"{name}-04_attention"]["4.1"][0] == 0, (name, points[f"{name}-04_attention"])
        assert "passed" not in points[f"{name}-04_attention"]["4.1"][1], name
    assert {e: p for e, (p, _) in points["lying_int-00_setup"].items()} == {"0.1": 0, "0.2": 0, "0.3": 0}
    assert all(p == 0 and "not yet solved" in why for p, why in points["untouched-04_attention"].values()), result.stdout
    assert {e: p for e, (p, _) in points["solved-04_attention"].items()} == FULL_04

    reasons = {name: points[f"{name}-04_attention"]["4.1"][1] for name in HOSTILE}
    assert "write it yourself" in reasons["call_reference"]
    assert "timed out" in reasons["endless_loop"]
    assert "kernel crashed or exited" in reasons["exit"], reasons["exit"]
    # kill(-1) reaches only the sandbox's own processes (not even the kernel itself): grading goes on
    assert "not yet solved" in points["kill-04_attention"]["4.2"][1]
    # the attacks on 4.1 leave the other exercises of the same submission to the usual verdict (a
    # patched `isinstance` breaks the kernel itself: that submission loses the rest, nothing more)
    assert all("\n" not in why and "\x1b" not in why for sub in points.values() for _, why in sub.values())
    for name in ("lying_tensor", "inspect", "call_reference", "endless_loop", "memory", "forged_name"):
        assert "not yet solved" in points[f"{name}-04_attention"]["4.2"][1], (name, points[f"{name}-04_attention"])
    assert _fingerprint() == before
    assert not list(ROOT.glob("owned.txt"))
    import psutil

    leftovers = [p.pid for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real >= sandbox.SANDBOX_UID]
    assert not leftovers, "a sandboxed kernel outlived the grader"


def _merge_solution_and_check(nb):
    """JupyterLab's Merge Cells on each solution and its check: one cell, the solution's metadata."""
    cells = []
    for cell in nb.cells:
        if cell.metadata.get("course", {}).get("role") == "check" and cells:
            cells[-1].source += "\n" + cell.source
        else:
            cells.append(cell)
    nb.cells = cells


@pytest.mark.slow
def test_correct_work_written_differently_earns_full_points(tmp_path):
    fair = _submission(tmp_path, "fair-04_attention.ipynb", cells=FAIR["einsum_prints_warns"])
    twice = _submission(tmp_path, "twice-04_attention.ipynb", cells={"4.1": ATTENTION, "4.2": CAUSAL, "4.3": SPLIT},
                        added={"4.1": [ZEROS, "x = 1  # a learner's own cell"], "4.3": [ATTENTION]},
                        edit=lambda nb: nb.cells.insert(8, nbformat.v4.new_code_cell(CAUSAL + "print('twice')")))
    helper_cell = _submission(tmp_path, "helper-04_attention.ipynb",
                              cells={"4.1": ATTENTION, "4.2": "def make_causal_mask(size):\n    return _lower(size)\n", "4.3": SPLIT},
                              added={"4.2": ["def _lower(n):\n    return torch.tril(torch.ones(n, n)).bool()\n"]})
    moved = _submission(tmp_path, "chdir-04_attention.ipynb", cells={"4.1": "import os\nos.chdir('/')\n" + ATTENTION,
                                                                     "4.2": CAUSAL, "4.3": SPLIT})
    merged = _submission(tmp_path, "merged-04_attention.ipynb", cells={"4.1": ATTENTION, "4.2": CAUSAL, "4.3": SPLIT},
                         edit=_merge_solution_and_check)
    result, points = _grade(fair, twice, helper_cell, moved, merged, "--workers", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for name in ("fair", "twice", "helper", "chdir", "merged"):
        drills = {e: p for e, (p, _) in points[f"{name}-04_attention"].items() if e in ("4.1", "4.2", "4.3")}
        assert drills == {"4.1": 1, "4.2": 1, "4.3": 1}, result.stdout
    assert "debug" not in result.stdout and "twice" not in result.stdout.replace("twice-04", "")


@pytest.mark.slow
def test_workers_give_the_same_results_and_statistics_are_written(tmp_path):
    subs = [_submission(tmp_path, f"s{i}-04_attention.ipynb", cells={"4.1": ATTENTION} if i % 2 else {"4.2": CAUSAL})
            for i in range(4)]
    stats = tmp_path / "stats.csv"
    one, points_one = _grade(*subs, "--stats", stats)
    two, points_two = _grade(*subs, "--workers", "2")
    assert one.returncode == two.returncode == 0
    assert points_one == points_two, one.stdout + two.stdout
    assert "class statistics" in one.stdout
    with stats.open() as handle:
        rows = {row["exercise"]: row for row in csv.DictReader(handle)}
    assert rows["4.1"]["passed"] == "2" and rows["4.1"]["submissions"] == "4", one.stdout
    assert rows["4.3"]["passed"] == "0" and rows["4.3"]["count_1"] == "4"
    assert "not yet solved" in rows["4.3"]["reason_1"]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("truncated-04_attention.ipynb", b'{"cells": [{"cell_type": "code", "sou', "broken JSON"),
        ("latin1-04_attention.ipynb", '{"cells": []}  \u00e9'.encode("latin-1"), "not UTF-8"),
        ("list-04_attention.ipynb", b"[1, 2, 3]", "no list of cells"),
        ("huge-04_attention.ipynb", None, "MB; the grader reads notebooks up to"),
        ("cells-04_attention.ipynb", "cells", "10000 cells"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, name, content, message):
    path = tmp_path / name
    if content is None:
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
        nb.cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text="y" * (50 * 2**20))]
        nbformat.write(nb, path)
    elif content == "cells":
        nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1") for _ in range(10000)]), path)
    else:
        path.write_bytes(content)
    with pytest.raises(UnusableSubmission, match=message):
        read_submission(path)


def test_metadata_claiming_another_chapter_is_refused(tmp_path):
    nb = nbformat.read(EXERCISES / "05_bert.ipynb", as_version=4)
    path = tmp_path / "alice-04_attention.ipynb"
    nbformat.write(nb, path)
    result = subprocess.run([sys.executable, "-m", "course_lib", "grade", str(path)], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 2
    assert "metadata says chapter 05_bert but its file name says 04_attention" in result.stderr
    assert "Traceback" not in result.stderr


def test_probes_go_where_the_check_cells_stood():
    nb = nbformat.read(EXERCISES / "04_attention.ipynb", as_version=4)
    probes = reference_probes(NOTEBOOKS / "04_attention.ipynb")
    steps = plan(nb, probes)
    kinds = [s.exercise.id if not isinstance(s, str) else "cell" for s in steps]
    assert [k for k in kinds if k != "cell"] == ["4.1", "4.2", "4.3", "4.4", "4.5"]
    assert not any("grading.check_" in s for s in steps if isinstance(s, str))
    first_probe = kinds.index("4.1")
    assert "def attention" in steps[first_probe - 1]
    # a deleted check cell: the probe follows the exercise's last solution cell
    nb.cells = [c for c in nb.cells if c.metadata.get("course", {}).get("role") != "check"]
    steps = plan(nb, probes)
    kinds = [s.exercise.id if not isinstance(s, str) else "cell" for s in steps]
    assert [k for k in kinds if k != "cell"] == ["4.1", "4.2", "4.3", "4.4", "4.5"]
    assert "def attention" in steps[kinds.index("4.1") - 1]
