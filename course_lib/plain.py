"""Plain data across the grading sandbox's wall: ``None``, bools, ints, floats, strings, lists,
tuples, dicts with string keys and dense torch tensors, written as JSON plus a safetensors blob.

Reading runs no code the writer chose (no pickle, no classes, no ``__eq__`` of a subclass): the JSON
parser yields built-in types only, and tensors come out of safetensors as plain ``torch.Tensor``. A
value of any other type crosses as :class:`Unsupported`, carrying only its type's name, so a check
can say "expected a tensor, got ndarray".
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

MAX_JSON_BYTES = 32 * 2**20
MAX_TENSOR_BYTES = 256 * 2**20
MAX_DEPTH = 32
_TAGS = ("list", "tuple", "dict", "tensor", "unsupported")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,79}")


class PlainDataError(ValueError):
    """The bytes are not plain data in this format (or exceed its limits)."""


@dataclass(frozen=True)
class Unsupported:
    """A value that is not plain data: only the name of its type crosses (an identifier, else
    ``object``: a name never carries the writer's text into a verdict)."""

    type_name: str

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.type_name):
            object.__setattr__(self, "type_name", "object")

    def __str__(self) -> str:
        return f"<{self.type_name}>"


def type_name(value: Any) -> str:
    """The name a check prints for a value's type (also for an :class:`Unsupported`)."""
    return value.type_name if isinstance(value, Unsupported) else type(value).__name__


def _encode(value: Any, tensors: dict[str, torch.Tensor], depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise PlainDataError(f"nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, bool):
        return None if value is None else bool(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":  # a NumPy scalar is a number
        return _encode(value.item(), tensors, depth)
    if isinstance(value, (list, tuple)):
        tag = "tuple" if isinstance(value, tuple) else "list"
        return {tag: [_encode(item, tensors, depth + 1) for item in value]}
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            return {"unsupported": "dict_with_non_string_keys"}
        return {"dict": [[str(k), _encode(v, tensors, depth + 1)] for k, v in value.items()]}
    if isinstance(value, torch.Tensor):
        if value.layout != torch.strided or value.is_complex() or value.device.type == "meta":
            return {"unsupported": "non_dense_tensor"}
        name = f"t{len(tensors)}"
        tensors[name] = value.detach().as_subclass(torch.Tensor).to("cpu").clone().contiguous()
        return {"tensor": name}
    return {"unsupported": type(value).__name__}


def to_bytes(value: Any) -> tuple[bytes, bytes]:
    """Encode ``value`` as (JSON bytes, safetensors bytes)."""
    tensors: dict[str, torch.Tensor] = {}
    text = json.dumps(_encode(value, tensors, 0)).encode("utf-8")
    return text, save_tensors(tensors)


def _decode(node: Any, tensors: dict[str, torch.Tensor], depth: int) -> Any:
    """Rebuild a value; each tensor may be named once (``tensors`` loses it when used), so a small
    JSON cannot make the reader copy one tensor a million times."""
    if depth > MAX_DEPTH:
        raise PlainDataError(f"nested deeper than {MAX_DEPTH} levels")
    if node is None or type(node) in (bool, int, float, str):
        return node
    if type(node) is not dict or len(node) != 1:
        raise PlainDataError(f"unexpected node of type {type(node).__name__}")
    ((tag, body),) = node.items()
    if tag in ("list", "tuple") and type(body) is list:
        items = [_decode(item, tensors, depth + 1) for item in body]
        return items if tag == "list" else tuple(items)
    if tag == "dict" and type(body) is list:
        if not all(type(p) is list and len(p) == 2 and type(p[0]) is str for p in body):
            raise PlainDataError("a dict entry is not a [string key, value] pair")
        return {key: _decode(item, tensors, depth + 1) for key, item in body}
    if tag == "tensor" and type(body) is str and body in tensors:
        return tensors.pop(body)
    if tag == "unsupported" and type(body) is str:
        return Unsupported(body)
    raise PlainDataError(f"unexpected node {tag!r} (expected one of {', '.join(_TAGS)})")


def from_bytes(text: bytes, blob: bytes) -> Any:
    """Decode what :func:`to_bytes` wrote; raise :class:`PlainDataError` for anything else."""
    if len(text) > MAX_JSON_BYTES or len(blob) > MAX_TENSOR_BYTES:
        raise PlainDataError("larger than the limits for plain data")
    try:
        node = json.loads(text.decode("utf-8"))
        tensors = load_tensors(blob) if blob else {}
    except Exception as error:  # JSON, UTF-8, recursion and safetensors' own errors
        raise PlainDataError(f"unreadable ({type(error).__name__})") from None
    return _decode(node, tensors, 0)


def roundtrip(value: Any) -> Any:
    """``value`` as the other side of the wall would see it (fresh copies, plain types only)."""
    return from_bytes(*to_bytes(value))


def _part(path: Path, suffix: str) -> Path:
    return path.parent / (path.name + suffix)  # not with_suffix: "in-4.1" has no suffix to replace


def write(path: Path, value: Any) -> None:
    """Write ``value`` as ``<path>.json`` and ``<path>.safetensors``."""
    text, blob = to_bytes(value)
    _part(path, ".safetensors").write_bytes(blob)
    _part(path, ".json").write_bytes(text)


def _read_regular_file(path: Path, limit: int) -> bytes:
    """A regular file's bytes, refusing symbolic links, devices, FIFOs and files over ``limit``."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as error:
        raise PlainDataError(f"{path.name} cannot be opened ({error.strerror})") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise PlainDataError(f"{path.name} is not a regular file")
        if info.st_size > limit:
            raise PlainDataError(f"{path.name} is larger than {limit} bytes")
        return handle.read(limit + 1)


def read(path: Path) -> Any:
    """Read what :func:`write` wrote at ``path``, trusting nothing about the files."""
    text = _read_regular_file(_part(path, ".json"), MAX_JSON_BYTES)
    blob = _read_regular_file(_part(path, ".safetensors"), MAX_TENSOR_BYTES)
    return from_bytes(text, blob)
