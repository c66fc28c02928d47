"""Checks of chapter 03 (neural networks)."""

from __future__ import annotations

import math

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


def _mlp_reference(layers: list, x: torch.Tensor, relu_last: bool = False, relu: bool = True) -> torch.Tensor:
    """The MLP of 3.4 in eval mode from its (weight, bias) pairs: ReLU between layers, not after the last."""
    for i, (weight, bias) in enumerate(layers):
        x = x @ weight.T + bias
        if relu and (i < len(layers) - 1 or relu_last):
            x = torch.relu(x)
    return x


class MLPModule(Check):
    """``MLP(sizes, dropout)``: ``MyLinear`` layers in ``self.layers`` (weight (out, in) and bias drawn
    from U(−1/√in, 1/√in), as ``nn.Linear``), ReLU and dropout between layers, none after the last;
    dropout active in ``train()`` only. Catches: weights from ``torch.randn`` (far too large), weights
    or layers not registered (no parameters), ReLU after the last layer or none at all, dropout left
    on in ``eval()``."""

    exercise = "3.4"

    def cases(self) -> list:
        g = generator(34)
        return [([256, 128, 10], 0.5, torch.randn(6, 256, generator=g)),
                ([3, 5, 2], 0.0, torch.randn(4, 3, generator=g)),
                ([8, 16, 16, 4], 0.3, torch.randn(5, 8, generator=g))]

    def probe(self, mlp_class, case):
        sizes, dropout, x = case
        model = seeded(340, lambda: mlp_class(list(sizes), dropout))
        layers = [(layer.weight.detach().clone(), layer.bias.detach().clone()) for layer in model.layers]
        n_parameters = sum(p.numel() for p in model.parameters())
        model.eval()
        with torch.no_grad():
            evaluated = [model(x), model(x)]
        model.train()
        with torch.no_grad():
            trained = [model(x), model(x)]
        return {"layers": layers, "parameters": n_parameters, "eval": evaluated, "train": trained}

    def judge(self, case, got):
        sizes, dropout, x = case
        layers, n_parameters, evaluated, trained = expect_fields(got, "layers", "parameters", "eval", "train")
        name = f"MLP({list(sizes)}, dropout={dropout})"
        if type(layers) is not list or len(layers) != len(sizes) - 1:
            raise CheckFailed(f"{name}: expected {len(sizes) - 1} layers in self.layers, got "
                              f"{len(layers) if type(layers) is list else type_name(layers)}")
        for (fan_in, fan_out), pair in zip(zip(sizes[:-1], sizes[1:]), layers):
            if type(pair) not in (list, tuple) or len(pair) != 2 or not all(isinstance(t, torch.Tensor) for t in pair):
                raise CheckFailed(UNREADABLE)
            weight, bias = pair
            if tuple(weight.shape) != (fan_out, fan_in) or tuple(bias.shape) != (fan_out,):
                raise CheckFailed(f"{name}: the {fan_in}→{fan_out} layer has weight {tuple(weight.shape)} and bias "
                                  f"{tuple(bias.shape)}; expected ({fan_out}, {fan_in}) and ({fan_out},)")
            bound = 1 / fan_in**0.5
            largest = max(weight.abs().max().item(), bias.abs().max().item())
            if largest > bound * (1 + 1e-6):
                raise CheckFailed(f"{name}: the {fan_in}→{fan_out} layer has a value of size {largest:.3g}; draw weight "
                                  f"and bias from U(-1/√{fan_in}, 1/√{fan_in}) = ±{bound:.3g}, as nn.Linear does")
            if weight.numel() >= 1000 and weight.std().item() < 0.8 * bound / 3**0.5:
                raise CheckFailed(f"{name}: the {fan_in}→{fan_out} layer's weights have std {weight.std().item():.3g}; "
                                  f"uniform on ±{bound:.3g} has std {bound / 3**0.5:.3g}")
        expected_count = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
        expect_number(n_parameters, expected_count, f"{name}: the number of parameters (wrap tensors in nn.Parameter "
                      "and layers in nn.ModuleList so that model.parameters() finds them)", atol=0)
        if type(evaluated) is not list or type(trained) is not list or len(evaluated) != 2 or len(trained) != 2:
            raise CheckFailed(UNREADABLE)
        expected = _mlp_reference(layers, x)
        mistakes = {"a ReLU follows the last layer too (logits must be free to be negative)":
                    _mlp_reference(layers, x, relu_last=True),
                    "no ReLU sits between the layers (the MLP is then one linear map)": _mlp_reference(layers, x, relu=False)}
        for out in evaluated + trained:
            expect_tensor(out, expected, f"{name}", atol=float("inf"), rtol=0)  # type, shape and dtype only
        if not torch.equal(evaluated[0], evaluated[1]):
            raise CheckFailed(f"{name} in eval mode: two calls on the same input gave different outputs; dropout "
                              "must be off in eval() (nn.Dropout does that; F.dropout needs training=self.training)")
        expect_tensor(evaluated[0], expected, f"{name} in eval mode", mistakes=mistakes)
        same = torch.equal(trained[0], trained[1])
        if dropout > 0 and same:
            raise CheckFailed(f"{name} in train mode: two calls gave the same output; dropout must be active in train()")
        if dropout == 0 and not torch.allclose(trained[0], expected, atol=1e-5, rtol=1e-4):
            raise CheckFailed(f"{name}: with dropout=0, train() and eval() must give the same output")


def _epoch_model() -> nn.Module:
    return seeded(350, lambda: nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3)))


def _epoch_reference(case: list, zero: bool = True, weighted: bool = True, eval_mode: bool = True) -> tuple:
    """3.5's epoch on the check's model: (mean training loss, validation accuracy, parameters after)."""
    x, y, x_val, y_val, seed = case
    model = _epoch_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.train()
        total, batch_means = 0.0, []
        for xb, yb in zip(x.split(8), y.split(8)):
            if zero:
                optimizer.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(yb)
            batch_means.append(loss.item())
        if eval_mode:
            model.eval()
        with torch.no_grad():
            correct = sum((model(xb).argmax(1) == yb).sum().item() for xb, yb in zip(x_val.split(8), y_val.split(8)))
    loss = total / len(y) if weighted else sum(batch_means) / len(batch_means)
    return loss, correct / len(y_val), {k: v.detach().clone() for k, v in model.state_dict().items()}


class RunEpoch(Check):
    """``run_epoch(model, train_loader, val_loader, optimizer)``: one pass over the training batches
    (``train()`` mode; zero the gradients, forward, cross-entropy, backward, step), then validation in
    ``eval()`` mode without gradients; returns (mean training loss over samples, validation accuracy).
    Catches: gradients never zeroed, validation with dropout on, the loss averaged over batches
    instead of samples (the last batch is smaller)."""

    exercise = "3.5"

    def cases(self) -> list:
        g = generator(35)
        cases = []
        for n_train, n_val, seed in ((20, 12, 1), (28, 16, 2)):
            x, x_val = torch.randn(n_train, 6, generator=g) * 2, torch.randn(n_val, 6, generator=g) * 2
            w = torch.randn(6, 3, generator=g)
            cases.append([x, (x @ w).argmax(1), x_val, (x_val @ w).argmax(1), seed])
        return cases

    def probe(self, run_epoch, case):
        x, y, x_val, y_val, seed = case
        from torch.utils.data import DataLoader, TensorDataset

        model = _epoch_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        # loaders with their own generators: iterating one then draws nothing from the global
        # generator, so dropout's masks are the reference's
        train_loader = DataLoader(TensorDataset(x, y), batch_size=8, generator=generator(0))
        val_loader = DataLoader(TensorDataset(x_val, y_val), batch_size=8, generator=generator(0))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            result = run_epoch(model, train_loader, val_loader, optimizer)
        return {"result": result, "parameters": {k: v.detach().clone() for k, v in model.state_dict().items()}}

    def judge(self, case, got):
        result, parameters = expect_fields(got, "result", "parameters")
        name = f"{len(case[1])} training samples in batches of 8"
        if type(result) not in (list, tuple) or len(result) != 2:
            raise CheckFailed(f"{name}: expected a tuple (mean training loss, validation accuracy), got {type_name(result)}")
        loss, accuracy, expected = _epoch_reference(case)
        if type(parameters) is not dict or set(parameters) != set(expected):
            raise CheckFailed(UNREADABLE)
        _, _, never_zeroed = _epoch_reference(case, zero=False)
        for key in expected:
            if not (isinstance(parameters[key], torch.Tensor) and parameters[key].shape == expected[key].shape
                    and torch.allclose(parameters[key], expected[key], atol=1e-5, rtol=1e-4)):
                if isinstance(parameters[key], torch.Tensor) and parameters[key].shape == expected[key].shape and \
                        torch.allclose(parameters[key], never_zeroed[key], atol=1e-5, rtol=1e-4):
                    raise CheckFailed(f"{name}: the weights after the epoch are those of a loop that never zeroes the "
                                      "gradients; call optimizer.zero_grad() before each backward()")
                raise CheckFailed(f"{name}: parameter {key} after the epoch differs from the reference (one forward, "
                                  "backward and optimizer.step() per batch, in train() mode, gradients zeroed each step)")
        batch_mean = _epoch_reference(case, weighted=False)[0]
        if isinstance(result[0], (int, float)) and type(result[0]) is not bool and \
                not math.isclose(result[0], loss, rel_tol=1e-5) and math.isclose(result[0], batch_mean, rel_tol=1e-5):
            raise CheckFailed(f"{name}: the training loss is the mean of the batch means; weight each batch's loss "
                              "by its size (the last batch is smaller)")
        expect_number(result[0], loss, f"{name}: the mean training loss", atol=1e-6, rtol=1e-5)
        in_train_mode = _epoch_reference(case, eval_mode=False)[1]
        if isinstance(result[1], (int, float)) and not math.isclose(result[1], accuracy, abs_tol=1e-9) \
                and math.isclose(result[1], in_train_mode, abs_tol=1e-9):
            raise CheckFailed(f"{name}: the validation accuracy is that of the model with dropout on; call "
                              "model.eval() before validating")
        expect_number(result[1], accuracy, f"{name}: the validation accuracy (a fraction in [0, 1], model.eval(), "
                      "no gradients)", atol=1e-9)


CHECKS = {c.exercise: c for c in (StableSoftmax(), CrossEntropy(), TrainStep(), MLPModule(), RunEpoch())}
