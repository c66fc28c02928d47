"""course_lib.distributed: two gloo processes with the same global batch follow the single-process
loss curve (DDP and FSDP), rank 0 alone writes the checkpoint, and bad arguments are refused."""

import subprocess
import sys

import pytest
from safetensors.torch import load_file

from course_lib import distributed
from course_lib.gpt import GPT, GPTConfig

TINY = ("--steps", "8", "--global-batch", "8", "--block", "32", "--layers", "1", "--hidden", "32", "--texts", "300")
# float32 sums in a different order on 2 ranks: the losses agree to ~1e-6; 1e-4 leaves room for other CPUs
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return distributed.launch(1, tmp_path_factory.mktemp("single"), *TINY, timeout=300)


@pytest.mark.parametrize("strategy", distributed.STRATEGIES)
def test_two_processes_follow_the_single_process_loss_curve(single, strategy, tmp_path):
    history = distributed.launch(2, tmp_path, *TINY, "--strategy", strategy, timeout=300)
    assert history["world_size"] == 2 and history["strategy"] == strategy and single["world_size"] == 1
    assert len(history["losses"]) == len(single["losses"]) == 8
    assert single["losses"][-1] < single["losses"][0]  # it learns
    assert max(abs(a - b) for a, b in zip(history["losses"], single["losses"])) < TOLERANCE
    state = load_file(tmp_path / "model.safetensors")  # the full model, not one rank's shard
    assert sum(t.numel() for t in state.values()) == history["parameters"] == single["parameters"]
    config = GPTConfig(vocab_size=state["wte.weight"].shape[0], block_size=32, n_layer=1, n_head=4, n_embd=32)
    model = GPT(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert missing == ["lm_head.weight"] and not unexpected  # tied to wte.weight


@pytest.mark.parametrize("options, message", [
    (("--global-batch", "7"), "--global-batch (7) must be divisible by the number of processes (2)"),
    (("--hidden", "30"), "--hidden (30) must be divisible by --heads (4)"),
    (("--steps", "0"), "--steps must be >= 1, got 0"),
    (("--strategy", "zero3"), "invalid choice: 'zero3'"),
    (("--device", "tpu"), "--device: preference must be"),
])
def test_bad_arguments_are_refused_before_training(options, message, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun, but no process group is started
    with pytest.raises(SystemExit) as exit_info:
        distributed.main(list(options))
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_launch_reports_a_failed_run(tmp_path):
    with pytest.raises(RuntimeError, match="failed with exit code 2"):
        distributed.launch(1, tmp_path, "--lr", "-1")
    with pytest.raises(ValueError, match="processes must be an int >= 1, got 0"):
        distributed.launch(0, tmp_path)


def test_help_names_torchrun():
    result = subprocess.run([sys.executable, "-m", "course_lib.distributed", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "torchrun --standalone --nproc_per_node=N" in result.stdout
