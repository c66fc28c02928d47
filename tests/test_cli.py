"""The command line: `run` executes notebooks headless and reports failures; `doctor` checks the
environment."""

import subprocess
import sys

import nbformat
import pytest

from course_lib import doctor
from course_lib.__main__ import main
from course_lib.runner import find_notebooks, parse_value


def _notebook(path, *sources, parameters=None):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    if parameters is not None:
        nb.cells.append(nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]}))
    nb.cells.extend(nbformat.v4.new_code_cell(source) for source in sources)
    nbformat.write(nb, path)
    return path


def _course(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "course_lib", *args],
        capture_output=True, text=True, timeout=300, cwd=cwd,
    )


@pytest.mark.slow
def test_run_reports_the_failing_cell_keeps_going_and_exits_nonzero(tmp_path):
    broken = _notebook(
        tmp_path / "broken.ipynb",
        "x = 1",
        "ratio = x / 0  # the failing cell",
        "print('never reached')",
        parameters="EPOCHS: int = 1",
    )
    fine = _notebook(
        tmp_path / "fine.ipynb",
        "import os\nprint(f'FAST={FAST} EPOCHS={EPOCHS} env={os.environ.get(\"COURSE_FAST\")}')",
        parameters="FAST = False\nEPOCHS = 1",
    )
    out = tmp_path / "out"
    result = _course("run", str(broken), str(fine), "--fast", "-p", "EPOCHS", "3", "--out", str(out))

    assert result.returncode == 1, result.stdout + result.stderr
    assert "broken.ipynb  FAILED" in result.stdout
    assert "fine.ipynb    OK" in result.stdout
    assert "1 of 2 notebooks OK" in result.stdout
    assert "ratio = x / 0  # the failing cell" in result.stdout
    assert "ZeroDivisionError" in result.stdout
    executed = nbformat.read(out / "fine.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert "FAST=True EPOCHS=3 env=1" in printed


@pytest.mark.slow
def test_run_exits_zero_when_every_notebook_passes(tmp_path):
    nb = _notebook(tmp_path / "ok.ipynb", "print(2 + 2)", parameters="FAST = False")
    result = _course("run", str(nb), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 of 1 notebooks OK" in result.stdout


@pytest.mark.slow
def test_run_prints_only_progress_lines_and_the_table(tmp_path):
    """No papermill parameter warnings, no kernel WARNING (TCP) or ERROR (the SIGINT that
    jupyter_client sends on shutdown) — a newcomer reads those as "broken"."""
    nb = _notebook(tmp_path / "quiet.ipynb", "import time\ntime.sleep(0.2)\nprint('done')",
                   parameters="FAST: bool = False\nSEED: int = 0  # the seed")
    result = _course("run", str(nb), "--fast", "-p", "SEED", "1", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stdout + result.stderr
    noise = [line for line in result.stderr.splitlines()
             if line.strip() and "notebooks:" not in line and "quiet.ipynb: OK in" not in line]
    assert noise == [], "\n".join(noise)
    assert "quiet.ipynb: OK in" in result.stdout


def test_run_refuses_a_parameter_the_notebook_does_not_declare(tmp_path, capsys):
    nb = _notebook(tmp_path / "p.ipynb", "print(EPOCHS)", parameters="FAST: bool = False\nEPOCHS: int = 1")
    assert main(["run", str(nb), "-p", "EPOCH", "3", "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "p.ipynb has no parameter EPOCH; its parameters are: FAST, EPOCHS" in error
    assert not (tmp_path / "out").exists(), "nothing runs when a parameter is refused"


def test_list_parameters_shows_types_defaults_and_help(capsys):
    assert main(["run", "--list-parameters", "03"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("03_neural_networks.ipynb:\n")
    assert "EPOCHS: Optional[int] = None" in printed and "(4 fast, 40 full)" in printed
    assert "SEED: int = 0" in printed


@pytest.mark.parametrize("command", ["run", "execute"])
def test_run_and_execute_reject_an_unknown_chapter(command, capsys):
    assert main([command, "99_nothing"]) == 2
    assert "no notebook matches '99_nothing'; chapters are: 00_setup" in capsys.readouterr().err


def test_chapters_resolve_by_number_name_or_path():
    everything = find_notebooks()
    assert [p.name for p in everything][:3] == ["00_setup.ipynb", "01_tensors.ipynb", "02_autograd.ipynb"]
    assert find_notebooks(["01"]) == [everything[1]]
    assert find_notebooks(["02_autograd"]) == [everything[2]]
    assert find_notebooks([str(everything[0])]) == [everything[0].resolve()]


@pytest.mark.parametrize(
    "text, value",
    [("3", 3), ("0.5", 0.5), ("True", True), ("None", None), ("[1, 2]", [1, 2]), ("cuda", "cuda"),
     ("bert-base-uncased", "bert-base-uncased")],
)
def test_parameter_values_are_read_as_literals_or_strings(text, value):
    assert parse_value(text) == value


def test_doctor_flags_wrong_and_missing_versions(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("torch==0.0.1\nnumpy==" + __import__("numpy").__version__ + "\nno-such-package==1.0\n")
    checks = {c.what: c for c in doctor.check_pins(requirements)}
    assert checks["torch"].status == "FAIL" and "0.0.1 pinned" in checks["torch"].detail
    assert checks["numpy"].status == "OK"
    assert checks["no-such-package"].status == "FAIL" and "not installed" in checks["no-such-package"].detail


@pytest.mark.slow
def test_doctor_passes_in_the_pinned_environment():
    result = _course("doctor")
    assert result.returncode == 0, result.stdout
    assert "OK    torch: 2.13.0" in result.stdout
    assert "OK    device: cpu" in result.stdout or "OK    device: cuda" in result.stdout


def test_doctor_says_whether_grading_is_sandboxed(monkeypatch):
    from course_lib import sandbox

    monkeypatch.setattr(sandbox, "bubblewrap", lambda: None)
    check = doctor.check_sandbox()
    assert check.status == "WARN" and "without isolation" in check.detail
    monkeypatch.setattr(sandbox, "bubblewrap", lambda: "/usr/bin/bwrap")
    assert doctor.check_sandbox().status == "OK"


def test_doctor_names_what_a_chapter_misses_on_this_machine(monkeypatch):
    import multiprocessing

    import torch

    assert all(c.status == "OK" for c in doctor.check_extras())  # Linux with the pinned torch: all there
    monkeypatch.setattr(doctor, "_compiler", lambda: None)
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    monkeypatch.setattr(torch.distributed, "is_gloo_available", lambda: False)
    compile_check, fork_check = doctor.check_extras()
    assert compile_check.status == "WARN" and "-p COMPILE False" in compile_check.detail
    assert fork_check.status == "WARN" and "nan" in fork_check.detail and "gloo" in fork_check.detail


def test_exercises_check_fails_when_a_notebooks_outputs_predate_its_modules(monkeypatch, capsys):
    from course_lib import freshness

    monkeypatch.setattr(freshness, "stale", lambda path: f"{path.name}: executed before changes to course_lib.x"
                        if path.name.startswith("03") else None)
    assert main(["exercises", "--check"]) == 1
    out = capsys.readouterr().out
    assert "03_neural_networks.ipynb: executed before changes to course_lib.x" in out
    assert "re-execute with `python -m course_lib execute NN`" in out
    monkeypatch.setattr(freshness, "stale", lambda path: None)
    assert main(["exercises", "--check"]) == 0
    assert "and so are the notebooks' stored outputs" in capsys.readouterr().out


def test_doctor_says_where_fashion_mnist_comes_from(monkeypatch, tmp_path):
    from course_lib import images

    monkeypatch.setenv("COURSE_DATA_CACHE", str(tmp_path))
    monkeypatch.setattr(images, "DEBIAN_DIR", tmp_path / "absent")
    check = doctor.check_vision_data()
    assert check.status == "WARN" and "apt install dataset-fashion-mnist" in check.detail
    for name in images.FILES:
        (tmp_path / "fashion-mnist").mkdir(exist_ok=True)
        (tmp_path / "fashion-mnist" / name).write_bytes(b"")
    assert doctor.check_vision_data().status == "OK" and "cached" in doctor.check_vision_data().detail
    monkeypatch.setattr(images, "DEBIAN_DIR", tmp_path / "fashion-mnist")
    assert "Debian package" in doctor.check_vision_data().detail


def test_doctor_says_whether_real_speech_is_installed(monkeypatch, tmp_path):
    from course_lib import speech_data

    monkeypatch.setattr(speech_data, "LIBRIVOX_DIR", tmp_path)
    check = doctor.check_speech_data()
    assert check.status == "WARN" and "apt install pocketsphinx-testdata" in check.detail
    (tmp_path / "transcription").write_text("")
    assert doctor.check_speech_data().status == "OK"
