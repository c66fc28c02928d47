"""Execute chapters headless with papermill, the way an instructor or CI does, and summarise.

Each notebook runs in a fresh kernel whose working directory is ``notebooks/``; the executed copy
(with outputs, and papermill's injected parameters) goes to ``runs/<timestamp>/``. A failure is
reported with the cell and the error, and the remaining notebooks still run.
"""

from __future__ import annotations

import ast
import datetime as dt
import os
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from course_lib.runtime import repo_root


def notebooks_dir() -> Path:
    return repo_root() / "notebooks"


def chapter_notebooks(folder: Path) -> list[Path]:
    """The numbered chapters (``NN_topic.ipynb``) in a folder, in order."""
    return sorted(folder.glob("[0-9][0-9]_*.ipynb"))


def find_notebooks(names: Sequence[str] = ()) -> list[Path]:
    """Resolve notebook names: a path, a file name in ``notebooks/``, or a chapter prefix such as
    ``01`` or ``01_tensors``. No names: every numbered chapter, in order."""
    folder = notebooks_dir()
    chapters = chapter_notebooks(folder)
    if not names:
        if not chapters:
            raise FileNotFoundError(f"no chapter notebooks (NN_*.ipynb) in {folder}")
        return chapters
    found = []
    for name in names:
        path = Path(name)
        if path.suffix == ".ipynb" and path.is_file():
            found.append(path.resolve())
            continue
        matches = [p for p in chapters if p.name == name or p.stem == name or p.stem.startswith(f"{name}_")]
        if len(matches) != 1:
            known = ", ".join(p.stem for p in chapters)
            what = "no notebook" if not matches else "more than one notebook"
            raise FileNotFoundError(f"{what} matches {name!r}; chapters are: {known}")
        found.append(matches[0])
    return found


def parse_value(text: str) -> object:
    """Read a ``-p NAME VALUE`` value as a Python literal (3, 0.5, True, None, [1, 2]), else keep
    it as a string (``cuda``, ``bert-base-uncased``)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


@dataclass(frozen=True)
class Result:
    """How one notebook's run ended."""

    notebook: Path
    output: Path
    ok: bool
    seconds: float
    error: str = ""


def _describe_failure(error: Exception) -> str:
    """The failing cell (its first source line) and the error, as a learner would want it."""
    from papermill.exceptions import PapermillExecutionError

    if isinstance(error, PapermillExecutionError):
        first_line = next((ln for ln in error.source.splitlines() if ln.strip()), "")
        return (
            f"cell {error.cell_index} (In [{error.exec_count}]: {first_line.strip()!r}) raised "
            f"{error.ename}: {error.evalue}"
        )
    return f"{type(error).__name__}: {error}".strip()


def notebook_parameters(notebook: Path) -> dict[str, dict[str, str]]:
    """The parameters a notebook declares in its cell tagged ``parameters``, as papermill reads
    them: name -> {"inferred_type_name", "default", "help"} (in the cell's order)."""
    import papermill

    return {name: dict(p) for name, p in papermill.inspect_notebook(str(notebook)).items()}


def describe_parameters(notebook: Path) -> str:
    """One line per parameter: name, type, default and the help comment (``run --list-parameters``)."""
    params = notebook_parameters(notebook)
    if not params:
        return f"{notebook.name}: no cell tagged 'parameters'"
    width = max(len(f"{name}: {p['inferred_type_name']} = {p['default']}") for name, p in params.items())
    lines = [f"{notebook.name}:"]
    for name, p in params.items():
        definition = f"{name}: {p['inferred_type_name']} = {p['default']}"
        lines.append(f"  {definition:<{width}}  {p['help']}".rstrip())
    return "\n".join(lines)


def check_parameters(declared: dict[Path, dict[str, dict[str, str]]], parameters: dict[str, object]) -> None:
    """Refuse a parameter some notebook does not declare (papermill would only warn, and the
    value would silently change nothing), naming the parameters that notebook has. ``declared``
    maps each notebook to its :func:`notebook_parameters`."""
    for notebook, known in declared.items():
        unknown = [name for name in parameters if name not in known]
        if unknown:
            valid = ", ".join(known) or "none (no cell tagged 'parameters')"
            raise ValueError(
                f"{notebook.name} has no parameter {', '.join(unknown)}; its parameters are: {valid} "
                f"(see `python -m course_lib run --list-parameters {notebook}`)"
            )


def _quiet_kernel_manager() -> type:
    """The kernel manager `run` (through papermill) and `execute` start kernels with: local IPC sockets instead of TCP (nothing
    listens on a network port, so ipykernel has no unencrypted-TCP warning to print), and no SIGINT
    on shutdown. jupyter_client interrupts a kernel before asking it to stop; after the last cell
    the kernel is idle, and the signal only lands in whatever message it is handling, which
    ipykernel then logs as "KeyboardInterrupt caught in kernel"."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class QuietKernelManager(AsyncKernelManager):
        @default("transport")
        def _default_transport(self) -> str:
            return "ipc"

        @default("ip")
        def _default_ip(self) -> str:
            # the sockets' path prefix: absolute (the kernel runs in another working directory), short
            # (a socket path is limited to about 100 characters), unique; removed at shutdown
            return os.path.join(tempfile.gettempdir(), f"course-kernel-{uuid.uuid4().hex[:12]}")

        async def _async_interrupt_kernel(self) -> None:
            if not self.shutting_down:
                await super()._async_interrupt_kernel()

    return QuietKernelManager


def run_notebooks(
    notebooks: Sequence[Path],
    *,
    fast: bool = False,
    parameters: dict[str, object] | None = None,
    out_dir: Path | None = None,
    timeout: float | None = None,
    progress: bool = True,
) -> list[Result]:
    """Execute each notebook with papermill and return how each went (never raises for a
    notebook's own error; a missing kernel or unreadable file is reported the same way).

    Raises ``ValueError`` before running anything when a parameter is not declared by every
    notebook. With ``progress``, a bar (on stderr) and one line per finished notebook (on stdout)."""
    import papermill  # slow to import (nbformat's schema), so only when running

    from course_lib.runtime import HEADLESS_ENVIRONMENT, temporary_environment

    if timeout is not None and timeout <= 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    params = dict(parameters or {})
    declared = {notebook: notebook_parameters(notebook) for notebook in notebooks}
    check_parameters(declared, params)
    if out_dir is None:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out_dir = repo_root() / "runs" / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    env = {**HEADLESS_ENVIRONMENT, **({"COURSE_FAST": "1"} if fast else {})}
    kernel_manager = _quiet_kernel_manager()

    results = []
    bar = tqdm(notebooks, desc="notebooks", unit="nb", leave=False, disable=not progress)
    with temporary_environment(**env):
        for notebook in bar:
            bar.set_postfix_str(notebook.name)
            output = out_dir / notebook.name
            # --fast sets FAST=True in notebooks that declare it (all chapters do)
            given = {"FAST": True, **params} if fast and "FAST" in declared[notebook] else params
            start = time.perf_counter()
            try:
                papermill.execute_notebook(
                    str(notebook),
                    str(output),
                    parameters=given,
                    cwd=str(notebook.parent),
                    progress_bar=False,
                    execution_timeout=timeout,
                    kernel_manager_class=kernel_manager,
                )
                result = Result(notebook, output, True, time.perf_counter() - start)
            except Exception as error:  # report and go on with the next notebook
                result = Result(notebook, output, False, time.perf_counter() - start, _describe_failure(error))
            results.append(result)
            if progress:
                bar.write(f"{notebook.name}: {'OK' if result.ok else 'FAILED'} in {result.seconds:.1f} s")
    bar.close()
    return results


def execute_in_place(notebook: Path, *, timeout: float | None = None, progress: bool = True) -> None:
    """Re-execute a source notebook top to bottom in full size, as a maintainer does after editing
    it, and save it with its fresh outputs and a record of the ``course_lib`` modules they came from
    (:mod:`course_lib.freshness`). Nothing is written when a cell raises: the error is re-raised."""
    import nbformat
    from nbclient import NotebookClient

    from course_lib import freshness
    from course_lib.runtime import HEADLESS_ENVIRONMENT, temporary_environment

    nb = nbformat.read(notebook, as_version=4)
    code_cells = sum(c.cell_type == "code" for c in nb.cells)
    bar = tqdm(total=code_cells, desc=notebook.name, unit="cell", leave=False, disable=not progress)
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", record_timing=False,
        resources={"metadata": {"path": str(notebook.parent)}}, kernel_manager_class=_quiet_kernel_manager(),
        on_cell_executed=lambda cell, **_: bar.update(cell.cell_type == "code"),
    )
    with temporary_environment(**HEADLESS_ENVIRONMENT, COURSE_FAST="0"):
        try:
            client.execute()
        finally:
            bar.close()
    nb.metadata.pop("widgets", None)  # a headless run has no live widgets: their saved state is only bulk
    freshness.stamp(nb)
    nbformat.write(nb, notebook)


def summary(results: Sequence[Result]) -> str:
    """A table: notebook, status, seconds; then each failure's cell and error."""
    width = max([len("notebook"), *(len(r.notebook.name) for r in results)])
    lines = [f"{'notebook':<{width}}  status  seconds", f"{'-' * width}  ------  -------"]
    for r in results:
        lines.append(f"{r.notebook.name:<{width}}  {'OK' if r.ok else 'FAILED':<6}  {r.seconds:7.1f}")
    failed = [r for r in results if not r.ok]
    passed = len(results) - len(failed)
    lines.append(f"{passed} of {len(results)} notebooks OK")
    for r in failed:
        lines.append(f"\nFAILED {r.notebook.name}: {r.error}\n  executed copy: {r.output}")
    return "\n".join(lines)
