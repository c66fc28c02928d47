"""Train and evaluate an image classifier held in tensors: chapter 03's ``fit`` loop with AdamW and
PyTorch's one-cycle schedule (the learning rate rises along a cosine from lr/25 over the first 15% of
the steps, then falls along a cosine to almost 0; Adam's β₁ moves the opposite way), and batched
prediction."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from course_lib.arguments import require_int
from course_lib.train import History, fit


@dataclass
class TrainedClassifier:
    """What :func:`train_classifier` measured: the per-epoch history, wall time and parameters."""

    history: History
    seconds: float
    parameters: int
    images_seen: int

    @property
    def images_per_second(self) -> float:
        return self.images_seen / self.seconds


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def train_classifier(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, epochs: int, batch_size: int = 128,
                     lr: float = 3e-3, weight_decay: float = 0.05, seed: int = 0, augment=None,
                     progress: bool | None = None, device: torch.device | str = "cpu") -> TrainedClassifier:
    """Train ``model`` on ``inputs`` (N, C, H, W) float and ``labels`` (N,) for ``epochs`` shuffled
    passes (the shuffle seeded by ``seed``) on ``device`` (the model is moved there; each batch is
    moved as it is used). ``augment``, if given, maps each batch of inputs to a transformed one during
    training only."""
    epochs, batch_size = require_int("epochs", epochs), require_int("batch_size", batch_size)
    if len(inputs) != len(labels):
        raise ValueError(f"inputs and labels must have the same length, got {len(inputs)} and {len(labels)}")
    loader = DataLoader(TensorDataset(inputs, labels), batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    if augment is not None:
        loader = _Augmented(loader, augment)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * len(loader),
                                                    pct_start=0.15)
    start = time.perf_counter()
    history = fit(model, optimizer, loader, epochs, scheduler=scheduler, progress=progress, device=device)
    seconds = time.perf_counter() - start
    return TrainedClassifier(history, seconds, parameter_count(model), epochs * len(inputs))


class _Augmented:
    def __init__(self, loader: DataLoader, augment) -> None:
        self.loader, self.augment = loader, augment

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for x, y in self.loader:
            yield self.augment(x), y


def _device_of(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


@torch.no_grad()
def predict_logits(model: nn.Module, inputs: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """The model's logits for every input, on the CPU, computed in eval mode batch by batch on the
    model's device; the model's train/eval mode is restored afterwards."""
    batch_size = require_int("batch_size", batch_size)
    was_training, device = model.training, _device_of(model)
    model.eval()
    try:
        return torch.cat([model(inputs[i:i + batch_size].to(device)).float().cpu()
                          for i in range(0, len(inputs), batch_size)])
    finally:
        model.train(was_training)


def accuracy_of(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int = 512) -> float:
    return (predict_logits(model, inputs, batch_size).argmax(-1) == labels.cpu()).float().mean().item()


def correct_of(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Per example: was the prediction right (bool), for paired comparisons of two models."""
    return predict_logits(model, inputs, batch_size).argmax(-1) == labels.cpu()
