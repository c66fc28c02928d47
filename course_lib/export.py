"""Exporting the classifier out of Python eager mode, and checking that nothing changed.

``torch.export`` captures the model's forward pass as a graph with symbolic batch and sequence
sizes (an ``ExportedProgram``: saved and loaded as one ``.pt2`` file, run without the model's Python
code). ``torch.onnx.export`` (the dynamo-based exporter, this PyTorch's default) turns the same
graph into ONNX for onnxruntime. ``torch.jit.script``/``trace`` are deprecated in favour of these.
Every export is checked against eager PyTorch on real sentences of several shapes.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from course_lib.arguments import require_int

INPUT_NAMES = ("input_ids", "attention_mask")
ONNX_FILE = "model.onnx"


class LogitsOnly(nn.Module):
    """A classifier as a plain function of two integer tensors that returns a tensor: the shape an
    exporter, onnxruntime and a server want (no ``token_type_ids``, no output object)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def example_inputs(tokenizer: Any, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of real sentences, padded to the longest (int64)."""
    if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a non-empty sequence of str")
    batch = tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


def _dynamic_shapes(max_length: int) -> dict[str, dict[int, Any]]:
    batch = torch.export.Dim("batch", min=1, max=1024)
    sequence = torch.export.Dim("sequence", min=2, max=max_length)
    return {name: {0: batch, 1: sequence} for name in INPUT_NAMES}


def export_program(model: nn.Module, inputs: tuple[torch.Tensor, torch.Tensor],
                   max_length: int = 512) -> torch.export.ExportedProgram:
    """``torch.export.export`` of :class:`LogitsOnly` with dynamic batch and sequence sizes.
    ``inputs`` must have at least 2 sentences of at least 3 tokens (size-1 dimensions would be
    specialised to 1)."""
    ids, mask = inputs
    if ids.shape[0] < 2 or ids.shape[1] < 3:
        raise ValueError(f"example inputs need at least 2 sentences of 3 tokens to keep both sizes dynamic, "
                         f"got shape {tuple(ids.shape)}")
    return torch.export.export(LogitsOnly(model).eval(), (ids, mask), dynamic_shapes=_dynamic_shapes(max_length))


def save_program(program: torch.export.ExportedProgram, path: str | Path) -> Path:
    path = Path(path)
    torch.export.save(program, path)
    return path


def load_program(path: str | Path) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A callable ``(input_ids, attention_mask) -> logits`` from a saved ``.pt2`` file."""
    return torch.export.load(Path(path)).module()


def export_onnx(model: nn.Module, tokenizer: Any, folder: str | Path, inputs: tuple[torch.Tensor, torch.Tensor],
                max_length: int = 512) -> Path:
    """``folder/model.onnx`` (a single file: weights inside, not beside it) with dynamic batch and
    sequence axes, with the tokenizer and the model's ``config.json`` (label names) next to it, so
    the folder is all a server needs."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with _quiet_exporter():
        program = torch.onnx.export(LogitsOnly(model).eval(), inputs, dynamo=True, external_data=False, verbose=False,
                                    input_names=list(INPUT_NAMES), output_names=["logits"],
                                    dynamic_shapes=_dynamic_shapes(max_length))
    program.save(str(folder / ONNX_FILE), external_data=False)
    tokenizer.save_pretrained(folder)
    model.config.save_pretrained(folder)
    return folder / ONNX_FILE


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's chatter that says nothing about this model: skipped torchvision
    operators, a pytree deprecation inside torch, and axis names merged into ours."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated", category=FutureWarning)
            warnings.filterwarnings("ignore", message=r"# The axis name: .* will not be used", category=UserWarning)
            yield
    finally:
        registration.setLevel(level)


def onnx_session(path: str | Path, threads: int = 1):
    """An onnxruntime CPU session with a fixed number of threads (its default takes every core,
    which hurts beside other work on a small machine)."""
    import onnxruntime as ort

    threads = require_int("threads", threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_logits(session: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Run an onnxruntime session on PyTorch inputs; logits as a tensor."""
    feeds = {"input_ids": input_ids.numpy().astype(np.int64), "attention_mask": attention_mask.numpy().astype(np.int64)}
    return torch.from_numpy(session.run(["logits"], feeds)[0])


def quantize_onnx(source: str | Path, target: str | Path) -> Path:
    """onnxruntime's own dynamic int8 quantization of the weights (``quantize_dynamic``), from a
    folder written by :func:`export_onnx` to a new folder with the same tokenizer and config, so a
    server can load either. Returns the new ``model.onnx``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source, target = Path(source), Path(target)
    if not (source / ONNX_FILE).is_file():
        raise FileNotFoundError(f"source must be a folder written by export_onnx, but {source / ONNX_FILE} does not exist")
    if target.resolve() == source.resolve():
        raise ValueError(f"target must be a different folder from source, got {target} for both")
    target.mkdir(parents=True, exist_ok=True)
    for file in source.iterdir():
        if file.is_file() and file.name != ONNX_FILE:
            shutil.copy2(file, target / file.name)

    # onnxruntime logs a hint about shape pre-processing on the root logger, which fails for this
    # graph (its symbolic shape inference is incomplete for the dynamo export); keep the hint out.
    root = logging.getLogger()

    def hint(record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()

    placeholder = logging.NullHandler()  # without a handler, logging.warning() would install one for good
    root.addFilter(hint)
    root.addHandler(placeholder)
    try:
        quantize_dynamic(str(source / ONNX_FILE), str(target / ONNX_FILE), weight_type=QuantType.QInt8)
    finally:
        root.removeFilter(hint)
        root.removeHandler(placeholder)
    return target / ONNX_FILE


def max_difference(reference: Callable[..., torch.Tensor], candidate: Callable[..., torch.Tensor],
                   batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """The largest absolute difference between two ``(input_ids, attention_mask) -> logits``
    functions over several batches (the parity check of every export)."""
    worst = 0.0
    with torch.inference_mode():
        for ids, mask in batches:
            expected, got = reference(ids, mask), candidate(ids, mask)
            if expected.shape != got.shape:
                raise ValueError(f"shapes differ for inputs {tuple(ids.shape)}: {tuple(expected.shape)} vs {tuple(got.shape)}")
            worst = max(worst, (expected.float() - got.float()).abs().max().item())
    return worst
