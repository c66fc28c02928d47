"""A plain, reusable training loop and the classification metrics, with nothing hidden.

``fit`` trains any model whose batches are ``(inputs, targets)`` tuples or dictionaries in the
Hugging Face style (``{"input_ids": ..., "attention_mask": ..., "labels": ...}``) and whose output
is logits or an object with ``.logits``; chapters 03 (digits), 06 (language models) and 07
(fine-tuning BERT) use the same function.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from course_lib.arguments import require_int
from course_lib.runtime import headless

Batch = tuple | list | Mapping
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------------
# Metrics


def _check_labels(predictions: torch.Tensor, targets: torch.Tensor) -> None:
    for name, t in (("predictions", predictions), ("targets", targets)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 1:
            raise ValueError(f"{name} must be 1-D class indices, got shape {tuple(t.shape)}")
    if predictions.shape != targets.shape:
        raise ValueError(
            f"predictions and targets must have the same shape, got {tuple(predictions.shape)} and {tuple(targets.shape)}"
        )


def accuracy(predictions: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of predictions equal to the targets (NaN for no samples)."""
    _check_labels(predictions, targets)
    return (predictions == targets).float().mean().item() if len(targets) else math.nan


def confusion_matrix(predictions: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) counts: row = true class, column = predicted class (scikit-learn's convention)."""
    _check_labels(predictions, targets)
    for name, t in (("predictions", predictions), ("targets", targets)):
        if len(t) and (t.min() < 0 or t.max() >= num_classes):
            raise ValueError(f"{name} must be in [0, {num_classes - 1}] for num_classes={num_classes}")
    index = targets.long() * num_classes + predictions.long()
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def precision_recall_f1(
    predictions: torch.Tensor, targets: torch.Tensor, num_classes: int, average: str = "macro"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | tuple[float, float, float]:
    """Precision, recall and F1 per class (``average=None``) or their unweighted mean over classes
    (``"macro"``). A class never predicted (or never present) scores 0 there, as scikit-learn's
    ``zero_division=0``."""
    if average not in ("macro", None):
        raise ValueError(f"average must be 'macro' or None, got {average!r}")
    cm = confusion_matrix(predictions, targets, num_classes).double()
    tp = cm.diag()
    predicted, actual = cm.sum(0), cm.sum(1)
    precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), 0.0)
    recall = torch.where(actual > 0, tp / actual.clamp_min(1), 0.0)
    denominator = precision + recall
    f1 = torch.where(denominator > 0, 2 * precision * recall / denominator.clamp_min(1e-300), 0.0)
    if average is None:
        return precision, recall, f1
    return precision.mean().item(), recall.mean().item(), f1.mean().item()


def reliability(
    probabilities: torch.Tensor, targets: torch.Tensor, n_bins: int = 10
) -> dict[str, torch.Tensor]:
    """The data of a reliability diagram: predictions grouped by confidence (the highest
    probability) into ``n_bins`` equal-width bins of [0, 1]; per bin the count, the mean confidence
    and the accuracy (NaN for an empty bin)."""
    if not isinstance(probabilities, torch.Tensor) or probabilities.ndim != 2:
        raise ValueError(f"probabilities must be an (N, C) tensor, got {getattr(probabilities, 'shape', type(probabilities).__name__)}")
    if not isinstance(targets, torch.Tensor) or targets.shape != probabilities.shape[:1]:
        raise ValueError(f"targets must have shape ({probabilities.shape[0]},), got {getattr(targets, 'shape', type(targets).__name__)}")
    n_bins = require_int("n_bins", n_bins)
    confidence, predicted = probabilities.double().max(dim=1)
    correct = (predicted == targets).double()
    # a confidence of exactly 1.0 belongs to the last bin, as every other edge opens its bin
    bins = (confidence * n_bins).long().clamp(max=n_bins - 1)
    count = torch.bincount(bins, minlength=n_bins).double()

    def bin_mean(values: torch.Tensor) -> torch.Tensor:
        return torch.where(count > 0, torch.bincount(bins, weights=values, minlength=n_bins) / count.clamp_min(1), math.nan)

    mean_confidence, bin_accuracy = bin_mean(confidence), bin_mean(correct)
    return {"count": count, "confidence": mean_confidence, "accuracy": bin_accuracy,
            "edges": torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)}


def expected_calibration_error(probabilities: torch.Tensor, targets: torch.Tensor, n_bins: int = 10) -> float:
    """ECE: the gap between confidence and accuracy, averaged over the bins of :func:`reliability`
    weighted by how many predictions each holds (0 for a perfectly calibrated model)."""
    table = reliability(probabilities, targets, n_bins)
    filled = table["count"] > 0
    gaps = (table["accuracy"][filled] - table["confidence"][filled]).abs()
    return (gaps * table["count"][filled]).sum().item() / len(targets) if len(targets) else math.nan


# ---------------------------------------------------------------------------------------------
# Learning-rate schedule


def linear_warmup_schedule(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning rate rising linearly from 0 to its set value over ``warmup_steps``, then falling
    linearly to 0 at ``total_steps``: the usual schedule for fine-tuning transformers (and what the
    Trainer uses by default). Step it once per batch."""
    total_steps = require_int("total_steps", total_steps)
    warmup_steps = require_int("warmup_steps", warmup_steps, at_least=0)
    if warmup_steps > total_steps:
        raise ValueError(f"warmup_steps must be <= total_steps={total_steps}, got {warmup_steps}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ---------------------------------------------------------------------------------------------
# Moving batches and calling the model


def to_device(batch: Batch, device: torch.device | str) -> Batch:
    """The batch with every tensor moved to ``device`` (tuples, lists and dicts, nested)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(value, device) for value in batch)
    return batch


def forward_batch(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the model on one batch; return ``(logits, targets)``.

    ``(inputs, targets)`` calls ``model(inputs)``; a dict calls ``model(**inputs)`` with everything
    but ``"labels"``, which are the targets. An output with ``.logits`` (transformers) gives those.
    """
    if isinstance(batch, Mapping):
        if "labels" not in batch:
            raise ValueError(f"a dict batch must have a 'labels' entry, got keys {sorted(batch)}")
        targets = batch["labels"]
        output = model(**{k: v for k, v in batch.items() if k != "labels"})
    elif isinstance(batch, (tuple, list)) and len(batch) == 2:
        inputs, targets = batch
        output = model(inputs)
    else:
        raise ValueError(
            "a batch must be (inputs, targets) or a dict with 'labels', "
            f"got {type(batch).__name__}{' of length ' + str(len(batch)) if isinstance(batch, (tuple, list)) else ''}"
        )
    logits = getattr(output, "logits", output)
    return logits, targets


def _flatten(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-level outputs (B, T, C) with targets (B, T) become (B·T, C) and (B·T,)."""
    if logits.ndim == 3 and targets.ndim == 2:
        return logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    return logits, targets


# ---------------------------------------------------------------------------------------------
# Evaluation and training


@torch.no_grad()
def predict(
    model: nn.Module, loader: Iterable[Batch], device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """All logits and targets of a loader, in order, on the CPU (model in eval mode)."""
    model.eval()
    all_logits, all_targets = [], []
    for batch in loader:
        logits, targets = _flatten(*forward_batch(model, to_device(batch, device)))
        all_logits.append(logits.float().cpu())
        all_targets.append(targets.cpu())
    if not all_logits:
        raise ValueError("loader yielded no batches")
    return torch.cat(all_logits), torch.cat(all_targets)


def evaluate(
    model: nn.Module,
    loader: Iterable[Batch],
    loss_fn: LossFn = F.cross_entropy,
    device: torch.device | str = "cpu",
    ignore_index: int = -100,
) -> dict[str, float]:
    """Loss and accuracy over a loader (targets equal to ``ignore_index`` are left out of the
    accuracy, as the loss leaves them out)."""
    logits, targets = predict(model, loader, device)
    keep = targets != ignore_index
    return {
        "loss": loss_fn(logits, targets).item(),
        "accuracy": accuracy(logits[keep].argmax(-1), targets[keep]),
    }


@dataclass
class History:
    """Per-epoch records of a :func:`fit` run: lists of equal length, one entry per epoch."""

    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False

    def as_dict(self) -> dict[str, list]:
        return {
            "epoch": self.epoch, "train_loss": self.train_loss, "val_loss": self.val_loss,
            "val_accuracy": self.val_accuracy, "lr": self.lr, "seconds": self.seconds,
        }


def train_step(
    optimizer: torch.optim.Optimizer,
    loss: torch.Tensor,
    *,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    max_grad_norm: float | None = None,
) -> torch.Tensor:
    """One optimisation step from a computed loss: clear the old gradients, backpropagate, clip the
    gradient norm to ``max_grad_norm`` if given, step the optimiser, then the scheduler (per step,
    as transformer schedules with warm-up expect). Returns the loss detached, still on its device:
    reading its value (``.item()``) makes the CPU wait for the device, so callers do it rarely."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm is not None:
        nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], max_grad_norm)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return loss.detach()


def _early_stop(history: History, loss: float, epoch: int, patience: int | None, model: nn.Module,
                state: dict) -> bool:
    """Record the epoch's validation loss; keep the best weights (with ``patience``); say whether
    ``patience`` epochs have now passed without improvement."""
    if loss < state.get("best_loss", math.inf):
        state.update(best_loss=loss, waited=0)
        history.best_epoch = epoch
        if patience is not None:
            state["weights"] = copy.deepcopy(model.state_dict())
        return False
    state["waited"] = state.get("waited", 0) + 1
    return patience is not None and state["waited"] >= patience


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_loader: Iterable[Batch],
    epochs: int,
    *,
    val_loader: Iterable[Batch] | None = None,
    loss_fn: LossFn = F.cross_entropy,
    device: torch.device | str = "cpu",
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    max_grad_norm: float | None = None,
    early_stopping_patience: int | None = None,
    progress: bool | None = None,
    log_every: int = 20,
) -> History:
    """Train ``model`` for ``epochs`` passes over ``train_loader``; return the :class:`History`.

    Each batch: forward, ``loss_fn(logits, targets)``, then :func:`train_step`. The losses are summed
    on the device and read back once every ``log_every`` steps and at the end of each epoch (the
    progress bar's loss, and the check that it is finite): reading a value every step would make the
    CPU wait for a GPU after each one. After each epoch, the validation loss and accuracy if
    ``val_loader`` is given. With ``early_stopping_patience``, training stops after that many epochs
    without a lower validation loss, and the best epoch's weights are restored. ``progress`` shows a
    progress bar (default: unless headless, so executed notebooks do not store one).
    """
    epochs, log_every = require_int("epochs", epochs), require_int("log_every", log_every)
    early_stopping_patience = require_int("early_stopping_patience", early_stopping_patience, allow_none=True)
    if early_stopping_patience is not None and val_loader is None:
        raise ValueError("early_stopping_patience needs a val_loader to watch")
    if max_grad_norm is not None and not max_grad_norm > 0:
        raise ValueError(f"max_grad_norm must be > 0 or None, got {max_grad_norm}")
    model.to(device)
    history, best = History(), {}
    total = len(train_loader) * epochs if hasattr(train_loader, "__len__") else None
    if progress is None:
        progress = not headless()
    bar = tqdm(total=total, desc="training", unit="step", disable=not progress, leave=False)
    for epoch in range(1, epochs + 1):
        model.train()
        start, steps = time.perf_counter(), 0
        epoch_sum = window_sum = torch.zeros((), device=device)
        for batch in train_loader:
            logits, targets = _flatten(*forward_batch(model, to_device(batch, device)))
            loss = train_step(optimizer, loss_fn(logits, targets), scheduler=scheduler, max_grad_norm=max_grad_norm)
            epoch_sum, window_sum, steps = epoch_sum + loss, window_sum + loss, steps + 1
            if steps % log_every == 0:
                _log(bar, window_sum.item() / log_every, epoch, steps, log_every)
                window_sum = torch.zeros((), device=device)
        if steps == 0:
            raise ValueError("train_loader yielded no batches")
        train_loss = epoch_sum.item() / steps
        _log(bar, train_loss, epoch, steps, steps % log_every or log_every, advance=steps % log_every)
        history.epoch.append(epoch)
        history.train_loss.append(train_loss)
        history.lr.append(optimizer.param_groups[0]["lr"])
        stop = False
        if val_loader is not None:
            metrics = evaluate(model, val_loader, loss_fn, device)
            history.val_loss.append(metrics["loss"])
            history.val_accuracy.append(metrics["accuracy"])
            stop = _early_stop(history, metrics["loss"], epoch, early_stopping_patience, model, best)
        history.seconds.append(time.perf_counter() - start)
        if stop:
            history.stopped_early = True
            break
    bar.close()
    if "weights" in best:
        model.load_state_dict(best["weights"])
    return history


def _log(bar: tqdm, mean_loss: float, epoch: int, step: int, window: int, advance: int | None = None) -> None:
    """Advance the bar over the steps since the last reading, show the mean loss over them, and stop
    with a clear error when it is not finite."""
    if not math.isfinite(mean_loss):
        raise FloatingPointError(f"loss became {mean_loss} at epoch {epoch}, within steps {step - window + 1}-{step}: "
                                 "lower the learning rate?")
    bar.update(window if advance is None else advance)
    bar.set_postfix(epoch=epoch, loss=f"{mean_loss:.4f}")
