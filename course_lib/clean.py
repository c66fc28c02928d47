"""``python -m course_lib clean``: delete what running the course wrote (``runs/``, ``outputs/``,
``checkpoints/``; with ``everything`` also the fetched data in ``data/cache/``), saying how much it
frees. It never deletes a file git tracks."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from course_lib.runtime import repo_root

GENERATED = ("runs", "outputs", "checkpoints")
CACHE = "data/cache"


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def tracked_files(root: Path, folder: Path) -> list[str]:
    """Files under ``folder`` that git tracks (none, if ``root`` is not a git checkout)."""
    try:
        out = subprocess.run(["git", "-C", str(root), "ls-files", "--", str(folder.relative_to(root))],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return out.stdout.split() if out.returncode == 0 else []


def clean(everything: bool = False, root: Path | None = None) -> list[tuple[str, int]]:
    """Delete the generated folders; returns (folder, bytes freed) for each one deleted. A folder
    holding tracked files is refused with a ``ValueError`` naming them, before anything is deleted."""
    root = root or repo_root()
    folders = [root / name for name in (*GENERATED, *((CACHE,) if everything else ())) if (root / name).is_dir()]
    for folder in folders:
        tracked = tracked_files(root, folder)
        if tracked:
            raise ValueError(f"{folder.relative_to(root)} holds files git tracks ({', '.join(tracked[:3])}): not deleting")
    freed = []
    for folder in folders:
        size = folder_bytes(folder)
        shutil.rmtree(folder)
        freed.append((str(folder.relative_to(root)), size))
    return freed
