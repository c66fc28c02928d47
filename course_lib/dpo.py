"""Direct Preference Optimization (Rafailov et al., 2023) written out, as ``trl``'s ``DPOTrainer``
computes it with its default ``loss_type="sigmoid"``.

For a prompt with a preferred (chosen) and a dispreferred (rejected) completion, DPO raises the
policy's log-probability of the chosen completion relative to a frozen reference model, and lowers
the rejected one's: ``loss = -log σ(β · ((π_c - ref_c) - (π_r - ref_r)))``, where each term is the
completion's summed token log-probability. No reward model and no sampling are needed: the
"implicit reward" of a completion is ``β · (π - ref)``. The reference log-probabilities are
computed once before training, so only the policy is in memory while it trains.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from numbers import Integral

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course_lib.arguments import require_int
from course_lib.sft import scored_logits

IGNORE_INDEX = -100  # the label of a position that is not scored (prompt and padding), as in transformers


def sequence_logprobs(logits: Tensor, labels: Tensor, average: bool = False) -> Tensor:
    """The (B,) summed log-probabilities of the scored tokens (labels != -100) under a causal LM's
    ``logits`` (B, T, V); ``labels`` (B, T) are aligned with the input ids, so position t's logits
    score the label at t + 1. ``average`` divides by each row's number of scored tokens.

    Only the scored positions are converted to float32 and normalised, which saves memory when the
    vocabulary is large and prompts are long."""
    if not isinstance(logits, Tensor) or logits.ndim != 3 or not logits.is_floating_point():
        got = f"{logits.dtype} {tuple(logits.shape)}" if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a (B, T, V) float tensor, got {got}")
    if not isinstance(labels, Tensor) or labels.is_floating_point() or tuple(labels.shape) != tuple(logits.shape[:2]):
        got = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must be an integer tensor of shape (B, T) = {tuple(logits.shape[:2])}, got {got}")
    targets = labels[:, 1:]  # the token each position predicts: the next one
    scored = targets != IGNORE_INDEX
    counts = scored.sum(dim=1)
    if (counts == 0).any():
        row = int((counts == 0).nonzero()[0])
        raise ValueError(f"row {row} of labels scores no token (all -100 after the first position)")
    log_probs = torch.log_softmax(logits[:, :-1][scored].float(), dim=-1)  # (scored tokens, V)
    token_logprobs = log_probs.gather(-1, targets[scored].unsqueeze(-1)).squeeze(-1)
    rows = scored.nonzero()[:, 0]
    sums = torch.zeros(logits.shape[0], device=logits.device).index_add(0, rows, token_logprobs)
    return sums / counts if average else sums


@dataclass
class DPOOutput:
    """The DPO loss of a batch of pairs (mean over pairs) and each pair's implicit rewards
    ``β · (policy - reference)`` for the chosen and the rejected completion (detached, for logging)."""

    loss: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor

    @property
    def margins(self) -> Tensor:
        """How much more the policy prefers each chosen completion than the reference does, in reward units."""
        return self.chosen_rewards - self.rejected_rewards

    @property
    def accuracy(self) -> float:
        """The fraction of pairs whose chosen completion has the higher implicit reward."""
        return (self.chosen_rewards > self.rejected_rewards).float().mean().item()


def dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, reference_chosen: Tensor,
             reference_rejected: Tensor, beta: float = 0.1) -> DPOOutput:
    """``mean(-log σ(β · ((π_c - ref_c) - (π_r - ref_r))))`` over the pairs, from (B,) sequence
    log-probabilities. β sets how far the policy may drift from the reference: a small β lets the
    log-ratios grow large before the loss saturates."""
    inputs = {"policy_chosen": policy_chosen, "policy_rejected": policy_rejected,
              "reference_chosen": reference_chosen, "reference_rejected": reference_rejected}
    for name, value in inputs.items():
        if not isinstance(value, Tensor) or value.ndim != 1 or tuple(value.shape) != tuple(policy_chosen.shape):
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"{name} must be a (B,) tensor shaped like policy_chosen "
                             f"{tuple(policy_chosen.shape)}, got {got}")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta > 0:
        raise ValueError(f"beta must be a number > 0, got {beta!r}")
    chosen_logratios = policy_chosen - reference_chosen
    rejected_logratios = policy_rejected - reference_rejected
    loss = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios)).mean()
    return DPOOutput(loss, beta * chosen_logratios.detach(), beta * rejected_logratios.detach())


def pad_pairs(pairs: Sequence[tuple[list[int], list[int], list[int]]], pad_id: int) -> dict[str, Tensor]:
    """The 2B sequences prompt + chosen (rows 0..B-1) then prompt + rejected (rows B..2B-1), right-padded
    to one length: ``input_ids``, ``attention_mask`` and ``labels`` (the ids, -100 on the prompt and the
    padding). Both halves of every pair then go through the model in one forward, as ``trl`` does."""
    pad_id = require_int("pad_id", pad_id, at_least=0)
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence) or not pairs:
        raise ValueError(f"pairs must be a non-empty sequence of (prompt_ids, chosen_ids, rejected_ids), got {pairs!r}")
    sequences, label_rows = [], []
    for half in (1, 2):  # chosen first, then rejected
        for i, pair in enumerate(pairs):
            if not isinstance(pair, Sequence) or len(pair) != 3 or not all(
                    isinstance(ids, Sequence) and all(isinstance(t, Integral) and not isinstance(t, bool) for t in ids)
                    for ids in pair):
                raise ValueError(f"pairs[{i}] must be (prompt_ids, chosen_ids, rejected_ids), three lists of "
                                 f"token ids, got {pair!r}")
            prompt, completion = list(pair[0]), list(pair[half])
            if not prompt or not completion:
                raise ValueError(f"pairs[{i}] needs a non-empty prompt and non-empty completions (the first "
                                 f"completion token is predicted from the prompt), got {pair!r}")
            sequences.append(prompt + completion)
            label_rows.append([IGNORE_INDEX] * len(prompt) + completion)
    length = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(len(sequences), length, dtype=torch.long)
    labels = torch.full((len(sequences), length), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, row_labels) in enumerate(zip(sequences, label_rows, strict=True)):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        attention_mask[row, :len(ids)] = 1
        labels[row, :len(ids)] = torch.tensor(row_labels)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def pair_logprobs(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """The (B,) summed completion log-probabilities of the chosen and of the rejected completions,
    from one forward of a :func:`pad_pairs` batch. ``model`` is the course's ``Llama`` (which returns
    logits) or a ``transformers`` causal LM (whose output has ``.logits``)."""
    rows_in_batch = batch["input_ids"].shape[0]
    if rows_in_batch % 2:
        raise ValueError(f"batch must hold 2B rows (chosen then rejected), got {rows_in_batch}")
    logits, targets, rows = scored_logits(model, batch)  # what sequence_logprobs computes, on scored positions only
    token_logprobs = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    sums = torch.zeros(rows_in_batch, device=logits.device).index_add(0, rows, token_logprobs)
    chosen, rejected = sums.chunk(2)
    return chosen, rejected


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode (no dropout) inside the block, back in its previous mode after it."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def reference_logprobs(model: nn.Module, batches: Iterable[dict[str, Tensor]]) -> list[tuple[Tensor, Tensor]]:
    """The frozen reference's (chosen, rejected) log-probabilities of every batch, computed once
    before training: the policy starts as a copy of it, so training never needs a second model in memory."""
    with _evaluating(model):
        return [pair_logprobs(model, batch) for batch in batches]


def dpo_step(policy: nn.Module, batch: dict[str, Tensor], reference: tuple[Tensor, Tensor], beta: float) -> DPOOutput:
    """One forward of the policy and the DPO loss against the batch's precomputed reference
    log-probabilities; the caller calls ``loss.backward()`` and steps the optimizer."""
    chosen, rejected = pair_logprobs(policy, batch)
    return dpo_loss(chosen, rejected, reference[0].to(chosen.device), reference[1].to(chosen.device), beta)


@torch.no_grad()
def implicit_reward_accuracy(policy: nn.Module, batches: Iterable[dict[str, Tensor]],
                             references: Sequence[tuple[Tensor, Tensor]], beta: float) -> float:
    """The fraction of pairs, over all ``batches``, whose chosen completion gets the higher implicit
    reward: how often the policy has learned (relative to the reference) which answer is preferred."""
    wins, total = 0, 0
    with _evaluating(policy):
        for batch, reference in zip(batches, references, strict=True):
            out = dpo_step(policy, batch, reference, beta)
            wins += int((out.chosen_rewards > out.rejected_rewards).sum())
            total += out.chosen_rewards.numel()
    return wins / total


@dataclass
class DPOHistory:
    """Per optimizer step: the loss, the mean reward margin and the fraction of pairs ranked right."""

    loss: list[float]
    margin: list[float]
    accuracy: list[float]


def train_dpo(policy: nn.Module, batches: Sequence[dict[str, Tensor]], references: Sequence[tuple[Tensor, Tensor]],
              steps: int, beta: float = 0.1, lr: float = 1e-4, seed: int = 0, max_grad_norm: float = 1.0,
              progress: bool | None = None) -> DPOHistory:
    """Train the policy's trainable parameters (e.g. LoRA's) with the DPO loss for ``steps`` AdamW
    steps, one batch each, visiting the batches in a new seeded order every epoch; the reference
    log-probabilities were computed beforehand by :func:`reference_logprobs`."""
    import random

    from tqdm.auto import tqdm

    steps = require_int("steps", steps)
    if len(batches) != len(references) or not batches:
        raise ValueError(f"batches and references must be non-empty and equally long, got {len(batches)} "
                         f"and {len(references)}")
    parameters = [p for p in policy.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError("the policy has no trainable parameters (inject LoRA or unfreeze something first)")
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    rng, order = random.Random(seed), []
    history = DPOHistory([], [], [])
    policy.train()
    if progress is None:  # a bar unless headless, so executed notebooks do not store one
        from course_lib.runtime import headless

        progress = not headless()
    for _ in tqdm(range(steps), desc="DPO", disable=not progress, leave=False):
        if not order:
            order = list(range(len(batches)))
            rng.shuffle(order)
        i = order.pop()
        out = dpo_step(policy, batches[i], references[i], beta)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        history.loss.append(out.loss.item())
        history.margin.append(float(out.margins.mean()))
        history.accuracy.append(out.accuracy)
    policy.eval()
    return history


@torch.no_grad()
def mean_token_kl(policy: nn.Module, reference: nn.Module, batches: Iterable[dict[str, Tensor]]) -> float:
    """KL(policy ‖ reference) of the next-token distributions, averaged over the scored tokens of
    ``batches`` (``input_ids``, ``attention_mask``, ``labels``): how far tuning moved the model from
    where it started on the same text (0 when they are equal). DPO's β is the price of this drift."""
    total, count = 0.0, 0
    with _evaluating(policy), _evaluating(reference):
        for batch in batches:
            p = F.log_softmax(scored_logits(policy, batch)[0].float(), dim=-1)
            q = F.log_softmax(scored_logits(reference, batch)[0].float(), dim=-1)
            total += float((p.exp() * (p - q)).sum())
            count += p.shape[0]
    return total / count
