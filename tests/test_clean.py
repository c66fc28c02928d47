"""`clean` deletes what running the course wrote, says how much, and never a tracked file."""

import subprocess

import pytest

from course_lib.clean import clean


def _course(root):
    for name, size in (("runs/a/b.ipynb", 1000), ("checkpoints/m.bin", 3000), ("data/cache/x.whl", 500)):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
    (root / "data" / "README.md").write_text("kept")


def test_clean_removes_generated_folders_and_keeps_the_cache_unless_asked(tmp_path):
    _course(tmp_path)
    assert sorted(clean(root=tmp_path)) == [("checkpoints", 3000), ("runs", 1000)]
    assert not (tmp_path / "runs").exists() and (tmp_path / "data" / "cache" / "x.whl").exists()
    assert clean(everything=True, root=tmp_path) == [("data/cache", 500)]
    assert (tmp_path / "data" / "README.md").read_text() == "kept"
    assert clean(everything=True, root=tmp_path) == []


def test_clean_refuses_a_folder_with_tracked_files(tmp_path):
    _course(tmp_path)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "add", "-f", "checkpoints/m.bin"], check=True)
    with pytest.raises(ValueError, match="checkpoints holds files git tracks"):
        clean(root=tmp_path)
    assert (tmp_path / "runs" / "a" / "b.ipynb").exists()  # refused before deleting anything
