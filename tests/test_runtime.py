import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from course_lib import runtime


def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(runtime, "_cuda_available", lambda: True)
    monkeypatch.setattr(runtime, "_mps_available", lambda: True)
    assert runtime.get_device("auto").type == "cuda"
    monkeypatch.setattr(runtime, "_cuda_available", lambda: False)
    assert runtime.get_device("auto").type == "mps"
    monkeypatch.setattr(runtime, "_mps_available", lambda: False)
    assert runtime.get_device("auto") == torch.device("cpu")


def test_cpu_is_always_available():
    assert runtime.get_device("cpu") == torch.device("cpu")
    assert runtime.get_device(torch.device("cpu")) == torch.device("cpu")
    assert runtime.get_device(" CPU ") == torch.device("cpu")


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "mps"])
def test_unavailable_device_is_a_clear_error(monkeypatch, name):
    monkeypatch.setattr(runtime, "_cuda_available", lambda: False)
    monkeypatch.setattr(runtime, "_mps_available", lambda: False)
    with pytest.raises(ValueError, match=f"preference='{name}'.*not available"):
        runtime.get_device(name)


def test_cuda_index_beyond_the_devices_is_an_error(monkeypatch):
    monkeypatch.setattr(runtime, "_cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert runtime.get_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ValueError, match="only 1 CUDA device"):
        runtime.get_device("cuda:3")


@pytest.mark.parametrize("bad", ["gpu", "tpu", "cuda:x", ""])
def test_unknown_device_names_are_rejected(bad):
    with pytest.raises(ValueError, match="preference must be"):
        runtime.get_device(bad)


def test_device_of_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match="preference must be a str or torch.device, got int"):
        runtime.get_device(0)


def _draw():
    return random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()


def test_seed_everything_makes_every_generator_repeat():
    runtime.seed_everything(123)
    first = _draw()
    runtime.seed_everything(123)
    assert _draw() == first
    runtime.seed_everything(124)
    assert _draw() != first


@pytest.mark.parametrize("bad, message", [
    (-1, "seed must be an int >= 0, got -1"), (2**32, r"seed must be < 2\*\*32, got 4294967296"),
    (1.5, "seed must be an int >= 0, got 1.5"), (True, "seed must be an int >= 0, got True"),
])
def test_seed_everything_rejects_bad_seeds(bad, message):
    with pytest.raises(ValueError, match=message):
        runtime.seed_everything(bad)


@pytest.mark.parametrize(
    "value, expected", [("1", True), ("true", True), ("ON", True), ("0", False), ("", False), ("no", False)]
)
def test_fast_mode_reads_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv("COURSE_FAST", value)
    assert runtime.fast_mode() is expected


def test_fast_mode_is_off_when_unset(monkeypatch):
    monkeypatch.delenv("COURSE_FAST", raising=False)
    assert runtime.fast_mode() is False


def test_fast_mode_rejects_an_unclear_value(monkeypatch):
    monkeypatch.setenv("COURSE_FAST", "maybe")
    with pytest.raises(ValueError, match="COURSE_FAST must be one of .* got 'maybe'"):
        runtime.fast_mode()


def test_default_threads_leaves_a_core_free(monkeypatch):
    monkeypatch.delenv("COURSE_THREADS", raising=False)
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert runtime.default_threads() == 1
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert runtime.default_threads() == 7
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert runtime.default_threads() == 1


def test_course_threads_overrides_and_is_validated(monkeypatch):
    monkeypatch.setenv("COURSE_THREADS", "3")
    assert runtime.default_threads() == 3
    monkeypatch.setenv("COURSE_THREADS", "zero")
    with pytest.raises(ValueError, match="COURSE_THREADS must be a positive integer, got 'zero'"):
        runtime.default_threads()


def test_set_threads_sets_torch_and_rejects_nonsense():
    before = torch.get_num_threads()
    try:
        assert runtime.set_threads(1) == 1
        assert torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="threads must be an int >= 1 or None, got 0"):
            runtime.set_threads(0)
    finally:
        torch.set_num_threads(before)


def test_setup_chooses_seeds_and_reports(capsys, monkeypatch):
    monkeypatch.setenv("COURSE_FAST", "1")
    before = torch.get_num_threads()
    try:
        session = runtime.setup(seed=7, device="cpu", threads=1)
        first = torch.rand(2)
        runtime.setup(seed=7, device="cpu", threads=1, verbose=False)
        assert torch.equal(torch.rand(2), first)
    finally:
        torch.set_num_threads(before)
    assert session == runtime.Session(torch.device("cpu"), 7, 1, True)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "device cpu | threads 1 | seed 7 | fast mode" in out


@pytest.mark.parametrize("value, expected", [("1", True), ("0", False), ("", False)])
def test_headless_reads_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv("COURSE_HEADLESS", value)
    assert runtime.headless() is expected
    monkeypatch.setenv("COURSE_HEADLESS", "perhaps")
    with pytest.raises(ValueError, match="COURSE_HEADLESS must be one of"):
        runtime.headless()


def test_temporary_environment_restores_what_was_there(monkeypatch):
    monkeypatch.setenv("COURSE_A", "old")
    monkeypatch.delenv("COURSE_B", raising=False)
    with runtime.temporary_environment(COURSE_A="new", COURSE_B="set"):
        assert runtime.os.environ["COURSE_A"] == "new" and runtime.os.environ["COURSE_B"] == "set"
    assert runtime.os.environ["COURSE_A"] == "old" and "COURSE_B" not in runtime.os.environ


def test_setup_quiets_import_time_log_noise_only():
    import logging

    runtime.setup(verbose=False)
    for name in runtime.NOISY_IMPORT_LOGGERS:
        assert logging.getLogger(name).getEffectiveLevel() == logging.ERROR
    assert logging.getLogger("transformers").getEffectiveLevel() < logging.ERROR


@pytest.mark.slow
def test_the_command_line_side_never_imports_torch():
    """`run --list-parameters`, `exercises --check`, `clean` and `lab` start in well under a second
    because torch (about 1.5 s to import) stays out of them: runtime, runner, the check registry and
    the exercise generator import it only inside the functions that compute."""
    code = (
        "import io, sys, contextlib\n"
        "from course_lib.__main__ import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['exercises', '--check']) in (0, 1)  # 1: some notebook to re-execute\n"
        "    assert main(['run', '--list-parameters', '07']) == 0\n"
        "import course_lib.runtime, course_lib.runner, course_lib.checks, course_lib.lab, course_lib.clean\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
