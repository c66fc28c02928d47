"""The benchmark scripts run in a tiny configuration and refuse bad arguments with a clear message
(their real measurements are recorded in benchmarks/RESULTS.md, never asserted here)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _script(name):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_gpu_finetune_tiny_on_cpu(capsys, tmp_path):
    rows = _script("gpu_finetune").main(["--tiny", "--variants", "fp32,tf32,bf16", "--steps", "1", "--warmup", "0",
                                         "--device", "cpu", "--json", str(tmp_path / "rows.json")])
    out = capsys.readouterr().out
    assert "skipping the GPU-only variants tf32" in out and "vs fp32" in out
    assert [r.variant for r in rows] == ["fp32", "bf16"] and all(r.tokens_per_s > 0 and r.tflops > 0 for r in rows)
    assert (tmp_path / "rows.json").read_text().count('"variant"') == 2


def test_gpu_finetune_flops_per_token_counts_matrices_and_attention():
    module = _script("gpu_finetune")
    model = BertForSequenceClassification(BertConfig(**module.TINY, num_labels=2))
    # by hand: 2 layers x (q, k, v, o: 4 x 64² + FFN: 2 x 64 x 128) + pooler 64² + classifier 64 x 2
    matmul = 2 * (4 * 64 * 64 + 2 * 64 * 128) + 64 * 64 + 64 * 2
    assert module.flops_per_token(model, 2, 64, 32) == 6 * matmul + 12 * 2 * 64 * 32


@pytest.mark.parametrize("argv, message", [
    (["--variants", "fp64"], "--variants must be a comma-separated list"),
    (["--steps", "0"], "--steps must be >= 1, got 0"),
    (["--device", "cpu", "--variants", "tf32"], "no variant left to run on this device"),
])
def test_gpu_finetune_refuses_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _script("gpu_finetune").main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


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


def test_generation_benchmark_tiny(capsys):
    _script("generation").main(["--tiny", "--new-tokens", "4", "8", "--prefill", "16"])
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(("4 ", "8 "))]
    assert [row[0] for row in rows] == ["4", "8"] and all(row[-1] == "True" for row in rows)  # same tokens as transformers
    assert "prefill of 16 tokens" in out and "bf16 vs fp32" in out and "KV cache for the full context" in out


def test_generation_benchmark_refuses_bad_arguments(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _script("generation").main(["--new-tokens", "0"])
    assert exit_info.value.code == 2 and "must be >= 1, got 0" in capsys.readouterr().err


def test_vision_benchmark_tiny(capsys, tmp_path):
    threads = torch.get_num_threads()
    try:
        results = _script("vision").main(["--tiny", "--json", str(tmp_path / "rows.json")])
    finally:
        torch.set_num_threads(threads)  # the script sets the thread count for this whole process
    out = capsys.readouterr().out
    assert "ours/torch" in out and "CNN/ViT" in out and "speed-up" in out and "random, untrained weights" in out
    assert results.threads == 1 and results.repeat == 2  # --threads defaults to 1, --tiny to 2 repeats
    assert not results.steady_malloc and "malloc left as it is" in out  # --tiny leaves pytest's malloc alone
    assert len(results.conv) == 4 and "depthwise" in results.conv[2].shape and "stride 2" in results.conv[3].shape
    assert all(r.ours_ms > 0 and r.torch_ms > 0 and r.ours_over_torch > 0 for r in results.conv)
    assert all(r.max_abs_diff < 1e-3 for r in results.conv)  # the speeds are compared on equal results
    cnn, vit, int8 = results.models
    assert 55_000 < cnn.parameters < 65_000 and 55_000 < vit.parameters < 65_000  # the chapter's two models
    assert all(m.inference_images_per_s > 0 for m in results.models) and int8.training_images_per_s is None
    assert cnn.training_images_per_s > 0 and vit.training_images_per_s > 0
    assert results.cnn_over_vit_inference == pytest.approx(cnn.inference_images_per_s / vit.inference_images_per_s)
    assert results.int8_speed_up == pytest.approx(int8.inference_images_per_s / cnn.inference_images_per_s)
    assert f"{results.int8_speed_up:8.2f}x" in out and f"{results.cnn_over_vit_training:11.2f}x" in out
    assert (tmp_path / "rows.json").read_text().count('"ours_ms"') == 4


@pytest.mark.parametrize("argv, message", [
    (["--repeat", "0"], "argument --repeat: must be an int >= 1, got 0"),
    (["--threads", "0"], "argument --threads: must be an int >= 1, got 0"),
    (["--threads", "two"], "argument --threads: must be an int >= 1, got 'two'"),
])
def test_vision_benchmark_refuses_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _script("vision").main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
