"""Supervised fine-tuning (SFT) of a chat model, written out: conversations in ChatML, a loss on the
assistant's tokens only, dynamic padding, and a training loop with gradient accumulation.

The model should learn to *answer*, not to predict the user's words, so every token outside the
assistant's replies gets the label ``-100`` (ignored by the cross-entropy). Batches are padded only
to their own longest example; padding is masked out of attention and of the loss. With gradient
accumulation the loss is averaged over all the labelled tokens of the accumulated batches, so four
micro-batches of eight give exactly the gradient of one batch of 32.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.arguments import require_int
from course_lib.chat import END, chatml

IGNORE = -100
ASSISTANT_HEADER = "<|im_start|>assistant\n"


def assistant_labels(ids: Sequence[int], header: Sequence[int], end_id: int) -> list[int]:
    """Labels for one tokenised conversation: each assistant reply's tokens and its closing end
    token keep their id; everything else (system and user turns, the ``<|im_start|>assistant\\n``
    header, the newline after the end token) becomes ``IGNORE``."""
    ids, header = list(ids), list(header)
    if not header:
        raise ValueError("header must be the non-empty token ids of the assistant's opening")
    labels = [IGNORE] * len(ids)
    i = 0
    while i <= len(ids) - len(header):
        if ids[i:i + len(header)] != header:
            i += 1
            continue
        j = i + len(header)
        while j < len(ids) and ids[j] != end_id:
            labels[j] = ids[j]
            j += 1
        if j < len(ids):
            labels[j] = ids[j]  # the end token is learned too: it is how the model stops
        i = j + 1
    return labels


@dataclass(frozen=True)
class Encoded:
    """One training example: token ids and their labels (``IGNORE`` where no loss is taken)."""

    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        return sum(label != IGNORE for label in self.labels)


def encode_chat(tokenizer, messages: Sequence[Mapping[str, str]], max_length: int = 256) -> Encoded:
    """A whole conversation in ChatML as ids, with labels on the assistant's replies only. Refuses a
    conversation longer than ``max_length`` tokens (cutting it could drop the reply) or one whose
    assistant reply is missing."""
    max_length = require_int("max_length", max_length, at_least=2)
    ids = tokenizer.encode(chatml(messages, add_generation_prompt=False), add_special_tokens=False)
    if len(ids) > max_length:
        raise ValueError(f"the conversation is {len(ids)} tokens, more than max_length={max_length}")
    header = tokenizer.encode(ASSISTANT_HEADER, add_special_tokens=False)
    labels = assistant_labels(ids, header, tokenizer.convert_tokens_to_ids(END))
    encoded = Encoded(ids, labels)
    if not encoded.trained_tokens:
        raise ValueError("messages must contain an assistant reply to learn from, got none")
    return encoded


def pad_batch(examples: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad a list of examples on the right to the longest of them (dynamic padding): ``input_ids``,
    ``attention_mask`` (0 on padding) and ``labels`` (``IGNORE`` on padding), each (B, T)."""
    if not examples:
        raise ValueError("examples must be a non-empty list, got an empty one")
    longest = max(len(e.input_ids) for e in examples)
    pad = [longest - len(e.input_ids) for e in examples]
    return {
        "input_ids": torch.tensor([e.input_ids + [pad_id] * p for e, p in zip(examples, pad)]),
        "attention_mask": torch.tensor([[1] * len(e.input_ids) + [0] * p for e, p in zip(examples, pad)]),
        "labels": torch.tensor([e.labels + [IGNORE] * p for e, p in zip(examples, pad)]),
    }


def batches(examples: Sequence[Encoded], batch_size: int, pad_id: int, seed: int = 0,
            shuffle: bool = True) -> Iterator[dict[str, torch.Tensor]]:
    """Endless padded batches: each epoch in a new seeded order (or in order when not ``shuffle``,
    one pass); examples of similar length are not grouped, so padding is what a plain loader pays."""
    batch_size = require_int("batch_size", batch_size)
    if not examples:
        raise ValueError("examples must be a non-empty list of Encoded conversations, got an empty one")
    rng = random.Random(seed)
    while True:
        order = list(range(len(examples)))
        if shuffle:
            rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            yield pad_batch([examples[i] for i in order[start:start + batch_size]], pad_id)
        if not shuffle:
            return


def scored_logits(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The logits (N, vocab) at the N positions whose next token is labelled, those labels (N,),
    and the row each comes from (N,): logits at position t predict the label at t + 1. With the
    course's Llama the output layer runs on those positions only (an answer is a tenth of a
    conversation, and SmolLM2's 49,152-word output layer is a fifth of its work per token); a
    ``transformers`` causal LM computes every position and the rest are dropped."""
    device = next(model.parameters()).device
    input_ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    labels = batch["labels"].to(device)[:, 1:]
    keep = labels != IGNORE
    if hasattr(model, "hidden_states") and hasattr(model, "lm_head"):
        logits = model.lm_head(model.hidden_states(input_ids, attention_mask=mask)[:, :-1][keep])
    else:
        output = model(input_ids, attention_mask=mask)
        logits = getattr(output, "logits", output)[:, :-1][keep]
    return logits, labels[keep], keep.nonzero()[:, 0]


def token_losses(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """The summed cross-entropy of a batch's labelled tokens and how many there are. Works with the
    course's Llama and with a ``transformers`` causal LM (whose output carries ``.logits``)."""
    logits, targets, _ = scored_logits(model, batch)
    return F.cross_entropy(logits.float(), targets, reduction="sum"), int(targets.numel())


@torch.no_grad()
def evaluate_loss(model: nn.Module, data: Sequence[Encoded], pad_id: int, batch_size: int = 16) -> float:
    """Mean cross-entropy per labelled token over ``data`` (no gradients, model in eval mode)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in batches(data, batch_size, pad_id, shuffle=False):
        loss, n = token_losses(model, batch)
        total, count = total + float(loss), count + n
    model.train(was_training)
    return total / count


def accumulate_gradients(model: nn.Module, micro_batches: Sequence[Mapping[str, torch.Tensor]]) -> tuple[float, int]:
    """Backward through each micro-batch in turn, its summed loss divided by the labelled tokens of
    *all* of them: the gradients add up to those of one batch holding every example. Returns the
    mean loss per token and the token count."""
    total = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in micro_batches)
    if total == 0:
        raise ValueError("micro_batches have no labelled token to learn from")
    summed = 0.0
    for batch in micro_batches:
        loss, _ = token_losses(model, batch)
        (loss / total).backward()
        summed += loss.item()
    return summed / total, total


@dataclass
class SFTHistory:
    """Per optimizer step: the mean loss per labelled token, the tokens it was taken over, the
    learning rate."""

    loss: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)


def train_sft(model: nn.Module, data: Sequence[Encoded], pad_id: int, steps: int, batch_size: int = 8,
              accumulation: int = 1, lr: float = 1e-3, warmup: int = 0, seed: int = 0,
              weight_decay: float = 0.0, max_grad_norm: float = 1.0, progress: bool | None = None) -> SFTHistory:
    """Train the model's trainable parameters (e.g. LoRA's) for ``steps`` optimizer steps of
    ``accumulation`` micro-batches each, with AdamW, linear warm-up then cosine decay, and gradient
    clipping. Each micro-batch's summed loss is divided by the labelled tokens of the whole
    accumulated batch, so accumulation changes memory, not the gradient."""
    from tqdm.auto import tqdm

    steps, accumulation = require_int("steps", steps), require_int("accumulation", accumulation)
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError("the model has no trainable parameters (inject LoRA or unfreeze something first)")
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)

    def schedule(step: int) -> float:
        if step < warmup:  # from 0 up to lr, as transformers' schedulers do
            return step / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    stream = batches(data, batch_size, pad_id, seed=seed)
    history = SFTHistory()
    model.train()
    if progress is None:  # a bar unless headless, so executed notebooks do not store one
        from course_lib.runtime import headless

        progress = not headless()
    bar = tqdm(range(steps), desc="SFT", disable=not progress, leave=False)
    for _ in bar:
        mean_loss, total = accumulate_gradients(model, [next(stream) for _ in range(accumulation)])
        torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
        history.lr.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        history.loss.append(mean_loss)
        history.tokens.append(total)
        bar.set_postfix(loss=f"{history.loss[-1]:.3f}")
    model.eval()
    return history


def show_label_mask(tokenizer, encoded: Encoded) -> object:
    """The example's tokens in a row, those the loss is taken on highlighted (an HTML object for
    JupyterLab; its plain-text form marks them with ⟦ ⟧), so the mask can be checked by eye."""
    import html

    from IPython.display import HTML

    pieces, plain = [], []
    for token, label in zip(encoded.input_ids, encoded.labels):
        text = tokenizer.decode([token])
        shown = html.escape(text).replace("\n", "↵")
        style = "background:#b7e4c7;font-weight:bold" if label != IGNORE else "color:#777"
        pieces.append(f'<span style="{style};border:1px solid #ddd;margin:1px;padding:0 2px">{shown}</span>')
        plain.append(f"⟦{text}⟧" if label != IGNORE else text)

    class LabelMask(HTML):
        def __repr__(self) -> str:
            return "".join(plain)

    return LabelMask('<div style="font-family:monospace;line-height:1.9">' + "".join(pieces) + "</div>")


def save_merged(model: nn.Module, folder, base_folder) -> int:
    """Write a model whose LoRA layers were merged (``lora.unload_lora``) as a ``from_pretrained``
    folder: the base folder's config and tokenizer files, and the weights under ``transformers``'
    names (``model.`` prefix; the output layer left out when it is the tied embedding). Returns the
    bytes of the weights file."""
    import json
    import shutil
    from pathlib import Path

    from safetensors.torch import save_file

    from course_lib.lora import lora_layers

    if lora_layers(model):
        raise ValueError("model still has LoRA layers: merge them first with course_lib.lora.unload_lora")
    folder, base_folder = Path(folder), Path(base_folder)
    folder.mkdir(parents=True, exist_ok=True)
    for item in base_folder.iterdir():  # config and tokenizer files; the weights are written below
        if item.is_file() and not item.name.endswith((".safetensors", ".safetensors.index.json", ".bin")):
            shutil.copy2(item, folder / item.name)
    config = json.loads((folder / "config.json").read_text())
    config.pop("torch_dtype", None)
    config["dtype"] = str(model.embed_tokens.weight.dtype).removeprefix("torch.")  # what the weights now are
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tied = model.lm_head.weight is model.embed_tokens.weight
    state = {("" if name == "lm_head.weight" else "model.") + name: t.detach().contiguous()
             for name, t in model.state_dict().items()
             if not (tied and name == "lm_head.weight") and not name.startswith("rotary.")}
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    return (folder / "model.safetensors").stat().st_size


def trl_sft(examples: Sequence, model_name: str, steps: int, batch_size: int = 8, accumulation: int = 1,
            lr: float = 1e-3, warmup: int = 0,
            r: int = 8, alpha: float = 16.0, target_modules: Sequence[str] = (), seed: int = 0) -> list[float]:
    """The library route on the same data: ``trl``'s ``SFTTrainer`` with a ``peft`` LoRA of the same
    rank, targets and schedule, trained on prompt–completion conversations (its
    ``completion_only_loss`` masks the prompt, as :func:`assistant_labels` does). Returns its loss at
    every step, for overlaying on ours. ``examples`` are ``course_lib.instructions.Example``s."""
    import tempfile
    import warnings

    from datasets import Dataset
    from peft import LoraConfig
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from course_lib.runtime import progress_bars_hidden_when_headless
    from course_lib.smollm import load_hf_model, load_tokenizer

    rows = [{"prompt": e.messages(with_answer=False), "completion": [{"role": "assistant", "content": e.answer}]}
            for e in examples]
    with tempfile.TemporaryDirectory() as output, progress_bars_hidden_when_headless():
        config = SFTConfig(output_dir=output, max_steps=require_int("steps", steps), per_device_train_batch_size=batch_size,
                           gradient_accumulation_steps=require_int("accumulation", accumulation),
                           learning_rate=lr, lr_scheduler_type="cosine", warmup_steps=warmup, weight_decay=0.0,
                           max_grad_norm=1.0, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
                           completion_only_loss=True, activation_checkpointing=False, seed=seed, disable_tqdm=True)
        lora_config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(target_modules),
                                 task_type="CAUSAL_LM")
        with warnings.catch_warnings():  # peft 0.21 reads transformers' renamed is_gradient_checkpointing
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            trainer = SFTTrainer(model=load_hf_model(model_name).train(), args=config,
                                 train_dataset=Dataset.from_list(rows), processing_class=load_tokenizer(model_name),
                                 peft_config=lora_config)
        trainer.remove_callback(PrinterCallback)  # it prints every step's log dict
        trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
