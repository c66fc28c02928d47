"""Are a notebook's stored outputs still those the current ``course_lib`` would print?

CI executes every chapter in fast mode and compares only the check lines, so a change to a module
can leave a notebook's stored (full-size) numbers — the ones its prose quotes — out of date without
any test failing. ``python -m course_lib execute NN`` re-executes a chapter in place and records in
its metadata a hash of each ``course_lib`` module it uses (those its cells import, and what they
import in turn); :func:`stale` then names the notebooks whose stored outputs predate a change.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

import nbformat
from nbformat import NotebookNode

from course_lib.runtime import repo_root

KEY = "outputs_from"  # under the notebook's "course" metadata
# what a check prints ("Exercise 1.2 passed") is compared with the stored line by nbval in CI, so the
# grading machinery cannot make a stored output silently stale
CHECKED_BY_CI = ("course_lib.grading", "course_lib.plain", "course_lib.checks")


def _imports(source: str) -> set[str]:
    """The ``course_lib`` modules a piece of code imports (``from course_lib import x`` counts
    ``course_lib.x`` when that is a module)."""
    found = set()
    try:
        tree = ast.parse(source)
    except SyntaxError:  # IPython magics and the like: nothing we can read
        return found
    package = repo_root() / "course_lib"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("course_lib."))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "course_lib":
            if node.module != "course_lib":
                found.add(node.module)
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                if (package / Path(*name.split(".")[1:])).with_suffix(".py").is_file() or (
                        package / Path(*name.split(".")[1:]) / "__init__.py").is_file():
                    found.add(name)
    return found


def _file(module: str) -> Path:
    parts = repo_root().joinpath(*module.split("."))
    return parts / "__init__.py" if parts.is_dir() else parts.with_suffix(".py")


def modules_used(nb: NotebookNode) -> list[str]:
    """Every ``course_lib`` module the notebook's code cells import, directly or through others."""
    pending = set().union(*(_imports(c.source) for c in nb.cells if c.cell_type == "code"))
    seen: set[str] = set()
    while pending:
        module = pending.pop()
        if module in seen or not _file(module).is_file():
            continue
        seen.add(module)
        pending |= _imports(_file(module).read_text(encoding="utf-8"))
    return sorted(m for m in seen if not m.startswith(CHECKED_BY_CI))


def fingerprints(modules: list[str]) -> dict[str, str]:
    """Module name -> the first 16 hex digits of the sha256 of its source file."""
    return {m: hashlib.sha256(_file(m).read_bytes()).hexdigest()[:16] for m in modules if _file(m).is_file()}


def stamp(nb: NotebookNode) -> None:
    """Record, in the notebook's metadata, the modules its outputs were produced with."""
    nb.metadata.setdefault("course", {})[KEY] = fingerprints(modules_used(nb))


def stale(path: Path) -> str | None:
    """Why the stored outputs of the notebook at ``path`` may be out of date, or None."""
    nb = nbformat.read(path, as_version=4)
    recorded = nb.metadata.get("course", {}).get(KEY)
    if not isinstance(recorded, dict):
        return f"{path.name}: never executed with `python -m course_lib execute` (no record of its modules)"
    current = fingerprints(modules_used(nb))
    changed = sorted(m for m in set(current) | set(recorded) if current.get(m) != recorded.get(m))
    if changed:
        return f"{path.name}: executed before changes to {', '.join(changed)}"
    return None
