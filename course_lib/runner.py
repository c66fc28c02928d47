"""Execute chapters headless with papermill, the way an instructor or CI does, and summarise.

Each notebook runs in a fresh kernel whose working directory is ``notebooks/``; the executed copy
(with outputs, and papermill's injected parameters) goes to ``runs/<timestamp>/``. A failure is
reported with the cell and the error, and the remaining notebooks still run.
"""

from __future__ import annotations

import ast
import datetime as dt
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm


def repo_root() -> Path:
    """The course checkout: ``COURSE_ROOT`` if set, else the folder holding ``notebooks/`` above
    this package (editable install), else the current directory."""
    if os.environ.get("COURSE_ROOT"):  # set by the grader's sandbox, where notebooks/ is hidden
        return Path(os.environ["COURSE_ROOT"])
    here = Path(__file__).resolve().parents[1]
    return here if (here / "notebooks").is_dir() else Path.cwd()


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


def run_notebooks(
    notebooks: Sequence[Path],
    *,
    fast: bool = False,
    parameters: dict[str, object] | None = None,
    out_dir: Path | None = None,
    timeout: float | None = None,
) -> list[Result]:
    """Execute each notebook with papermill and return how each went (never raises for a
    notebook's own error; a missing kernel or unreadable file is reported the same way)."""
    import papermill  # slow to import (nbformat's schema), so only when running

    from course_lib.runtime import temporary_environment  # imports torch: only when running

    if timeout is not None and timeout <= 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    if out_dir is None:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out_dir = repo_root() / "runs" / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    params = dict(parameters or {})
    if fast:
        params.setdefault("FAST", True)
    env = {"COURSE_HEADLESS": "1", **({"COURSE_FAST": "1"} if fast else {})}

    results = []
    bar = tqdm(notebooks, desc="notebooks", unit="nb", leave=False)
    with temporary_environment(**env):
        for notebook in bar:
            bar.set_postfix_str(notebook.name)
            output = out_dir / notebook.name
            start = time.perf_counter()
            try:
                papermill.execute_notebook(
                    str(notebook),
                    str(output),
                    parameters=params,
                    cwd=str(notebook.parent),
                    progress_bar=False,
                    execution_timeout=timeout,
                )
                results.append(Result(notebook, output, True, time.perf_counter() - start))
            except Exception as error:  # report and go on with the next notebook
                results.append(
                    Result(notebook, output, False, time.perf_counter() - start, _describe_failure(error))
                )
    bar.close()
    return results


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
