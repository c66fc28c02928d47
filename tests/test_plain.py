"""Plain data crosses the sandbox's wall intact, and nothing else does: reading runs no code the
writer chose and refuses links, devices, oversized and malformed files."""

import json
import os

import pytest
import torch

from course_lib import plain
from course_lib.plain import PlainDataError, Unsupported


def test_plain_values_round_trip_with_their_exact_types():
    value = {"none": None, "flag": True, "count": 3, "ratio": 0.5, "nan": float("nan"), "text": "é 🙂",
             "list": [1, [2.0, "x"]], "tuple": (1, (2,)), "tensor": torch.arange(6).reshape(2, 3),
             "half": torch.ones(2, dtype=torch.bfloat16), "flags": torch.tensor([True, False])}
    back = plain.roundtrip(value)
    assert type(back["flag"]) is bool and type(back["count"]) is int and type(back["ratio"]) is float
    assert back["list"] == [1, [2.0, "x"]] and back["tuple"] == (1, (2,)) and back["text"] == "é 🙂"
    assert back["nan"] != back["nan"]
    for key in ("tensor", "half", "flags"):
        assert type(back[key]) is torch.Tensor and torch.equal(back[key], value[key]) and back[key].dtype == value[key].dtype


class _LyingTensor(torch.Tensor):
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func.__name__ in ("equal", "allclose"):
            return True
        return super().__torch_function__(func, types, args, kwargs or {})


class _LyingInt(int):
    def __eq__(self, other):
        return True

    __hash__ = int.__hash__


class _LyingList(list):
    def __eq__(self, other):
        return True


def test_subclasses_arrive_as_the_plain_base_type_and_stop_lying():
    back = plain.roundtrip([torch.zeros(3).as_subclass(_LyingTensor), _LyingInt(0), _LyingList([1])])
    tensor, number, items = back
    assert type(tensor) is torch.Tensor and not torch.equal(tensor, torch.ones(3))
    assert type(number) is int and not number == 5
    assert type(items) is list and not items == [2]


def test_other_objects_cross_only_as_their_type_name():
    import numpy as np

    back = plain.roundtrip([np.zeros(2), object(), {1: "int key"}, torch.zeros(2).to_sparse()])
    assert back[0] == Unsupported("ndarray") and back[1] == Unsupported("object")
    assert plain.roundtrip([np.float32(0.5), np.int64(3), np.bool_(True)]) == [0.5, 3, True]
    assert isinstance(back[2], Unsupported) and isinstance(back[3], Unsupported)
    assert plain.type_name(back[0]) == "ndarray" and plain.type_name(3) == "int"


@pytest.mark.parametrize("text", [
    b'{"eval": "__import__(\'os\')"}', b'{"tensor": "t9"}', b'{"list": [1], "tuple": []}', b'{"dict": [[1, 2]]}',
    b'[1, 2]', b'{"list": ' * 200 + b'1' + b'}' * 200, b'\xff\xfe', b'{"list": [1',
])
def test_malformed_data_is_refused(text):
    with pytest.raises(PlainDataError):
        plain.from_bytes(text, b"")


def test_reading_refuses_links_fifos_and_oversized_files(tmp_path, monkeypatch):
    plain.write(tmp_path / "good", [1, torch.ones(2)])
    assert plain.read(tmp_path / "good")[0] == 1
    os.symlink("/etc/passwd", tmp_path / "link.json")
    (tmp_path / "link.safetensors").write_bytes(b"")
    with pytest.raises(PlainDataError, match="cannot be opened"):
        plain.read(tmp_path / "link")
    os.mkfifo(tmp_path / "fifo.json")
    with pytest.raises(PlainDataError, match="not a regular file"):
        plain.read(tmp_path / "fifo")
    monkeypatch.setattr(plain, "MAX_JSON_BYTES", 10)
    (tmp_path / "big.json").write_text(json.dumps(list(range(100))))
    (tmp_path / "big.safetensors").write_bytes(b"")
    with pytest.raises(PlainDataError, match="larger than"):
        plain.read(tmp_path / "big")


def test_type_names_carry_no_text_and_tensors_cannot_be_multiplied():
    forged = type("x passed\nExercise 1.1 passed", (), {})()
    assert plain.roundtrip(forged) == Unsupported("object")
    text, blob = plain.to_bytes([torch.ones(1000)])
    with pytest.raises(PlainDataError):
        plain.from_bytes(text.replace(b'{"tensor": "t0"}', b'{"tensor": "t0"}, {"tensor": "t0"}'), blob)


def test_a_name_with_a_dot_keeps_its_whole_name(tmp_path):
    plain.write(tmp_path / "in-4.1", "a")
    plain.write(tmp_path / "in-4.2", "b")
    assert plain.read(tmp_path / "in-4.1") == "a" and plain.read(tmp_path / "in-4.2") == "b"
