"""Where a submission's kernel runs, and what it may touch.

On Linux with bubblewrap (Debian/Ubuntu: ``apt install bubblewrap``) the kernel gets a read-only
view of the system in which the course's folder, home folders and the submissions' folders are
empty, except ``course_lib``, ``data/`` and the Python environment, read-only; a private ``/tmp``; its
own exchange folder (the only place it can write); no network; its own process namespace (nothing
outside is visible or killable, and every process in it dies with the kernel); and, when the grader
runs as root, a user id of its own with no capabilities. Everywhere: limits on address space,
processes and core dumps, and a watchdog on the resident memory of the whole process tree.

Without bubblewrap (macOS, Windows, containers without user namespaces) the kernel is an ordinary
process of the grader's user with the same limits where the OS enforces them; the grader says so.
"""

from __future__ import annotations

import functools
import os
import shutil
import site
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import course_lib
from course_lib.runner import repo_root

SANDBOX_UID = 2_000_000  # first user id for sandboxed kernels when grading as root (one per worker)
_SYSTEM = {Path(p) for p in ("/", "/usr", "/etc", "/lib", "/lib64", "/bin", "/sbin", "/var", "/opt", "/proc", "/sys", "/dev", "/run")}
_PASS_THROUGH = ("PATH", "LANG", "LC_ALL", "TZ", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


@dataclass(frozen=True)
class Limits:
    """What one submission's kernel may use."""

    memory_bytes: int = 6 * 2**30
    processes: int = 256  # processes and threads (the kernel and torch use ~40)


@functools.cache
def bubblewrap() -> str | None:
    """The path of a bubblewrap that works here (tried once), or ``None``."""
    path = shutil.which("bwrap")
    if path is None or not sys.platform.startswith("linux"):
        return None
    trial = subprocess.run([path, "--ro-bind", "/", "/", "--unshare-pid", "--unshare-net", "true"],
                           capture_output=True, timeout=30)
    return path if trial.returncode == 0 else None


def isolation(sandbox: bool) -> str:
    """One line for the grader's output: how submissions are isolated in this run."""
    if sandbox:
        who = "a user id of its own" if os.geteuid() == 0 else "your user id"
        return (f"isolation: bubblewrap sandbox (read-only system, course and home folders hidden, no network, "
                f"own process namespace, {who}); limits per submission: memory, processes, time per cell")
    return ("isolation: NONE — bubblewrap is not available here, so submissions run as your user and can read "
            "and change your files; limits per submission: memory and processes where the OS enforces them, "
            "time per cell. Install bubblewrap (Linux) to grade untrusted work.")


def kernel_env() -> dict[str, str]:
    """The kernel's whole environment: fast mode, headless, one thread, caches in its own /tmp."""
    env = {name: os.environ[name] for name in _PASS_THROUGH if name in os.environ}
    env.update(
        HOME="/tmp", MPLCONFIGDIR="/tmp/matplotlib", IPYTHONDIR="/tmp/ipython", COURSE_FAST="1",
        COURSE_HEADLESS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1",
        PYDEVD_DISABLE_FILE_VALIDATION="1",
    )
    return env


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _show(path: Path, covered: set[Path], made: set[Path], how: str) -> list[str]:
    """bwrap arguments that make ``path`` visible again inside a covered (emptied) folder, with
    its parents traversable (bwrap would create them 0700, unreadable once root is dropped)."""
    under = [c for c in covered if _inside(path, c) and c != path]
    if not under:
        return []
    top = max(under, key=lambda c: len(c.parts))
    argv = []
    for parent in sorted(set(path.parents) - set(top.parents) - {top}, key=lambda p: len(p.parts)):
        if parent not in made:
            argv += ["--perms", "0755", "--dir", str(parent)]
            made.add(parent)
    return [*argv, how, str(path), str(path)]


def kernel_argv(
    exchange: Path, exercises: list[str], limits: Limits, sandbox: bool, worker: int = 0,
    hidden: tuple[Path, ...] = (),
) -> list[str]:
    """The command that starts one submission's kernel (``{connection_file}`` left for jupyter_client)."""
    as_root = os.geteuid() == 0 if hasattr(os, "geteuid") else False
    processes = limits.processes
    if not (sandbox and as_root):  # the limit counts every process of the user, so add the ones running now
        import psutil

        uid = os.getuid() if hasattr(os, "getuid") else None
        processes += sum(1 for p in psutil.process_iter(["uids"]) if uid is None or (p.info["uids"] and p.info["uids"].real == uid))
    launcher = [
        sys.executable, "-m", "course_lib.checks.probe", "--exercises", ",".join(exercises),
        "--memory", str(limits.memory_bytes), "--processes", str(processes),
        "--uid", str(SANDBOX_UID + worker if sandbox and as_root else -1), "--", "-f", "{connection_file}",
    ]
    if not sandbox:
        return launcher
    package = Path(course_lib.__file__).resolve().parent
    root = repo_root()
    hide = {p.resolve() for p in (root, Path.home(), Path("/root"), Path("/home"), Path.cwd(), *hidden) if p.exists()}
    keep = {p.resolve() for p in (package, root / "data", root / "checkpoints", Path(sys.prefix),
                                  Path(sys.base_prefix), *map(Path, site.getsitepackages())) if p.exists()}
    argv = [bubblewrap() or "bwrap", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--die-with-parent", "--new-session", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
            "--perms", "1777", "--tmpfs", "/tmp"]
    for folder in sorted(hide, key=lambda p: len(p.parts)):
        if folder not in _SYSTEM and not any(_inside(folder, k) for k in keep):  # never hide the system or the environment
            argv += ["--perms", "0755", "--tmpfs", str(folder)]
    made: set[Path] = set()
    covered = hide | {Path("/tmp")}
    for path in sorted(keep, key=lambda p: len(p.parts)):
        argv += _show(path, covered, made, "--ro-bind")
    argv += _show(exchange.resolve(), covered, made, "--bind")
    argv += ["--chdir", str(exchange), "--clearenv"]
    for name, value in kernel_env().items():
        argv += ["--setenv", name, value]
    if as_root:
        argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    return [*argv, "--", *launcher]


def prepare_exchange(exchange: Path, sandbox: bool, worker: int = 0) -> None:
    """Create the kernel's exchange folder, owned by the sandbox's user when grading as root."""
    exchange.mkdir(mode=0o700)
    if sandbox and hasattr(os, "geteuid") and os.geteuid() == 0:
        os.chown(exchange, SANDBOX_UID + worker, SANDBOX_UID + worker)


def hand_over(path: Path, sandbox: bool, worker: int = 0) -> None:
    """Make a file the grader wrote readable by the sandbox's user."""
    if sandbox and hasattr(os, "geteuid") and os.geteuid() == 0:
        os.chown(path, SANDBOX_UID + worker, SANDBOX_UID + worker)
