"""Unigram and bigram models from counts: the baselines a trained language model must beat. A loss
at the unigram line means the model has learnt only how frequent each token is; below the bigram
line it uses more of the context than the previous token."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from course_lib.arguments import require_int


class NGramCounts:
    """Token and adjacent-pair counts of training sequences (1-D tensors of ids below ``vocab_size``).

    Pairs never cross from one sequence into the next. Pair counts are kept sparse (sorted keys
    ``previous * vocab_size + next``), so a 30,522-token vocabulary costs memory in proportion to the
    pairs seen, not to its square."""

    def __init__(self, sequences: Iterable[torch.Tensor], vocab_size: int) -> None:
        self.vocab_size = require_int("vocab_size", vocab_size)
        sequences = [torch.as_tensor(s).long().flatten() for s in sequences]
        if not sequences or not any(len(s) for s in sequences):
            raise ValueError("sequences must hold at least one token")
        every = torch.cat(sequences)
        if every.min() < 0 or every.max() >= vocab_size:
            raise ValueError(f"token ids must be in [0, {vocab_size}), got {every.min().item()} to {every.max().item()}")
        self.unigram = torch.bincount(every, minlength=vocab_size).double()
        previous = torch.cat([s[:-1] for s in sequences])
        following = torch.cat([s[1:] for s in sequences])
        self.pair_keys, self.pair_counts = torch.unique(previous * vocab_size + following, return_counts=True)
        self.context = torch.bincount(previous, minlength=vocab_size).double()

    def unigram_log_probs(self, alpha: float = 1.0) -> torch.Tensor:
        """log p(token) with add-``alpha`` smoothing, so that an unseen token is not impossible."""
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        counts = self.unigram + alpha
        return (counts / counts.sum()).log()

    def unigram_loss(self, targets: torch.Tensor, alpha: float = 1.0) -> float:
        """Mean negative log-likelihood (nats) of ``targets`` under the unigram model."""
        targets = self._ids("targets", targets)
        return -self.unigram_log_probs(alpha)[targets].mean().item()

    def bigram_loss(self, previous: torch.Tensor, targets: torch.Tensor, weight: float = 0.9, alpha: float = 1.0) -> float:
        """Mean NLL (nats) of each target given the token before it:
        ``p = weight · count(prev, next) / count(prev) + (1 − weight) · p_unigram(next)``; a previous
        token never seen as a context (``[MASK]``, say) leaves the unigram term alone."""
        previous, targets = self._ids("previous", previous), self._ids("targets", targets)
        if previous.shape != targets.shape:
            raise ValueError(f"previous and targets must have the same shape, got {tuple(previous.shape)} and {tuple(targets.shape)}")
        if not 0 <= weight < 1:
            raise ValueError(f"weight must be in [0, 1), got {weight}")
        keys = previous * self.vocab_size + targets
        where = torch.searchsorted(self.pair_keys, keys).clamp(max=len(self.pair_keys) - 1)
        pair = torch.where(self.pair_keys[where] == keys, self.pair_counts[where], 0).double()
        context = self.context[previous]
        unigram = self.unigram_log_probs(alpha).exp()[targets]
        mixed = weight * pair / context.clamp_min(1) + (1 - weight) * unigram
        return -torch.where(context > 0, mixed, unigram).log().mean().item()

    def best_bigram_loss(self, previous: torch.Tensor, targets: torch.Tensor,
                         weights: Sequence[float] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999)) -> tuple[float, float]:
        """(loss, weight): the lowest :meth:`bigram_loss` over ``weights``, chosen on these very
        targets — generous to the baseline, so a model that beats it really does better."""
        return min((self.bigram_loss(previous, targets, w), w) for w in weights)

    def _ids(self, name: str, ids: torch.Tensor) -> torch.Tensor:
        ids = torch.as_tensor(ids).long().flatten().cpu()
        if ids.numel() == 0:
            raise ValueError(f"{name} must not be empty")
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise ValueError(f"{name} must be token ids in [0, {self.vocab_size}), got {ids.min().item()} to {ids.max().item()}")
        return ids
