"""LoRA (Hu et al., 2021) written out: a frozen linear layer plus a trainable low-rank update.

``W x`` becomes ``W x + (alpha / r) · B (A x)`` with ``A`` (r × in) and ``B`` (out × r). ``B``
starts at zero, so an injected model computes exactly what it did before; only ``A`` and ``B``
(r · (in + out) numbers per layer instead of in · out) are trained. Merging adds ``(alpha / r) B A``
into ``W``, so a deployed model pays nothing extra. Names follow ``peft`` (``base_layer``,
``lora_A``, ``lora_B``) so the two can be compared weight by weight.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from course_lib.arguments import require_int

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


class LoRALinear(nn.Module):
    """``base`` (frozen) plus the scaled low-rank update; ``merge``/``unmerge`` fold it in and out."""

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"base must be an nn.Linear, got {type(base).__name__}")
        r = require_int("r", r)
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.base_layer = base
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        weight = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, dtype=weight.dtype, device=weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, dtype=weight.dtype, device=weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear and peft initialise A
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        base.requires_grad_(False)

    def delta_weight(self) -> torch.Tensor:
        """The update as a full matrix, ``(alpha / r) · B A``, shaped like ``base.weight``."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.merged:
            return out
        return out + (self.lora_dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.base_layer.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base_layer.weight -= self.delta_weight()
            self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, merged={self.merged}"


def _matches(name: str, targets: str | Sequence[str]) -> bool:
    """peft's rule: a string is a regular expression the whole name must match; a list names
    modules by their last part(s) (``"query"`` matches ``...attention.self.query``)."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def inject_lora(model: nn.Module, target_modules: str | Sequence[str], r: int = 8, alpha: float = 16.0,
                dropout: float = 0.0) -> list[str]:
    """Replace every ``nn.Linear`` whose name matches ``target_modules`` by a :class:`LoRALinear`
    around it, in place; return the names replaced. A pattern that matches nothing is an error."""
    if not isinstance(target_modules, str) and (
            not isinstance(target_modules, Sequence) or not target_modules
            or not all(isinstance(t, str) for t in target_modules)):
        raise TypeError(f"target_modules must be a regex str or a non-empty list of str, got {target_modules!r}")
    chosen = [(name, module) for name, module in model.named_modules()
              if name and _matches(name, target_modules) and not isinstance(module, LoRALinear)
              and not any(isinstance(p, LoRALinear) for p in _parents(model, name))]
    if not chosen:
        linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise ValueError(f"target_modules {target_modules!r} matches no module; linear layers are named "
                         f"like {linear[:3]}{' ...' if len(linear) > 3 else ''}")
    for name, module in chosen:
        if not isinstance(module, nn.Linear):
            raise TypeError(f"target_modules matched {name!r}, a {type(module).__name__}; LoRA here wraps nn.Linear only")
    for name, module in chosen:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, LoRALinear(module, r, alpha, dropout))
    return [name for name, _ in chosen]


def _parents(model: nn.Module, name: str) -> list[nn.Module]:
    parts = name.split(".")
    return [model.get_submodule(".".join(parts[:i])) for i in range(1, len(parts))]


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def mark_only_lora_trainable(model: nn.Module, also: Sequence[str] = ()) -> None:
    """Freeze every parameter except LoRA's ``A`` and ``B`` and those of the modules named in
    ``also`` (e.g. ``["classifier"]``: a new task head has no pretrained weights to keep)."""
    if not lora_layers(model):
        raise ValueError("the model has no LoRA layers: call inject_lora first")
    for name, parameter in model.named_parameters():
        is_lora = name.endswith((".lora_A", ".lora_B"))
        parameter.requires_grad_(is_lora or any(_matches(name.rsplit(".", 1)[0], [m]) for m in also))


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` numbers of parameters (shared tensors counted once)."""
    unique = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in unique if p.requires_grad), sum(p.numel() for p in unique)


def merge_lora(model: nn.Module) -> None:
    for layer in lora_layers(model).values():
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    for layer in lora_layers(model).values():
        layer.unmerge()


def unload_lora(model: nn.Module) -> nn.Module:
    """Merge every LoRA layer and put the plain ``nn.Linear`` back: the model is as it was before
    injection, with the learned update inside its weights (for export)."""
    for name, layer in lora_layers(model).items():
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer.base_layer)
    return model


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only what training changed: every trainable tensor (LoRA's and any head's), by name."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return {name: t.detach().clone() for name, t in model.state_dict().items() if name in trainable}


def save_adapter(model: nn.Module, path: str | Path, target_modules: str | Sequence[str]) -> Path:
    """Write the adapter (``adapter_model.safetensors``) and how to rebuild it (``adapter_config.json``)."""
    from safetensors.torch import save_file

    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers to save")
    if any(layer.merged for layer in layers.values()):
        raise ValueError("unmerge the LoRA layers before saving the adapter")
    first = next(iter(layers.values()))
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file(adapter_state_dict(model), path / ADAPTER_WEIGHTS)
    config = {"r": first.r, "alpha": first.alpha, "dropout": getattr(first.lora_dropout, "p", 0.0),
              "target_modules": target_modules if isinstance(target_modules, str) else list(target_modules)}
    (path / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return path


def load_adapter(model: nn.Module, path: str | Path) -> nn.Module:
    """Inject LoRA as the saved config says and load the saved tensors into ``model`` (a fresh copy
    of the same base model); every saved tensor must find its place, or nothing is loaded."""
    from safetensors.torch import load_file

    path = Path(path)
    config = json.loads((path / ADAPTER_CONFIG).read_text())
    state = load_file(path / ADAPTER_WEIGHTS)
    inject_lora(model, config["target_modules"], config["r"], config["alpha"], config["dropout"])
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in state if k in own and own[k].shape != state[k].shape)
    if unexpected or wrong:
        raise ValueError(f"the adapter in {path} does not fit this model: unexpected {unexpected[:3]}, "
                         f"shape mismatch {wrong[:3]}")
    model.load_state_dict(state, strict=False)
    mark_only_lora_trainable(model, also=sorted({k.rsplit(".", 1)[0] for k in state if ".lora_" not in k}))
    return model


def from_peft_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ``peft`` model's LoRA and ``modules_to_save`` tensors under this module's names
    (``base_model.model.X.lora_A.default.weight`` → ``X.lora_A``)."""
    converted = {}
    for key, value in state.items():
        name = key.removeprefix("base_model.model.")
        for part in ("lora_A", "lora_B"):
            if f".{part}.default.weight" in name:
                converted[name.replace(f".{part}.default.weight", f".{part}")] = value
        if ".modules_to_save.default." in name:
            converted[name.replace(".modules_to_save.default.", ".")] = value
    return converted
