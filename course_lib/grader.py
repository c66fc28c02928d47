"""``python -m course_lib grade``: score exercise notebooks without trusting them.

Per submission, one kernel in a sandbox (``course_lib.sandbox``) runs the learner's code cells top
to bottom (cells tagged ``grading-skip`` and the check cells left out); where an exercise's check
cell stood, the kernel probes the learner's object on inputs the grader wrote and writes back plain
data (``course_lib.plain``). The verdicts are computed here, in the grader's own process, from that
data and the reference (``course_lib.checks``): nothing the submission prints, stores, patches or
subclasses reaches them. A submission's endless loop, crash or memory hunger costs only its own
exercises.
"""

from __future__ import annotations

import collections
import csv
import functools
import json
import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

import nbformat
from nbformat import NotebookNode

from course_lib import sandbox
from course_lib.arguments import require_int
from course_lib.checks import BY_CHECK, Exercise
from course_lib.exercises import CHECK_CALL, GRADING_SKIP, META, find_exercises
from course_lib.runner import find_notebooks

MAX_NOTEBOOK_BYTES = 25 * 2**20
MAX_CELLS = 2000
CANDIDATE = re.compile(r"\bgrading\.(check_\w+)\(\s*([A-Za-z_]\w*)\s*\)")


class UnusableSubmission(ValueError):
    """The file cannot be graded at all (not a notebook, too large, or no chapter it belongs to)."""


@dataclass(frozen=True)
class ExerciseResult:
    exercise: Exercise
    earned: int
    reason: str = ""  # why no points, in the check's words

    @property
    def passed(self) -> bool:
        return self.earned == self.exercise.points


@dataclass
class SubmissionResult:
    path: Path
    chapter: str
    exercises: list[ExerciseResult]
    notes: list[str] = field(default_factory=list)

    @property
    def earned(self) -> int:
        return sum(r.earned for r in self.exercises)

    @property
    def possible(self) -> int:
        return sum(r.exercise.points for r in self.exercises)


# ---------------------------------------------------------------------------------------------
# Reading a submission


def read_submission(path: Path) -> NotebookNode:
    """Read a notebook, or raise :class:`UnusableSubmission` saying why it cannot be graded."""
    if not path.is_file():
        raise UnusableSubmission(f"{path}: no such file")
    size = path.stat().st_size
    if size > MAX_NOTEBOOK_BYTES:
        raise UnusableSubmission(f"{path}: {size / 2**20:.1f} MB; the grader reads notebooks up to "
                                 f"{MAX_NOTEBOOK_BYTES // 2**20} MB (clear the outputs and hand it in again)")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UnusableSubmission(f"{path}: not a readable Jupyter notebook (not UTF-8 text: byte {error.start})") from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise UnusableSubmission(f"{path}: not a readable Jupyter notebook (broken JSON: {str(error)[:80]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        raise UnusableSubmission(f"{path}: not a readable Jupyter notebook (no list of cells)")
    if len(data["cells"]) > MAX_CELLS:
        raise UnusableSubmission(f"{path}: {len(data['cells'])} cells; the grader reads notebooks of up to {MAX_CELLS}")
    try:
        with warnings.catch_warnings():  # nbformat repairs duplicate cell ids with a warning: not the instructor's concern
            warnings.simplefilter("ignore")
            nb = nbformat.reads(text, as_version=4)
    except Exception as error:  # nbformat raises several types for schemas it cannot read
        first = next((ln for ln in str(error).splitlines() if ln.strip()), type(error).__name__)
        raise UnusableSubmission(f"{path}: not a readable Jupyter notebook ({first.strip()[:80]})") from None
    for cell in nb.cells:
        if not isinstance(cell.get("source", ""), str) or not isinstance(cell.get("metadata", {}), dict):
            raise UnusableSubmission(f"{path}: not a readable Jupyter notebook (a cell's source or metadata is malformed)")
    return nb


def chapter_of(path: Path, nb: NotebookNode) -> Path:
    """The reference notebook of a submission: named by its course metadata and by its file name
    (either alone is enough); a submission whose metadata and name disagree is refused."""
    chapters = {p.stem: p for p in find_notebooks()}
    meta = nb.metadata.get(META)
    stored = meta.get("chapter") if isinstance(meta, dict) and isinstance(meta.get("chapter"), str) else None
    named = [stem for stem in chapters if stem in path.stem]
    if stored in chapters:
        if named and named != [stored]:
            raise UnusableSubmission(f"{path}: its metadata says chapter {stored} but its file name says "
                                     f"{named[0]}; rename the file or hand in the right notebook")
        return chapters[stored]
    if len(named) == 1:
        return chapters[named[0]]
    raise UnusableSubmission(
        f"{path}: cannot tell which chapter this is (no course metadata, and the file name contains "
        f"none of: {', '.join(chapters)})"
    )


# ---------------------------------------------------------------------------------------------
# What the kernel runs


@dataclass(frozen=True)
class Probe:
    exercise: Exercise
    candidate: str  # the name the check cell passes to the check


@functools.cache
def reference_probes(reference: Path) -> list[Probe]:
    """Each exercise of a chapter with the name its check cell hands to the check."""
    nb = nbformat.read(reference, as_version=4)
    probes = []
    for item in find_exercises(nb, reference.name):
        match = CANDIDATE.search(nb.cells[item.check_cell].source)
        if match is None:
            raise ValueError(f"{reference.name}: the check of exercise {item.exercise.id} must be called "
                             "with a name, as grading.check_x(name)")
        probes.append(Probe(item.exercise, match.group(2)))
    return probes


def _role(cell: NotebookNode) -> tuple[str | None, str | None]:
    meta = cell.metadata.get(META)
    if isinstance(meta, dict) and isinstance(meta.get("role"), str) and isinstance(meta.get("exercise"), str):
        return meta["role"], meta["exercise"]
    return None, None


def plan(submission: NotebookNode, probes: list[Probe]) -> list[str | Probe]:
    """The learner's code cells in order, with each exercise's probe where its check cell stood
    (the cell the generator marked as its check, else the first cell calling its ``grading.check_…``;
    else right after its last solution cell; else at the end). Check cells are left out, and so are
    cells tagged ``grading-skip``; a cell that holds code and a check call (cells merged in
    JupyterLab) runs without the call's lines."""
    by_id = {p.exercise.id: p for p in probes}
    code = [c for c in submission.cells if c.get("cell_type") == "code"
            and not (isinstance(c.metadata.get("tags"), list) and GRADING_SKIP in c.metadata["tags"])]
    marked = {exercise_id for c in code for role, exercise_id in [_role(c)] if role == "check"}
    steps: list[str | Probe] = []
    placed: set[str] = set()
    last_solution: dict[str, int] = {}
    for cell in code:
        role, exercise_id = _role(cell)
        if role == "check":
            found = [exercise_id]
        else:
            found = [BY_CHECK[n].id for n in CHECK_CALL.findall(cell.source) if n in BY_CHECK and BY_CHECK[n].id not in marked]
            kept = "\n".join(line for line in cell.source.splitlines() if not CHECK_CALL.search(line))
            if kept.strip():
                if role == "solution" and exercise_id in by_id:
                    last_solution[exercise_id] = len(steps)
                steps.append(kept)
        for exercise in found:
            if exercise in by_id and exercise not in placed:
                placed.add(exercise)
                steps.append(by_id[exercise])
    missing = [p for p in probes if p.exercise.id not in placed]
    # check cells the learner deleted: right after the exercise's last solution cell (inserted from
    # the back, so earlier positions stay valid), else at the end
    for probe in sorted((p for p in missing if p.exercise.id in last_solution),
                        key=lambda p: last_solution[p.exercise.id], reverse=True):
        steps.insert(last_solution[probe.exercise.id] + 1, probe)
    steps += [p for p in missing if p.exercise.id not in last_solution]
    return steps


def _probe_source(probe: Probe, exchange: Path) -> str:
    """The cell that probes one exercise (an absolute folder: the learner may have changed directory)."""
    return (f"from course_lib.checks import probe as _course_probe\n"
            f"_course_probe.run({probe.exercise.id!r}, lambda: {probe.candidate}, {str(exchange)!r})")


# ---------------------------------------------------------------------------------------------
# Running one submission


class _MemoryWatch:
    """Kill a kernel whose process tree holds more resident memory than allowed."""

    def __init__(self, pid: int, limit: int) -> None:
        self.pid, self.limit, self.exceeded = pid, limit, False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        import psutil

        while not self._stop.wait(0.2):
            try:
                root = psutil.Process(self.pid)
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:  # the kernel is gone
                return
            used = 0
            for process in tree:  # private memory: pages shared after a fork count once
                try:
                    used += process.memory_full_info().uss
                except psutil.Error:  # exited meanwhile
                    pass
            if used > self.limit:
                self.exceeded = True
                kill_tree(self.pid)
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def kill_tree(pid: int) -> None:
    """SIGKILL a process and everything below it."""
    import psutil

    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return
    for process in reversed(tree):
        try:
            process.kill()
        except psutil.Error:
            pass


class _Kernel:
    """One sandboxed kernel: start, run code with a time limit, stop (with everything it started)."""

    def __init__(self, exchange: Path, exercises: list[str], limits: sandbox.Limits, use_sandbox: bool,
                 worker: int) -> None:
        from jupyter_client import KernelManager
        from jupyter_client.kernelspec import KernelSpecManager

        specs = exchange.parent / f"kernels-{exchange.name}"
        (specs / "course-sandbox").mkdir(parents=True)
        argv = sandbox.kernel_argv(exchange, exercises, limits, use_sandbox, worker)
        spec = {"argv": argv, "display_name": "course sandbox", "language": "python", "interrupt_mode": "message"}
        (specs / "course-sandbox" / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
        self.manager = KernelManager(
            kernel_name="course-sandbox", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(specs)]),
            transport="ipc", ip=str(exchange / "kernel"), connection_file=str(exchange / "connection.json"),
        )
        import zmq

        # messages from the kernel are bounded, and nothing unsent to a dead kernel keeps a socket open
        self.manager.context.setsockopt(zmq.MAXMSGSIZE, 64 * 2**20)
        self.manager.context.setsockopt(zmq.LINGER, 0)
        self.manager.write_connection_file()
        sandbox.hand_over(exchange / "connection.json", use_sandbox, worker)
        self.limits = limits
        self.watch: _MemoryWatch | None = None
        self.client = None

    def start(self, timeout: float) -> None:
        # the kernel's own output (banner, the learner's writes to fd 1/2) never reaches the grader's
        # and its environment is kernel_env() alone, never the grader's
        self.manager.start_kernel(cwd=str(Path(self.manager.connection_file).parent), env=sandbox.kernel_env(),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.watch = _MemoryWatch(self.manager.provisioner.process.pid, self.limits.memory_bytes)
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=timeout)

    def alive(self) -> bool:
        return self.manager.is_alive() and not (self.watch and self.watch.exceeded)

    def _reply(self, msg_id: str, deadline: float) -> dict | None:
        """The kernel's reply to ``msg_id``, its output discarded unread; ``None`` when the deadline
        passes or the kernel dies first."""
        while time.monotonic() < deadline:
            try:
                for _ in range(1000):  # the output is discarded unread, a bounded batch at a time
                    self.client.get_iopub_msg(timeout=0)
            except queue.Empty:
                pass
            try:
                reply = self.client.get_shell_msg(timeout=0.2)
            except queue.Empty:
                if not self.alive():
                    return None
                continue
            if reply.get("parent_header", {}).get("msg_id") == msg_id:
                return reply
        return None

    def run(self, source: str, timeout: float) -> str:
        """Execute ``source``: "ok", "error", "timeout" (interrupted; a kernel that ignores the
        interrupt is stopped) or "dead"."""
        msg_id = self.client.execute(source, allow_stdin=False, stop_on_error=False)
        reply = self._reply(msg_id, time.monotonic() + timeout)
        if reply is not None:
            return "ok" if reply["content"].get("status") == "ok" else "error"
        if not self.alive():
            return "dead"
        self.manager.interrupt_kernel()
        if self._reply(msg_id, time.monotonic() + 10) is None:
            kill_tree(self.manager.provisioner.process.pid)
        return "timeout"

    def stop(self) -> None:
        if self.watch:
            self.watch.stop()
        if self.client is not None:
            self.client.stop_channels()
        pid = getattr(getattr(self.manager.provisioner, "process", None), "pid", None)
        try:
            self.manager.shutdown_kernel(now=True)
        except Exception:  # noqa: BLE001 (a kernel that is already gone)
            pass
        if pid is not None:
            kill_tree(pid)
        self.manager.context.destroy(linger=0)  # never left to the garbage collector, which could wait forever


def _judge(probe: Probe, cases: list, out: Path) -> tuple[bool, str]:
    """(passed, reason) from what the probe wrote; whatever is there, it is only data."""
    from course_lib import plain
    from course_lib.checks import load
    from course_lib.checks.verdict import UNREADABLE, judge

    try:
        data = plain.read(out)
    except plain.PlainDataError:
        return False, "your code stopped the check before it could report (no readable results)"
    if type(data) is dict and set(data) == {"undefined"} and data["undefined"] is True:
        return False, f"your notebook defines no `{probe.candidate}`: run the exercise's cell"
    if type(data) is not dict or set(data) != {"outputs"} or type(data["outputs"]) is not list:
        return False, f"failed: {UNREADABLE}"
    verdict = judge(load(probe.exercise.id), cases, data["outputs"])
    return verdict.passed, verdict.reason


def printable(reason: str, limit: int = 240) -> str:
    """A reason as one short line of printable text, whatever a failure message quoted."""
    text = "".join(c if c.isprintable() else " " for c in reason)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def submission_budget(timeout: float) -> float:
    """Seconds one submission may take in all: 10 cells' worth of ``timeout``, at least 10 minutes."""
    return max(600.0, 10 * timeout)


@functools.cache
def _cases(exercise_id: str) -> list:
    """An exercise's cases, made once per grading run (judges only read them)."""
    from course_lib.checks import load

    return load(exercise_id).cases()


def grade_one(
    path: Path, reference: Path, submission: NotebookNode, workdir: Path, timeout: float,
    limits: sandbox.Limits, use_sandbox: bool, worker: int,
) -> SubmissionResult:
    """Grade one submission in its own sandboxed kernel."""
    from course_lib import plain

    probes = reference_probes(reference)
    steps = plan(submission, probes)
    exchange = workdir / f"w{worker}-{time.monotonic_ns()}"
    sandbox.prepare_exchange(exchange, use_sandbox, worker)
    for probe in probes:
        plain.write(exchange / f"in-{probe.exercise.id}", _cases(probe.exercise.id))
        for suffix in (".json", ".safetensors"):
            sandbox.hand_over(exchange / f"in-{probe.exercise.id}{suffix}", use_sandbox, worker)

    passed: set[str] = set()
    reasons: dict[str, str] = {}
    notes: list[str] = []
    deadline = time.monotonic() + submission_budget(timeout)
    kernel = _Kernel(exchange, [p.exercise.id for p in probes], limits, use_sandbox, worker)
    try:
        stopped = None
        try:
            kernel.start(timeout=120)
        except Exception as error:  # noqa: BLE001 (report, and grade the next submission)
            stopped = "the kernel did not start"
            notes.append(f"the kernel did not start ({type(error).__name__}: {printable(str(error))})")
        for step in steps:
            if stopped is None and time.monotonic() > deadline:
                stopped = f"the submission used its {submission_budget(timeout):g} s"
            if stopped is None and not kernel.alive():
                stopped = ("the kernel used more memory than allowed" if kernel.watch and kernel.watch.exceeded
                           else "the kernel crashed or exited")
            if stopped is not None:
                if isinstance(step, Probe):
                    reasons[step.exercise.id] = f"not run: {stopped} before this check"
                continue
            limit = min(timeout, max(1.0, deadline - time.monotonic()))
            if not isinstance(step, Probe):
                kernel.run(step, limit)
                continue
            status = kernel.run(_probe_source(step, exchange), limit)
            if status == "timeout":
                reasons[step.exercise.id] = f"timed out (more than {limit:g} s)"
            elif status == "dead":
                reasons[step.exercise.id] = "not run to the end: the kernel stopped during this check"
            else:
                ok, reason = _judge(step, _cases(step.exercise.id), exchange / f"out-{step.exercise.id}")
                if ok:
                    passed.add(step.exercise.id)
                reasons[step.exercise.id] = printable(reason)
    finally:
        kernel.stop()
        shutil.rmtree(exchange, ignore_errors=True)
        shutil.rmtree(exchange.parent / f"kernels-{exchange.name}", ignore_errors=True)
    results = [
        ExerciseResult(p.exercise, p.exercise.points if p.exercise.id in passed else 0,
                       reasons.get(p.exercise.id, "not run"))
        for p in probes
    ]
    return SubmissionResult(path, reference.stem, results, notes)


def grade(
    paths: Sequence[Path], timeout: float = 60.0, workers: int = 1, limits: sandbox.Limits | None = None,
    use_sandbox: bool | None = None,
) -> tuple[list[SubmissionResult], list[str], str]:
    """Grade submissions (``workers`` at a time); returns the results in the order given, the
    messages for unusable files, and the line describing the isolation used."""
    if timeout <= 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    workers = require_int("workers", workers)
    limits = limits or sandbox.Limits()
    use_sandbox = sandbox.bubblewrap() is not None if use_sandbox is None else use_sandbox
    errors: list[str] = []
    jobs = []
    for path in paths:
        try:
            submission = read_submission(path)
            jobs.append((path, chapter_of(path, submission), submission))
        except UnusableSubmission as error:
            errors.append(str(error))
        except Exception as error:  # noqa: BLE001 (a file nobody foresaw: one line, and the class goes on)
            errors.append(f"{path}: cannot be graded ({type(error).__name__})")
    free = list(range(workers))
    lock = threading.Lock()

    def work(job: tuple[Path, Path, NotebookNode]) -> SubmissionResult:
        with lock:
            worker = free.pop()
        try:
            return grade_one(*job, workdir, timeout, limits, use_sandbox, worker)
        except Exception as error:  # noqa: BLE001 (one submission's trouble never stops the class)
            path, reference, _ = job
            failed = [ExerciseResult(p.exercise, 0, "not graded: the grader failed on this submission")
                      for p in reference_probes(reference)]
            return SubmissionResult(path, reference.stem, failed, [f"grading failed ({type(error).__name__}: {error})"])
        finally:
            with lock:
                free.append(worker)

    # a short folder: the kernels' sockets live in it, and a socket's path may not exceed ~100 bytes
    short = "/tmp" if os.path.isdir("/tmp") else None
    with tempfile.TemporaryDirectory(prefix="course-grade-", dir=short) as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(work, jobs))
    return results, errors, sandbox.isolation(use_sandbox)


# ---------------------------------------------------------------------------------------------
# Reports


def report(result: SubmissionResult) -> str:
    """A table for one submission: exercise, title, points, and why points were lost."""
    rows = [(r.exercise.id, r.exercise.title, f"{r.earned}/{r.exercise.points}", r.reason) for r in result.exercises]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(("exercise", "title", "points"))]
    head = f"{'exercise':<{widths[0]}}  {'title':<{widths[1]}}  {'points':<{widths[2]}}  result"
    lines = [f"{result.path} — chapter {result.chapter}", head, "-" * len(head)]
    lines += [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:<{widths[2]}}  {d}" for a, b, c, d in rows]
    lines.append(f"total: {result.earned}/{result.possible}")
    lines += [f"note: {note}" for note in result.notes]
    return "\n".join(lines)


@dataclass(frozen=True)
class ExerciseStats:
    exercise: Exercise
    submissions: int
    passed: int
    reasons: list[tuple[str, int]]  # the most common failure reasons, with counts

    @property
    def pass_rate(self) -> float:
        return self.passed / self.submissions if self.submissions else 0.0


def class_statistics(results: Sequence[SubmissionResult], top: int = 3) -> list[ExerciseStats]:
    """Per exercise: how many submissions passed, and the ``top`` most common reasons for failing."""
    outcomes: dict[str, list[ExerciseResult]] = collections.defaultdict(list)
    for result in results:
        for r in result.exercises:
            outcomes[r.exercise.id].append(r)
    stats = []
    for rows in outcomes.values():
        failures = collections.Counter(r.reason for r in rows if not r.passed)
        stats.append(ExerciseStats(rows[0].exercise, len(rows), sum(r.passed for r in rows), failures.most_common(top)))
    return sorted(stats, key=lambda s: tuple(int(n) for n in s.exercise.id.split(".")))


def format_statistics(stats: Sequence[ExerciseStats]) -> str:
    lines = ["class statistics: exercise, pass rate, most common reasons for failing"]
    for s in stats:
        lines.append(f"{s.exercise.id:<6} {s.passed}/{s.submissions} passed ({s.pass_rate:.0%})")
        lines += [f"       {count} × {reason}" for reason, count in s.reasons]
    return "\n".join(lines)


def write_statistics(stats: Sequence[ExerciseStats], path: Path, top: int = 3) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["exercise", "title", "submissions", "passed", "pass_rate",
                         *[f"{kind}_{i + 1}" for i in range(top) for kind in ("reason", "count")]])
        for s in stats:
            reasons = [item for reason, count in s.reasons for item in (reason, count)]
            reasons += [""] * (2 * top - len(reasons))
            writer.writerow([s.exercise.id, s.exercise.title, s.submissions, s.passed, f"{s.pass_rate:.3f}", *reasons])


def write_csv(results: Sequence[SubmissionResult], path: Path) -> None:
    """One row per (submission, exercise), for a whole class in a spreadsheet."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["submission", "chapter", "exercise", "title", "points", "possible", "result"])
        for result in results:
            for r in result.exercises:
                writer.writerow([str(result.path), result.chapter, r.exercise.id, r.exercise.title,
                                 r.earned, r.exercise.points, r.reason])


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

