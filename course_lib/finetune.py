"""Fine-tuning the bundled BERT to classify sentences: the data pipeline, the metrics the Trainer
reports, the same recipe as a plain loop, and the saved classifier that chapters 09 and 10 load.

Both routes of chapter 07 share :func:`tokenize` (a ``datasets.map``) and
``DataCollatorWithPadding`` (each batch padded only to its own longest sentence). The plain loop
(:func:`fine_tune`) does what ``Trainer`` does by default: fused AdamW without weight decay on biases
and LayerNorm weights, a linear warm-up and decay of the learning rate, gradient clipping at 1.0.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from course_lib import train
from course_lib.arguments import require_int
from course_lib.pretrained import BUNDLED, load_model, load_tokenizer
from course_lib.runtime import progress_bars_hidden_when_headless, seed_everything

LABELS = ("negative", "positive")


def tokenize(dataset: Any, tokenizer: Any, max_length: int = 128, text_column: str = "text",
             label_column: str = "label") -> Any:
    """A ``datasets`` Dataset or DatasetDict tokenised with ``map`` (batched, truncated to
    ``max_length`` tokens, not padded), keeping only the model inputs and ``labels``."""
    max_length = require_int("max_length", max_length, at_least=2)  # room for [CLS] and [SEP]
    splits = dataset.values() if hasattr(dataset, "values") else [dataset]
    for split in splits:
        for column in (text_column, label_column):
            if column not in split.column_names:
                raise ValueError(f"the dataset has no column {column!r}; its columns are {split.column_names}")

    def encode(batch: dict[str, list]) -> dict[str, list]:
        encoded = tokenizer(batch[text_column], truncation=True, max_length=max_length)
        encoded["labels"] = batch[label_column]
        return encoded

    first = next(iter(splits))
    with progress_bars_hidden_when_headless():
        return dataset.map(encode, batched=True, remove_columns=first.column_names, desc="tokenising")


def collator(tokenizer: Any):
    """Dynamic padding: each batch is padded to its longest sentence, as tensors."""
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer, return_tensors="pt")


class LengthGroupedSampler(Sampler[int]):
    """A shuffled order in which each batch holds sentences of similar length, so dynamic padding
    adds little: shuffle, cut into groups of ``group_batches`` batches, sort each group by length
    (longest first), cut into batches, shuffle the full batches (a short one goes last). A new
    order every epoch."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, group_batches: int = 50):
        batch_size = require_int("batch_size", batch_size)
        self.lengths = torch.as_tensor(list(lengths))
        self.batch_size, self.group = batch_size, batch_size * group_batches
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(len(self.lengths), generator=self.generator)
        batches = []
        for group in order.split(self.group):
            group = group[self.lengths[group].argsort(descending=True, stable=True)]
            batches.extend(group.split(self.batch_size))
        # the loader cuts this stream into batches again, so only the very last may be short
        last = [batches.pop()] if len(batches[-1]) < self.batch_size else []
        for i in torch.randperm(len(batches), generator=self.generator).tolist():
            yield from batches[i].tolist()
        for batch in last:
            yield from batch.tolist()


def make_loaders(tokenized: Mapping[str, Any], tokenizer: Any, batch_size: int = 32,
                 eval_batch_size: int = 64, seed: int = 0, group_by_length: bool = True) -> dict[str, DataLoader]:
    """One DataLoader per split: ``train`` shuffled reproducibly from ``seed`` (grouped by length
    unless ``group_by_length`` is false), the others in order."""
    batch_size, eval_batch_size = require_int("batch_size", batch_size), require_int("eval_batch_size", eval_batch_size)
    collate = collator(tokenizer)
    loaders = {}
    for name, split in tokenized.items():
        if name != "train":
            loaders[name] = DataLoader(split, batch_size=eval_batch_size, collate_fn=collate)
        elif group_by_length:
            sampler = LengthGroupedSampler([len(ids) for ids in split["input_ids"]], batch_size, seed)
            loaders[name] = DataLoader(split, batch_size=batch_size, sampler=sampler, collate_fn=collate)
        else:
            loaders[name] = DataLoader(split, batch_size=batch_size, shuffle=True, collate_fn=collate,
                                       generator=torch.Generator().manual_seed(seed))
    return loaders


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Accuracy and macro-averaged F1 of the arg-max predictions."""
    logits, labels = torch.as_tensor(logits), torch.as_tensor(labels)
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits must be (N, C) and labels (N,), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    predictions = logits.argmax(-1)
    _, _, f1 = train.precision_recall_f1(predictions, labels.long(), logits.shape[-1])
    return {"accuracy": train.accuracy(predictions, labels.long()), "f1": f1}


def compute_metrics(eval_prediction: Any) -> dict[str, float]:
    """The ``compute_metrics`` hook of ``Trainer``: it gets NumPy logits and label ids."""
    logits, labels = eval_prediction.predictions, eval_prediction.label_ids
    if isinstance(logits, tuple):  # a model that also returns hidden states
        logits = logits[0]
    return classification_metrics(torch.from_numpy(logits), torch.from_numpy(labels))


def load_classifier_model(name: str | Path = BUNDLED, num_labels: int = len(LABELS)) -> nn.Module:
    """``BertForSequenceClassification`` from the bundled (or named) encoder, with a new, randomly
    initialised classification head and readable label names in its config."""
    from transformers import BertForSequenceClassification
    from transformers.utils import logging

    names = LABELS if num_labels == len(LABELS) else tuple(f"LABEL_{i}" for i in range(num_labels))
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the load report's "classifier: MISSING" is expected: the head is new
    try:
        return load_model(name, model_class=BertForSequenceClassification, num_labels=num_labels,
                          id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    finally:
        logging.set_verbosity(verbosity)


def adamw(model: nn.Module, lr: float, weight_decay: float = 0.01) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, with no weight decay on biases and LayerNorm weights
    (the Trainer's grouping: decaying a normalisation's gain or a bias only hurts)."""
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    decay, no_decay = [], []
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if not parameter.requires_grad:
                continue
            skip = name == "bias" or isinstance(module, nn.LayerNorm)
            (no_decay if skip else decay).append(parameter)
    # fused: one kernel for the whole update (the Trainer's default optimiser, "adamw_torch_fused")
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, fused=True)


def fine_tune(model: nn.Module, loaders: Mapping[str, DataLoader], *, epochs: int = 3, lr: float = 1e-4,
              warmup_ratio: float = 0.1, weight_decay: float = 0.01, max_grad_norm: float = 1.0,
              device: torch.device | str = "cpu", progress: bool | None = None) -> train.History:
    """The plain-loop recipe: :func:`adamw`, :func:`course_lib.train.linear_warmup_schedule` over
    all steps, clipping, :func:`course_lib.train.fit` with validation after each epoch."""
    if not 0 <= warmup_ratio < 1:
        raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
    if "train" not in loaders:
        raise ValueError(f"loaders must have a 'train' split, got {sorted(loaders)}")
    optimizer = adamw(model, lr, weight_decay)
    total = len(loaders["train"]) * epochs
    scheduler = train.linear_warmup_schedule(optimizer, math.ceil(warmup_ratio * total), total)
    return train.fit(model, optimizer, loaders["train"], epochs, val_loader=loaders.get("validation"),
                     scheduler=scheduler, max_grad_norm=max_grad_norm, device=device, progress=progress)


def confident_errors(texts: Sequence[str], probabilities: torch.Tensor, labels: torch.Tensor, k: int = 5,
                     names: Sequence[str] = LABELS) -> list[dict[str, Any]]:
    """The ``k`` wrong predictions made with the highest confidence, most confident first."""
    if not len(texts) == len(probabilities) == len(labels):
        raise ValueError(f"texts, probabilities and labels must have the same length, got "
                         f"{len(texts)}, {len(probabilities)} and {len(labels)}")
    if probabilities.ndim != 2 or probabilities.shape[1] != len(names):
        raise ValueError(f"probabilities must be (N, {len(names)}) for names {tuple(names)}, got {tuple(probabilities.shape)}")
    confidence, predicted = probabilities.max(-1)
    wrong = (predicted != labels).nonzero().flatten()
    order = wrong[confidence[wrong].argsort(descending=True)][:k]
    return [{"text": texts[i], "label": names[labels[i]], "predicted": names[predicted[i]],
             "confidence": round(confidence[i].item(), 3)} for i in order.tolist()]


def vader_predict(texts: Sequence[str]) -> torch.Tensor:
    """The lexicon baseline: VADER's compound score (a rule-based sentiment from a hand-rated word
    list, no training) as a label, positive when >= 0."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    return torch.tensor([int(analyzer.polarity_scores(t)["compound"] >= 0) for t in texts])


# ---------------------------------------------------------------------------------------------
# The saved classifier, shared with later chapters


def classifier_dir() -> Path:
    """Where chapter 07 saves its fine-tuned classifier: ``checkpoints/07_classifier`` (git-ignored)."""
    from course_lib.runtime import repo_root

    return repo_root() / "checkpoints" / "07_classifier"


def save_classifier(model: nn.Module, tokenizer: Any, path: str | Path, metrics: Mapping[str, Any]) -> Path:
    """Model (safetensors), tokenizer and a ``training.json`` with how it was made and scored."""
    path = Path(path)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    (path / "training.json").write_text(json.dumps(dict(metrics), indent=2, sort_keys=True) + "\n")
    return path


def rebuild_classifier(path: str | Path, *, train_size: int = 1000, epochs: int = 1, lr: float = 2e-4,
                       batch_size: int = 16, seed: int = 0, device: torch.device | str = "cpu") -> Path:
    """A quick stand-in for chapter 07's model (the fast recipe on ``train_size`` sentences), saved
    to ``path``, for chapters run before chapter 07 has been."""
    from course_lib.data import load_movie_reviews

    seed_everything(seed)
    tokenizer = load_tokenizer()
    data = load_movie_reviews()
    data["train"] = data["train"].shuffle(seed=seed).select(range(min(train_size, len(data["train"]))))
    loaders = make_loaders(tokenize(data, tokenizer), tokenizer, batch_size=batch_size, seed=seed)
    model = load_classifier_model()
    start = time.perf_counter()
    history = fine_tune(model, loaders, epochs=epochs, lr=lr, device=device)
    logits, labels = train.predict(model, loaders["test"], device)
    metrics = {"recipe": "course_lib.finetune.rebuild_classifier", "train_size": len(data["train"]),
               "epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed, "seconds": round(time.perf_counter() - start, 1),
               "validation_accuracy": history.val_accuracy[-1],
               **{f"test_{k}": v for k, v in classification_metrics(logits, labels).items()}}
    return save_classifier(model.cpu(), tokenizer, path, metrics)


def load_classifier(path: str | Path | None = None, *, rebuild: bool = True,
                    device: torch.device | str = "cpu") -> tuple[nn.Module, Any, dict[str, Any]]:
    """Chapter 07's fine-tuned classifier (model in eval mode, tokenizer, training.json), from
    ``path`` or :func:`classifier_dir`. When it is missing and ``rebuild`` is true, a quick one is
    trained and saved there first (about a minute on a laptop CPU)."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    path = Path(path) if path is not None else classifier_dir()
    if not (path / "config.json").is_file():
        if not rebuild:
            raise FileNotFoundError(f"no fine-tuned classifier in {path}: run chapter 07, or pass rebuild=True")
        print(f"no fine-tuned classifier in {path}: training a quick one (about a minute) ...", flush=True)
        rebuild_classifier(path, device=device)
    model = load_model(path, model_class=BertForSequenceClassification).to(device).eval()
    info_file = path / "training.json"
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    return model, AutoTokenizer.from_pretrained(path), info
