"""Checks of chapter 03 (neural networks)."""

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

NEAR_1000 = "logits near ±1000 (subtract the max)"
MINUS_INF = "a logit of -inf (a masked position)"
LARGE_LOGITS = "large logits (use the log-sum-exp form, not log(softmax))"



def _mlp(weights: dict[str, torch.Tensor] | None = None, seed: int = 0) -> nn.Module:
    """3.3's model, 4 -> 8 -> 3 with tanh, its weights from ``seed`` or given as a state dict;
    the caller's random state is left as it was."""
    model = seeded(seed, lambda: nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)))
    if weights is not None:
        model.load_state_dict(weights)
    return model


class StableSoftmax(Check):
    """``stable_softmax(x, dim)`` equals ``torch.softmax(x, dim)``, also for logits like 1000.
    Catches: exp without subtracting the max (inf / inf = NaN), ignoring ``dim``."""

    exercise = "3.1"

    def cases(self) -> list:
        g = generator(31)
        cases = [{"args": (torch.randn(shape, generator=g) * 4, dim), "about": f"x of shape {shape}, dim={dim}"}
                 for shape, dim in (((4, 5), -1), ((3, 6), 0), ((2, 3, 4), 1), ((1,), 0))]
        near_1000 = torch.tensor([[1000.0, 1001.0, 999.0], [-1000.0, -1002.0, -1001.0]])
        minus_inf = torch.tensor([[0.0, float("-inf"), 2.0]])
        return [*cases, {"args": (near_1000, -1), "about": NEAR_1000},
                {"args": (minus_inf, -1), "about": MINUS_INF}]

    def probe(self, stable_softmax, case):
        return call(stable_softmax, *case["args"])

    def judge(self, case, got):
        x, dim = case["args"]
        expect_tensor(expect_unchanged(case["args"], got), torch.softmax(x, dim), case["about"])


class CrossEntropy(Check):
    """``cross_entropy(logits, targets)`` = −(1/N) Σᵢ log softmax(logitsᵢ)[targetᵢ].
    Catches: log(softmax(...)) (log 0 = −inf for large logits), the sum instead of the mean."""

    exercise = "3.2"

    def cases(self) -> list:
        g = generator(32)
        cases = []
        for n, c in ((1, 2), (8, 5), (16, 10)):
            logits = torch.randn(n, c, generator=g) * 3
            targets = torch.randint(0, c, (n,), generator=g)
            cases.append({"args": (logits, targets), "about": f"logits of shape {(n, c)}"})
        large = torch.tensor([[500.0, 0.0, -500.0], [0.0, 800.0, 1.0]])
        return [*cases, {"args": (large, torch.tensor([0, 2])), "about": LARGE_LOGITS}]

    def probe(self, cross_entropy, case):
        return call(cross_entropy, *case["args"])

    def judge(self, case, got):
        logits, targets = case["args"]
        rtol = 1e-5 if case["about"] == LARGE_LOGITS else 1e-4
        expect_tensor(expect_unchanged(case["args"], got), F.cross_entropy(logits, targets), case["about"],
                      atol=1e-5, rtol=rtol)


class TrainStep(Check):
    """``train_step(model, x, y, lr)``: zero the gradients, cross-entropy loss, backward, then
    p -= lr · p.grad for every parameter without recording it; return the loss as a float.
    The probe builds the model from the case's initial weights, gives every parameter a stale
    gradient of ones, runs the step and reports the loss, the parameters afterwards and whether
    each is still a trainable leaf. Catches: not zeroing the stale gradients, p += lr · p.grad,
    no update at all, an update that autograd records."""

    exercise = "3.3"

    def cases(self) -> list:
        g = generator(33)
        cases = []
        for step, lr in enumerate((0.1, 0.5)):
            weights = {name: t.clone() for name, t in _mlp(seed=33 + step).state_dict().items()}
            x, y = torch.randn(6, 4, generator=g), torch.randint(0, 3, (6,), generator=g)
            cases.append({"step": step + 1, "lr": lr, "weights": weights, "x": x, "y": y})
        return cases

    def probe(self, train_step, case):
        model = _mlp(case["weights"])
        for p in model.parameters():  # stale gradients from an earlier step must not leak in
            p.grad = torch.ones_like(p)
        loss = train_step(model, case["x"], case["y"], case["lr"])
        return {
            "loss": loss,
            "parameters": {name: p.detach() for name, p in model.named_parameters()},
            "trainable_leaf": {name: bool(p.requires_grad and p.grad_fn is None)
                               for name, p in model.named_parameters()},
        }

    def judge(self, case, got):
        step, lr = case["step"], case["lr"]
        reference = _mlp(case["weights"])
        optimizer = torch.optim.SGD(reference.parameters(), lr=lr)
        optimizer.zero_grad()
        expected_loss = F.cross_entropy(reference(case["x"]), case["y"])
        expected_loss.backward()
        optimizer.step()
        loss, parameters, trainable_leaf = expect_fields(got, "loss", "parameters", "trainable_leaf")
        if type(parameters) is not dict or type(trainable_leaf) is not dict:
            raise CheckFailed(UNREADABLE)
        expect_number(loss, expected_loss.item(), f"step {step}: the returned loss", atol=1e-6, rtol=1e-5)
        for name, q in reference.named_parameters():
            if trainable_leaf.get(name) is not True:
                raise CheckFailed(f"step {step}: parameter {name} is no longer a trainable leaf; "
                                  "update it under torch.no_grad()")
            expect_tensor(parameters.get(name), q.detach(),
                          f"step {step}, lr={lr}: parameter {name} after the update", atol=1e-6)


CHECKS = {c.exercise: c for c in (StableSoftmax(), CrossEntropy(), TrainStep())}
