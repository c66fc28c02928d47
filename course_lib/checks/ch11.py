"""Checks of chapter 11 (scaling)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.checks.verdict import (
    UNREADABLE,
    Check,
    CheckFailed,
    call,
    expect_fields,
    expect_number,
    expect_tensor,
    expect_unchanged,
    generator,
    seeded,
)
from course_lib.plain import type_name


def _accumulation_model(weights: dict | None = None, seed: int = 0) -> nn.Sequential:
    """The small classifier of 11.1: built without touching the caller's random state, from
    ``seed`` or, when given, from the shipped ``weights``."""
    model = seeded(seed, lambda: nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)))
    if weights is not None:
        model.load_state_dict(weights)
    return model


class AccumulateGradients(Check):
    """``accumulate_gradients(model, x, y, micro_batches)``: leaves in every parameter's ``.grad`` the
    gradient of the mean cross-entropy over the whole batch, computed ``micro_batches`` pieces at a
    time (``x.split`` into pieces of ``ceil(len(x) / micro_batches)``, the last maybe smaller). The
    probe rebuilds the model from the shipped weights, sets every ``.grad`` to 7.0 (stale gradients
    of an earlier step, which must not survive), calls the learner and returns the gradients.
    Catches: weighting every piece 1 / pieces (wrong with a smaller last piece), summing the
    pieces' means unscaled, not clearing the stale gradients, changing x or y in place."""

    exercise = "11.1"

    def cases(self) -> list:
        g = generator(112)
        cases = []
        for batch, micro in ((8, 1), (8, 4), (10, 3), (7, 7)):
            weights = {name: t.clone() for name, t in _accumulation_model(seed=batch).state_dict().items()}
            x, y = torch.randn(batch, 5, generator=g), torch.randint(0, 3, (batch,), generator=g)
            cases.append({"weights": weights, "x": x, "y": y, "micro_batches": micro})
        return cases

    def probe(self, accumulate_gradients, case):
        model = _accumulation_model(case["weights"])
        for p in model.parameters():
            p.grad = torch.full_like(p, 7.0)
        names = dict(model.named_parameters())
        result = call(accumulate_gradients, model, case["x"], case["y"], case["micro_batches"])
        result["grads"] = {name: p.grad for name, p in names.items()}
        return result

    def judge(self, case, got):
        x, y, micro = case["x"], case["y"], case["micro_batches"]
        expect_unchanged((None, x, y, micro), got)
        described = f"batch {len(x)} in {micro} micro-batches"
        reference = _accumulation_model(case["weights"])
        F.cross_entropy(reference(x), y).backward()
        grads = got.get("grads")
        names = [name for name, _ in reference.named_parameters()]
        if type(grads) is not dict or set(grads) != set(names):
            raise CheckFailed(UNREADABLE)
        for name, r in reference.named_parameters():
            if grads[name] is None:
                raise CheckFailed(f"{described}: {name}.grad is None")
            expect_tensor(grads[name], r.grad, f"{described}: {name}.grad", atol=1e-6, rtol=1e-5)


class TrainingStateBytes(Check):
    """``training_state_bytes(parameters, precision, optimizer)``: bytes of weights + gradients +
    optimizer state for ``precision`` in float32 / bfloat16 / mixed and ``optimizer`` in adamw /
    sgd_momentum / sgd, as ``course_lib.memory.bytes_per_parameter`` counts them. A case is one
    parameter count with every (precision, optimizer) pair; the probe returns the learner's values
    in that order. Catches: mixed precision without the fp32 master copy, one AdamW state instead
    of two, 16 bytes per parameter whatever the set-up."""

    exercise = "11.2"

    def cases(self) -> list:
        from course_lib.memory import OPTIMIZERS, PRECISIONS

        pairs = [(precision, optimizer) for precision in PRECISIONS for optimizer in OPTIMIZERS]
        return [(parameters, pairs) for parameters in (1, 1000, 7_000_000_000)]

    def probe(self, training_state_bytes, case):
        parameters, pairs = case
        return [training_state_bytes(parameters, precision, optimizer) for precision, optimizer in pairs]

    def judge(self, case, got):
        from course_lib.memory import bytes_per_parameter

        parameters, pairs = case
        if type(got) is not list or len(got) != len(pairs):
            raise CheckFailed(UNREADABLE)
        for (precision, optimizer), value in zip(pairs, got):
            expected = parameters * sum(bytes_per_parameter(precision, optimizer).values())
            expect_number(value, expected, f"{parameters:,} parameters, {precision}, {optimizer}", atol=0.5)


class RankIndices(Check):
    """``rank_indices(n, rank, world_size)``: the sample indices rank ``rank`` of ``world_size`` reads
    from a data set of ``n`` (no shuffling): the indices 0..n-1, extended by repeating them from the
    start until the count divides evenly, then every ``world_size``-th from ``rank`` (as
    ``torch.utils.data.DistributedSampler(shuffle=False)``). Catches: no padding (ranks of unequal
    length), contiguous blocks instead of a stride."""

    exercise = "11.3"

    def cases(self) -> list:
        return [(n, rank, world) for n, world in ((8, 2), (10, 4), (3, 4), (1, 2), (12, 3)) for rank in range(world)]

    def probe(self, rank_indices, case):
        return rank_indices(*case)

    def judge(self, case, got):
        from torch.utils.data import DistributedSampler

        n, rank, world = case
        described = f"n={n}, rank {rank} of {world}"
        expected = list(DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=False))
        if isinstance(got, torch.Tensor) and got.dim() == 1 and got.numel() <= 4 * n:
            got = got.tolist()
        if not isinstance(got, list):
            raise CheckFailed(f"{described}: expected a list, got {type_name(got)}")
        got = [i.item() if isinstance(i, torch.Tensor) and i.numel() == 1 else i for i in got[: 4 * n + 1]]
        if not (all(type(i) in (int, float) for i in got) and got == expected):
            shown = got if len(got) <= 2 * len(expected) + 2 else f"a list of {len(got)}"
            raise CheckFailed(f"{described}: got {shown}, expected {expected}")


def _ddp_model() -> nn.Module:
    return seeded(114, lambda: nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)))


def _one_big_batch(x: torch.Tensor, y: torch.Tensor, lr: float, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """One SGD step on the whole batch: what data parallelism must reproduce (``scale`` makes mistakes)."""
    model = _ddp_model()
    F.cross_entropy(model(x), y).backward()
    with torch.no_grad():
        return {n: p - lr * scale * p.grad for n, p in model.named_parameters()}


class DataParallelStep(Check):
    """``data_parallel_step(model, x, y, world_size, lr)``: ``world_size`` replicas (deep copies) of
    ``model``, each computes the mean cross-entropy gradient on its equal shard of the batch; the
    gradients are averaged across replicas (the all-reduce), then every replica takes the same SGD
    step; returns the replicas. They must be identical and equal to one step on the whole batch.
    Catches: gradients summed instead of averaged, no all-reduce (each replica steps on its own
    shard), one shared model instead of copies, the input model changed."""

    exercise = "11.4"

    def cases(self) -> list:
        g = generator(114)
        return [[torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g), world, 0.5]
                for n, world in ((8, 2), (12, 4), (6, 1))]

    def probe(self, data_parallel_step, case):
        x, y, world, lr = case
        model = _ddp_model()
        replicas = data_parallel_step(model, x, y, world, lr)
        return {"replicas": [{n: p.detach().clone() for n, p in r.named_parameters()} for r in replicas],
                "original": {n: p.detach().clone() for n, p in model.named_parameters()}}

    def judge(self, case, got):
        x, y, world, lr = case
        replicas, original = expect_fields(got, "replicas", "original")
        name = f"a batch of {len(x)} on {world} replica{'s' if world > 1 else ''}"
        expected = _one_big_batch(x, y, lr)
        if type(replicas) is not list or len(replicas) != world:
            raise CheckFailed(f"{name}: expected a list of {world} replicas, got "
                              f"{len(replicas) if type(replicas) is list else type_name(replicas)}")
        for rank, params in enumerate(replicas):
            if type(params) is not dict or set(params) != set(expected):
                raise CheckFailed(UNREADABLE)
            for key, value in expected.items():
                mistakes = {} if world == 1 else {
                    f"the gradients are summed over the {world} replicas (or one model serves every rank); the "
                    "all-reduce must average them": _one_big_batch(x, y, lr, scale=world)[key],
                    f"replica {rank} steps on its own shard's gradient only; average the gradients across the "
                    "replicas (the all-reduce) before the step":
                        _one_big_batch(x.chunk(world)[rank], y.chunk(world)[rank], lr)[key]}
                expect_tensor(params[key], value, f"{name}: replica {rank}'s {key} after the step (one step on the "
                              "whole batch gives the reference)", atol=1e-6, rtol=1e-5, mistakes=mistakes)
        start = dict(_ddp_model().named_parameters())
        if type(original) is not dict or set(original) != set(start):
            raise CheckFailed(UNREADABLE)
        for key, value in start.items():
            expect_tensor(original[key], value.detach(), f"{name}: the model passed in ({key}) must stay unchanged; "
                          "train deep copies (copy.deepcopy)", atol=0, rtol=0)


CHECKS = {c.exercise: c for c in (AccumulateGradients(), TrainingStateBytes(), RankIndices(), DataParallelStep())}
