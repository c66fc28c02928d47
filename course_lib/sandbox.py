"""Where a submission's kernel runs, and what it may touch.

On Linux with bubblewrap (Debian/Ubuntu: ``apt install bubblewrap``) the kernel sees only the
system's programs and libraries, the Python environment, ``course_lib``, ``data/`` and
``checkpoints/``, all read-only (no notebooks, no home folders, no other files of the machine); a
private ``/tmp``; its own exchange folder (the only place it can write); no network; its own process
namespace (nothing outside is visible or killable, and every process in it dies with the kernel);
and, when the grader runs as root, a user id of its own with no capabilities. Everywhere: limits on address space,
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
from course_lib.runtime import HEADLESS_ENVIRONMENT, repo_root

SANDBOX_UID = 2_000_000  # first user id for sandboxed kernels when grading as root (one per worker)
_SYSTEM = ("/usr", "/etc", "/sys", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")  # shown read-only
TMP_BYTES = 2 * 2**30  # size of the kernel's /tmp and /dev/shm
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
    trial = subprocess.run([path, "--ro-bind", "/", "/", "--unshare-pid", "--unshare-net", "--size", "1048576",
                            "--tmpfs", "/tmp", "true"], capture_output=True, timeout=30)
    return path if trial.returncode == 0 else None


def isolation(sandbox: bool) -> str:
    """One line for the grader's output: how submissions are isolated in this run."""
    if sandbox:
        who = "a user id of its own" if os.geteuid() == 0 else "your user id"
        return (f"isolation: bubblewrap sandbox (only the system, the Python environment and course_lib visible, "
                f"read-only; no network; "
                f"own process namespace; {who}); limits per submission: memory, processes, time per cell")
    return ("isolation: NONE — bubblewrap is not available here, so submissions run as your user and can read "
            "and change your files; limits per submission: memory and processes where the OS enforces them, "
            "time per cell. Install bubblewrap (Linux) to grade untrusted work.")


def kernel_env() -> dict[str, str]:
    """The kernel's whole environment (nothing else of the grader's is passed on): fast mode,
    headless, one thread, caches in /tmp."""
    env = {name: os.environ[name] for name in _PASS_THROUGH if name in os.environ}
    env.update(
        COURSE_ROOT=str(repo_root()),  # notebooks/ is hidden: tell course_lib where data/ and checkpoints/ are
        **HEADLESS_ENVIRONMENT,
        HOME="/tmp", MPLCONFIGDIR="/tmp/matplotlib", IPYTHONDIR="/tmp/ipython", COURSE_FAST="1",
        OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1",
        PYDEVD_DISABLE_FILE_VALIDATION="1",
    )
    return env


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _mount(path: Path, how: str, visible: list[Path], made: set[Path]) -> list[str]:
    """bwrap arguments that show ``path`` in the sandbox, creating its missing parents traversable
    (bwrap would create them 0700, unreadable once root is dropped)."""
    argv = []
    for parent in sorted(path.parents, key=lambda p: len(p.parts))[1:]:  # "/" exists
        if parent not in made and not any(_inside(parent, v) for v in visible):
            argv += ["--perms", "0755", "--dir", str(parent)]
            made.add(parent)
    visible.append(path)
    return [*argv, how, str(path), str(path)]


def kernel_argv(
    exchange: Path, exercises: list[str], limits: Limits, sandbox: bool, worker: int = 0,
) -> list[str]:
    """The command that starts one submission's kernel (``{connection_file}`` left for jupyter_client).

    The sandbox shows only what a kernel needs, read-only: the system's programs and libraries
    (``/usr``, ``/etc``, ``/sys`` and the top-level links into ``/usr``), the Python environment,
    ``course_lib``, ``data/`` and ``checkpoints/``. Every other folder — the course's notebooks, home
    folders, other checkouts, the submissions, ``/run``'s sockets — does not exist in there."""
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
    root = repo_root()
    keep = [Path(p) for p in _SYSTEM] + sorted(
        {p.resolve() for p in (Path(course_lib.__file__).parent, root / "data", root / "checkpoints", Path(sys.prefix),
                               Path(sys.base_prefix), *map(Path, site.getsitepackages())) if p.exists()},
        key=lambda p: len(p.parts))
    argv = [bubblewrap() or "bwrap", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--die-with-parent", "--new-session", "--perms", "0755", "--tmpfs", "/",
            "--dev", "/dev", "--proc", "/proc", "--perms", "1777", "--size", str(TMP_BYTES), "--tmpfs", "/tmp",
            "--perms", "1777", "--size", str(TMP_BYTES), "--tmpfs", "/dev/shm"]
    visible: list[Path] = []
    made: set[Path] = {Path("/tmp")}  # first the empty /tmp, so that anything shown below it stays visible
    for path in keep:
        if not path.exists() or any(_inside(path, v) for v in visible):
            continue
        if path.is_symlink() and path.parent == Path("/"):  # /bin -> usr/bin on merged-/usr systems
            argv += ["--symlink", os.readlink(path), str(path)]
            continue
        argv += _mount(path, "--ro-bind", visible, made)
    argv += _mount(exchange.resolve(), "--bind", visible, made)
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
        os.chown(exchange, SANDBOX_UID + worker, SANDBOX_UID + worker, follow_symlinks=False)


def hand_over(path: Path, sandbox: bool, worker: int = 0) -> None:
    """Make a file the grader wrote readable by the sandbox's user."""
    if sandbox and hasattr(os, "geteuid") and os.geteuid() == 0:
        os.chown(path, SANDBOX_UID + worker, SANDBOX_UID + worker, follow_symlinks=False)
