"""The benchmark scripts run in a tiny configuration and refuse bad arguments with a clear message
(their real measurements are recorded in benchmarks/RESULTS.md, never asserted here)."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _script(name):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_serving_benchmark_runs_all_three_services(tiny_classifier, capsys):
    _script("serving").main(["--fast", "--classifier", str(tiny_classifier), "--concurrency", "1", "2"])
    table = capsys.readouterr().out.splitlines()[-6:]
    assert [" ".join(line.split()[:3]) for line in table] == [f"{b} @{c}" for b in ("torch fp32", "onnx fp32", "onnx int8")
                                                              for c in (1, 2)]
    assert all(line.split()[-2] == "0" for line in table)  # no failed requests


def test_serving_benchmark_refuses_bad_arguments(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _script("serving").main(["--requests", "0"])
    assert exit_info.value.code == 2 and "must be positive" in capsys.readouterr().err
