"""Memory arithmetic of a training step: what parameters, gradients, optimizer state and activations
cost, estimated from a model's shape, and measured for real to check the estimate.

The estimate follows this course's decoder (``course_lib.gpt.GPT``: pre-norm blocks, fused
``scaled_dot_product_attention``, a GELU MLP, a tied output layer, no dropout) trained with a mean
cross-entropy over the whole vocabulary. For other transformers of the same family (BERT, LLaMA) it
is a sound first approximation; attention that materialises the (T, T) weights adds
``batch · heads · T²`` values per layer, which fused attention avoids.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from course_lib.arguments import require_int

OPTIMIZERS = ("adamw", "sgd", "sgd_momentum")
PRECISIONS = ("float32", "bfloat16", "mixed")
_STATES = {"adamw": 2, "sgd": 0, "sgd_momentum": 1}  # tensors of optimizer state per parameter

# activations a block saves for its backward pass, per token, in units of the hidden size (the two
# LayerNorms' inputs and outputs: 4; q, k and v: 3; the attention output before and after merging
# the heads: 2), plus the MLP's two wide tensors (before and after the activation function)
_BLOCK_SAVED_HIDDEN = 9
_BLOCK_SAVED_FFN = 2


@dataclass(frozen=True)
class TransformerShape:
    """The sizes that decide a decoder's memory: layers, hidden size, heads, vocabulary, context
    length (for learned positions; 0 for rotary ones), MLP width, whether the MLP is gated (SwiGLU:
    three matrices, as in LLaMA), the output layer tied to the embedding, and the number of
    key/value heads (fewer than ``heads`` with grouped-query attention)."""

    layers: int
    hidden: int
    heads: int
    vocab: int
    positions: int = 0
    ffn: int | None = None
    gated: bool = False
    tied: bool = True
    biases: bool = True
    kv_heads: int | None = None

    def __post_init__(self) -> None:
        for name in ("layers", "hidden", "heads", "vocab"):
            require_int(name, getattr(self, name))
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")

    @property
    def width(self) -> int:
        """The MLP's inner width (4 × hidden unless given)."""
        return self.ffn if self.ffn is not None else 4 * self.hidden


# Published shapes for the table of chapter 11 (parameter counts come out of count_parameters).
REFERENCE_MODELS: dict[str, TransformerShape] = {
    "BERT-base (110M)": TransformerShape(12, 768, 12, 30522, positions=512),
    "TinyLlama (1.1B)": TransformerShape(22, 2048, 32, 32000, ffn=5632, gated=True, tied=False, biases=False,
                                         kv_heads=4),
    "LLaMA-2 (7B)": TransformerShape(32, 4096, 32, 32000, ffn=11008, gated=True, tied=False, biases=False),
    "GPT-3 (175B)": TransformerShape(96, 12288, 96, 50257, positions=2048),
}


def shape_of(config: Any) -> TransformerShape:
    """A :class:`TransformerShape` from this course's ``GPTConfig`` or a Hugging Face config
    (``BertConfig``, ``LlamaConfig``, …), or the shape itself."""
    if isinstance(config, TransformerShape):
        return config
    if hasattr(config, "n_embd"):  # course_lib.gpt.GPTConfig
        return TransformerShape(config.n_layer, config.n_embd, config.n_head, config.vocab_size,
                                positions=config.block_size)
    if hasattr(config, "hidden_size"):
        gated = getattr(config, "hidden_act", "gelu") == "silu"
        return TransformerShape(config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
                                config.vocab_size, positions=0 if gated else getattr(config, "max_position_embeddings", 0),
                                ffn=config.intermediate_size, gated=gated,
                                tied=bool(getattr(config, "tie_word_embeddings", True)), biases=not gated,
                                kv_heads=getattr(config, "num_key_value_heads", None))
    raise TypeError(f"config must be a GPTConfig, a Hugging Face config or a TransformerShape, got {type(config).__name__}")


def count_parameters(config: Any) -> int:
    """Parameters of the decoder described by ``config`` (exact for ``course_lib.gpt.GPT``)."""
    s = shape_of(config)
    h, f = s.hidden, s.width
    kv = h * (s.kv_heads or s.heads) // s.heads  # the width of k and of v
    attention = 2 * h * h + 2 * h * kv + ((2 * h + 2 * kv) if s.biases else 0)
    mlp = (3 if s.gated else 2) * h * f + ((f + h) if s.biases else 0)
    norms = (4 if s.biases else 2) * h  # LayerNorm has a weight and a bias; RMSNorm only a weight
    embeddings = s.vocab * h + s.positions * h
    output = 0 if s.tied else s.vocab * h
    return s.layers * (attention + mlp + norms) + embeddings + output + (2 if s.biases else 1) * h


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of one training step's memory, by kind. ``peak`` is the largest of the moments that
    compete: the start of the backward pass (all saved activations alive, plus the gradient of the
    logits), its end (all gradients alive), and, with checkpointing, a block recomputed while
    gradients accumulate."""

    parameters: int
    weights: float
    gradients: float
    optimizer: float
    activations: float
    logits_gradient: float
    embedding_gradient: float
    recompute: float = 0.0

    @property
    def peak(self) -> float:
        backward_starts = self.activations + self.logits_gradient
        backward_ends = self.gradients + self.embedding_gradient
        recomputing = self.activations + self.recompute + self.gradients if self.recompute else 0.0
        return self.weights + self.optimizer + max(backward_starts, backward_ends, recomputing)

    def as_gib(self) -> dict[str, float]:
        kinds = ("weights", "gradients", "optimizer", "activations", "peak")
        return {kind: getattr(self, kind) / 2**30 for kind in kinds}


def bytes_per_parameter(dtype: str = "float32", optimizer: str = "adamw") -> dict[str, int]:
    """Bytes that each parameter costs in training, by kind: ``weights`` (with the fp32 master
    copy of mixed precision), ``gradients`` and ``optimizer`` state. AdamW keeps two values per
    parameter (the moving averages of the gradient and of its square), SGD with momentum one."""
    if dtype not in PRECISIONS:
        raise ValueError(f"dtype must be one of {PRECISIONS}, got {dtype!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    low = 4 if dtype == "float32" else 2
    state = 4 if dtype in ("float32", "mixed") else 2
    master = 4 if dtype == "mixed" else 0  # the fp32 copy that the optimizer updates
    return {"weights": low + master, "gradients": low, "optimizer": state * _STATES[optimizer]}


def estimate_training_memory(config: Any, batch: int, seq: int, dtype: str | torch.dtype = "float32",
                             optimizer: str = "adamw", checkpointing: bool = False) -> MemoryEstimate:
    """Estimate the memory of a training step (after the first, once the optimizer state exists).

    ``dtype``: ``"float32"``; ``"bfloat16"`` (everything in bf16); or ``"mixed"`` (bf16 weights,
    gradients and activations, plus fp32 master weights and optimizer state: 16 bytes per parameter
    with AdamW, the usual large-model recipe). ``optimizer``: ``"adamw"`` (two state tensors per
    parameter), ``"sgd_momentum"`` (one) or ``"sgd"`` (none). ``checkpointing``: activation
    checkpointing per block keeps only each block's input and recomputes one block at a time.
    """
    s = shape_of(config)
    batch, seq = require_int("batch", batch), require_int("seq", seq)
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    per_parameter = bytes_per_parameter(dtype, optimizer)
    if s.positions and seq > s.positions:
        raise ValueError(f"seq ({seq}) is longer than the model's {s.positions} positions")

    n = count_parameters(s)
    low = per_parameter["gradients"]  # bytes of a gradient, and of an activation
    logit = 2 if dtype == "bfloat16" else 4  # autocast computes the loss of mixed precision in fp32
    tokens = batch * seq
    ffn_saved = _BLOCK_SAVED_FFN * (2 if s.gated else 1)  # gated: gate, up, activation and product
    per_block = tokens * (_BLOCK_SAVED_HIDDEN * s.hidden + ffn_saved * s.width) * low
    blocks = tokens * s.hidden * low * s.layers if checkpointing else per_block * s.layers
    # the final norm's input and output, and the log-softmax of the logits kept by the loss
    head = tokens * 2 * s.hidden * low + batch * (seq - 1) * s.vocab * logit
    return MemoryEstimate(
        parameters=n,
        weights=float(n * per_parameter["weights"]),
        gradients=float(n * per_parameter["gradients"]),
        optimizer=float(n * per_parameter["optimizer"]),
        activations=float(blocks + head),
        logits_gradient=float(2 * tokens * s.vocab * logit),  # the loss's and the logits' gradients
        embedding_gradient=float(2 * s.vocab * s.hidden * low if s.tied else 0),  # two uses of one matrix
        recompute=float(per_block if checkpointing else 0),
    )


class Checkpointed(nn.Module):
    """A block whose activations are not kept: its forward pass is run again during backward
    (``torch.utils.checkpoint``), trading compute for memory."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return self.block(*args)
        from torch.utils.checkpoint import checkpoint

        return checkpoint(self.block, *args, use_reentrant=False)


def checkpoint_blocks(blocks: nn.ModuleList) -> nn.ModuleList:
    """Wrap every block of a ``ModuleList`` in :class:`Checkpointed`, in place; returns it."""
    if not isinstance(blocks, nn.ModuleList):
        raise TypeError(f"blocks must be an nn.ModuleList, got {type(blocks).__name__}")
    for i, block in enumerate(blocks):
        if not isinstance(block, Checkpointed):
            blocks[i] = Checkpointed(block)
    return blocks


class _LiveTensorBytes:
    """Counts the bytes of tensor storages created while it is active and still alive, and their
    peak: a ``TorchDispatchMode`` sees every operation, including those of the backward pass and
    the optimizer."""

    def __init__(self) -> None:
        from torch.multiprocessing.reductions import StorageWeakRef
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
                tracker.release_dead()
                out = func(*args, **(kwargs or {}))
                inputs = {StorageWeakRef(t.untyped_storage()).cdata
                          for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
                for t in tree_flatten(out)[0]:
                    if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                        storage = t.untyped_storage()
                        ref = StorageWeakRef(storage)
                        # in-place ops and views return an input's storage: nothing new was allocated
                        if ref.cdata not in tracker.live and ref.cdata not in inputs:
                            tracker.live[ref.cdata] = (ref, storage.nbytes())
                            tracker.current += storage.nbytes()
                tracker.peak = max(tracker.peak, tracker.current)
                return out

        self.mode = Mode()
        self.live: dict[int, tuple[Any, int]] = {}
        self.current = 0
        self.peak = 0

    def release_dead(self) -> None:
        for key in [key for key, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]


def measure_peak(fn: Callable[[], object], device: str | torch.device = "cpu") -> int:
    """Peak bytes of tensor memory that ``fn()`` allocates and holds at once (tensors created
    before the call do not count). On an accelerator its allocator's own counter
    (:func:`course_lib.bench.peak_memory`); on the CPU every operation is intercepted and the live
    storages are summed (exact, but several times slower, so use it on small configurations)."""
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if torch.device(device).type != "cpu":
        from course_lib.bench import peak_memory

        return int(peak_memory(fn, device))
    tracker = _LiveTensorBytes()
    with tracker.mode:
        fn()
    return tracker.peak


def format_bytes(n: float) -> str:
    """``1536`` → ``'1.5 KiB'``: binary units, three significant figures."""
    if not math.isfinite(n) or n < 0:
        raise ValueError(f"n must be a finite number >= 0, got {n}")
    if n < 1024:
        return f"{n:.0f} B"
    units = ("KiB", "MiB", "GiB", "TiB")
    power = min(len(units), int(math.log(n, 1024)))
    return f"{n / 1024 ** power:.3g} {units[power - 1]}"
