"""requirements.txt and environment.yml must pin the same versions, and torch must stay pinned."""

import re
from pathlib import Path

from course_lib.doctor import normalise, read_pins

ROOT = Path(__file__).resolve().parents[1]


def _environment_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "environment.yml").read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\s*-\s*([A-Za-z0-9_.\-\[\]]+)\s*==\s*(\S+)\s*$", line)
        if match:
            pins[normalise(match.group(1))] = match.group(2)
    return pins


def test_requirements_and_environment_pin_the_same_versions():
    requirements = read_pins(ROOT / "requirements.txt")
    environment = _environment_pins()
    assert requirements, "no name==version pins found in requirements.txt"
    only_req = {k: v for k, v in requirements.items() if k not in environment}
    only_env = {k: v for k, v in environment.items() if k not in requirements}
    differ = {k: (requirements[k], environment[k]) for k in requirements.keys() & environment.keys()
              if requirements[k] != environment[k]}
    assert not (only_req or only_env or differ), (
        f"only in requirements.txt: {only_req}; only in environment.yml: {only_env}; "
        f"different (requirements, environment): {differ}"
    )


def test_every_requirement_is_pinned_exactly():
    for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            assert "==" in line, f"requirements.txt: {line!r} is not pinned with =="


def test_torch_is_the_tested_cpu_wheel_version():
    # An unpinned or loose torch makes pip download a multi-GB CUDA build.
    assert read_pins(ROOT / "requirements.txt")["torch"] == "2.13.0"


def test_the_jupyter_execution_stack_is_pinned():
    pins = read_pins(ROOT / "requirements.txt")
    for name in ("nbclient", "jupyter-client", "ipykernel", "nbformat", "papermill", "nbval"):
        assert name in pins, f"{name} must be pinned: papermill and nbval are sensitive to it"


def test_both_files_install_the_course_package():
    assert "-e ." in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    assert re.search(r"^\s*-\s*-e \.\s*$", (ROOT / "environment.yml").read_text(encoding="utf-8"), re.M)
