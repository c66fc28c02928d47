"""Where code runs and how repeatably: the course folder, device choice, seeding, fast mode and
CPU threads. Importing it does not import torch (the CLI, `run` and the grader's parent use it).

Every notebook's first cells call :func:`setup`, so a chapter behaves the same on a laptop CPU,
under ``python -m course_lib run --fast``, under nbval in CI, and on a GPU.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from course_lib.arguments import require_int

if TYPE_CHECKING:  # torch is imported where it is used: the grader, `run` and the CLI import this module
    import torch

def repo_root() -> Path:
    """The course checkout: ``COURSE_ROOT`` if set, else the folder holding ``notebooks/`` above
    this package (editable install), else the current directory."""
    if os.environ.get("COURSE_ROOT"):  # set by the grader's sandbox, where notebooks/ is hidden
        return Path(os.environ["COURSE_ROOT"])
    here = Path(__file__).resolve().parents[1]
    return here if (here / "notebooks").is_dir() else Path.cwd()


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def _flag(name: str) -> bool:
    """An on/off environment variable; unset or empty means off, anything unclear is an error."""
    raw = os.environ.get(name, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ValueError(f"{name} must be one of 1/0/true/false/yes/no/on/off, got {raw!r}")


def fast_mode() -> bool:
    """Whether the environment asks for the small, quick configuration (``COURSE_FAST=1``).

    nbval cannot pass papermill parameters, so notebooks read their default ``FAST`` from here.
    """
    return _flag("COURSE_FAST")


# The environment of a kernel nobody watches (`run`, `execute`, pytest, the grader): widgets draw
# static figures, and the Hugging Face libraries show no progress bars, which an executed notebook
# would otherwise store frame by frame. Set for the whole kernel, deliberately, by whoever starts it.
HEADLESS_ENVIRONMENT = {
    "COURSE_HEADLESS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # huggingface_hub, and transformers' "Loading weights"
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",  # datasets' map and downloads
}


def headless() -> bool:
    """Whether nobody is watching the notebook (``COURSE_HEADLESS=1``, set by ``run``, pytest and
    the grader): interactive widgets then draw a static figure instead."""
    return _flag("COURSE_HEADLESS")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def get_device(preference: str | torch.device = "auto") -> torch.device:
    """Return the device to compute on: the best available for ``"auto"`` (cuda > mps > cpu),
    else the one named, which must exist here.

    Raises ``ValueError`` naming the device when it is not available, instead of failing later
    with a less helpful error on the first tensor moved there.
    """
    import torch

    if isinstance(preference, torch.device):
        preference = str(preference)
    if not isinstance(preference, str):
        raise TypeError(
            f"preference must be a str or torch.device, got {type(preference).__name__}"
        )
    name = preference.strip().lower()
    if name == "auto":
        if _cuda_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(
            f"preference must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {preference!r}"
        ) from error
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not _cuda_available():
            raise ValueError(
                f"preference={preference!r} but CUDA is not available on this machine "
                "(use 'auto' or 'cpu')"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(
                f"preference={preference!r} but only {count} CUDA device(s) exist "
                f"(indices 0..{count - 1})"
            )
        return device
    if device.type == "mps":
        if not _mps_available():
            raise ValueError(
                f"preference={preference!r} but Apple MPS is not available on this machine "
                "(use 'auto' or 'cpu')"
            )
        return device
    raise ValueError(f"preference must be 'auto', 'cpu', 'cuda' or 'mps', got {preference!r}")


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's generators (all CUDA devices included).

    The same seed then gives the same random tensors, shuffles and initial weights on a given
    machine and library version.
    """
    import numpy as np
    import torch

    seed = require_int("seed", seed, at_least=0)
    if seed >= 2**32:
        raise ValueError(f"seed must be < 2**32, got {seed}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def default_threads() -> int:
    """How many CPU threads PyTorch should use here: ``COURSE_THREADS`` if set, else all usable
    cores but one (at least one).

    Leaving a core free matters most on small machines: on 2 cores, with a second process busy
    (the Jupyter server, pytest, a load client), 2 OpenMP threads ran 2x slower than 1
    (``benchmarks/threads.py``), while on a quiet machine they gain under 2x.
    """
    raw = os.environ.get("COURSE_THREADS", "").strip()
    if raw:
        if not raw.isdigit() or int(raw) < 1:
            raise ValueError(f"COURSE_THREADS must be a positive integer, got {raw!r}")
        return int(raw)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no sched_getaffinity
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


def set_threads(threads: int | None = None) -> int:
    """Set PyTorch's intra-op CPU threads (``None``: :func:`default_threads`); return the number."""
    threads = require_int("threads", threads, allow_none=True)
    if threads is None:
        threads = default_threads()
    import torch

    torch.set_num_threads(threads)
    return threads


@dataclass(frozen=True)
class Session:
    """What :func:`setup` chose, so a notebook can print it and pass ``device`` on."""

    device: torch.device
    seed: int
    threads: int
    fast: bool

    def __str__(self) -> str:
        import torch

        mode = "fast" if self.fast else "full"
        return (
            f"torch {torch.__version__} | device {self.device} | threads {self.threads} "
            f"| seed {self.seed} | {mode} mode"
        )


NOISY_IMPORT_LOGGERS = ("torchao", "torch.utils._pytree")


def quiet_import_logs() -> None:
    """Silence log messages that libraries print merely on being imported: torchao (imported by
    transformers and peft whenever it is installed) reports optional GPU kernels it cannot load and
    PyTorch's pytree module deprecation notes about torchao's enums. Neither concerns the learner's
    code; errors still show, and Python warnings are untouched."""
    import logging

    for name in NOISY_IMPORT_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def setup(
    seed: int = 0,
    device: str | torch.device = "auto",
    threads: int | None = None,
    fast: bool | None = None,
    verbose: bool = True,
) -> Session:
    """One call for a notebook's first cell: choose the device, seed everything, set threads,
    quiet the import-time log noise of some libraries (:func:`quiet_import_logs`).

    ``fast`` only records the mode (it defaults to :func:`fast_mode`); the notebook's own
    ``FAST`` parameter decides the sizes. Prints one summary line unless ``verbose=False``.
    """
    quiet_import_logs()
    session = Session(
        device=get_device(device),
        seed=seed,
        threads=set_threads(threads),
        fast=fast_mode() if fast is None else bool(fast),
    )
    seed_everything(seed)
    if verbose:
        print(session)
    return session


def describe_device(device: torch.device) -> str:
    """A human description: ``cpu``, or the GPU's name and memory."""
    import torch

    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{device} ({props.name}, {props.total_memory / 2**30:.0f} GiB)"
    return str(device)


@contextmanager
def progress_bars_hidden_when_headless() -> Iterator[None]:
    """Inside the block, transformers' and datasets' progress bars are hidden when nobody watches
    (:func:`headless`: executed notebooks and logs would store every frame of them); afterwards
    each is as it was. Both libraries switch them process-wide, so a loader must put them back."""
    if not headless():
        yield
        return
    import datasets
    from transformers.utils import logging

    saved = (datasets.is_progress_bar_enabled(), logging.is_progress_bar_enabled())
    datasets.disable_progress_bars()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if saved[0]:
            datasets.enable_progress_bars()
        if saved[1]:
            logging.enable_progress_bar()


@contextmanager
def temporary_environment(**values: str) -> Iterator[None]:
    """Set environment variables for the duration of a ``with`` block (kernels started inside
    inherit them), then restore the previous values."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
