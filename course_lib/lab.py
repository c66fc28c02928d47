"""Start JupyterLab with the course's settings: ``python -m course_lib lab``.

The settings live in ``jupyter/labconfig/default_setting_overrides.json`` in the course folder and
reach JupyterLab through ``JUPYTER_CONFIG_PATH`` (a folder Jupyter reads configuration from besides
its usual ones): no "get notified about official Jupyter news?" pop-up (the course needs no network),
and a notebook's kernel — Python 3, named in its metadata — starts without a "Select Kernel" dialog.
Plain ``jupyter lab`` works too, only without these two settings.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from course_lib.runtime import repo_root


def config_dir() -> Path:
    """The course's Jupyter configuration folder (holds ``labconfig/``)."""
    return repo_root() / "jupyter"


def environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with the course's configuration folder put
    first on ``JUPYTER_CONFIG_PATH``, keeping any folders already there."""
    env = dict(os.environ if base is None else base)
    earlier = env.get("JUPYTER_CONFIG_PATH", "")
    env["JUPYTER_CONFIG_PATH"] = os.pathsep.join(p for p in (str(config_dir()), earlier) if p)
    return env


def command(arguments: Sequence[str] = ()) -> list[str]:
    """``jupyter lab`` from this Python environment, with extra arguments passed through."""
    return [sys.executable, "-m", "jupyter", "lab", *arguments]


def start(arguments: Sequence[str] = ()) -> int:
    """Run JupyterLab in the foreground until it stops (Ctrl+C twice, or File > Shut Down)."""
    process = subprocess.Popen(command(arguments), env=environment())
    while True:
        try:
            return process.wait()
        except KeyboardInterrupt:  # JupyterLab asks for confirmation itself; keep waiting for it
            continue
