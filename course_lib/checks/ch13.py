"""Checks of chapter 13 (instruction tuning and DPO).

All three run on small hand-made lists and random tensors; none loads a model. The references they
compare with are written out here, so a learner's code that calls a blocked course_lib function
(``sft.assistant_labels``, ``dpo.sequence_logprobs``, ``dpo.dpo_loss``) gains nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from course_lib.checks.verdict import Check, CheckFailed, expect_unchanged, generator, shape
from course_lib.plain import type_name

IGNORE = -100

# ---------------------------------------------------------------------------------------------
# 13.1 assistant-only labels

HEADER = [1, 7, 8]  # <|im_start|> assistant \n in a toy vocabulary
END = 2  # <|im_end|>
NEWLINE = 9


def _labels(ids: list[int], header: list[int], end_id: int, mistake: str = "") -> list[int]:
    """The reference, and the usual slips when ``mistake`` names one."""
    labels = [IGNORE] * len(ids)
    i = 0
    while i <= len(ids) - len(header):
        if ids[i:i + len(header)] != header:
            i += 1
            continue
        j = i + len(header) - (1 if mistake == "header" else 0)
        while j < len(ids) and ids[j] != end_id:
            labels[j] = ids[j]
            j += 1
        if j < len(ids) and mistake != "no end":
            labels[j] = ids[j]
        if mistake == "newline" and j + 1 < len(ids):
            labels[j + 1] = ids[j + 1]
        if mistake == "first only":
            break
        i = j + 1
    if mistake == "shifted":
        labels = labels[1:] + [IGNORE]
    return labels


class AssistantLabels(Check):
    """``assistant_labels(ids, header, end_id)``: a list as long as ``ids`` with each assistant
    reply's tokens (after every occurrence of ``header``, up to and including the next ``end_id``)
    kept and -100 elsewhere; a reply cut off before its end is kept to the end. Catches: the header's
    last token (the newline) labelled, the end token not labelled, the newline after the end token
    labelled, only the first reply labelled, labels already shifted by one (the model shifts them),
    0 instead of -100, ``ids`` changed in place, a tensor or tuple instead of a list."""

    exercise = "13.1"

    def cases(self) -> list:
        user = [1, 5, 30, 31, END, NEWLINE]
        system = [1, 6, 40, 41, 42, END, NEWLINE]
        return [
            (system + user + HEADER + [20, 21, END, NEWLINE], HEADER, END),
            (user + HEADER + [20, END, NEWLINE] + user + HEADER + [22, 23, 24, END, NEWLINE], HEADER, END),
            (user + [1, 5, 32, END, NEWLINE], HEADER, END),  # no reply at all
            (user + HEADER + [25, 26], HEADER, END),  # a reply cut off before its end
            (user + HEADER + [END, NEWLINE], HEADER, END),  # an empty reply still ends
            ([3, 3] + [50, 51] + [60, 61, 62] + [50, 51] + [61, 60, 62], [50, 51], 62),  # another header and end
        ]

    def probe(self, assistant_labels, case):
        ids, header, end_id = case
        ids_copy = list(ids)
        out = assistant_labels(ids_copy, list(header), end_id)
        if isinstance(out, torch.Tensor):
            out = {"tensor": out.tolist()}
        elif isinstance(out, tuple):
            out = {"tuple": list(out)}
        return {"out": out, "ids": ids_copy}

    def judge(self, case, got):
        ids, header, end_id = case
        name = f"ids {ids}, header {header}, end_id={end_id}"
        if type(got) is not dict or "out" not in got or "ids" not in got:
            raise CheckFailed("the check's results could not be read")
        out, after = got["out"], got["ids"]
        if after != ids:
            raise CheckFailed(f"{name}: ids was changed in place; build a new list of labels")
        if type(out) is dict:
            kind = "a tensor" if "tensor" in out else "a tuple"
            raise CheckFailed(f"{name}: expected a list of ints, got {kind}")
        if type(out) is not list:
            raise CheckFailed(f"{name}: expected a list of ints, got {type_name(out)}")
        if not all(type(v) is int for v in out):
            odd = next(v for v in out if type(v) is not int)
            raise CheckFailed(f"{name}: expected a list of ints, got a list holding {type_name(odd)} (use int(...))")
        expected = _labels(list(ids), list(header), end_id)
        if len(out) != len(ids):
            raise CheckFailed(f"{name}: {len(out)} labels for {len(ids)} tokens; return one label per token")
        if out == expected:
            return
        message = f"{name}: got {out}, expected {expected}"
        hints = {"header": "the last token of the header (the newline after 'assistant') is labelled: start right "
                           "after the whole header",
                 "no end": "the end token is not labelled: the model must learn to stop, so keep end_id too",
                 "newline": "the newline after the end token is labelled: stop at end_id",
                 "first only": "only the first reply is labelled: look for the header again after each reply",
                 "shifted": "the labels are shifted by one: keep them aligned with ids (the loss shifts them)"}
        for mistake, hint in hints.items():
            if out == _labels(list(ids), list(header), end_id, mistake) and out != expected:
                raise CheckFailed(f"{message}; {hint}")
        if out == [0 if v == IGNORE else v for v in expected]:
            raise CheckFailed(f"{message}; positions without a loss must be -100 (cross_entropy's ignore_index), not 0")
        raise CheckFailed(message)


# ---------------------------------------------------------------------------------------------
# 13.2 the log-probability of a sequence


def _logprob(logits: torch.Tensor, labels: torch.Tensor, mistake: str = "") -> torch.Tensor:
    if mistake == "no shift":
        logits, labels = logits, labels
    elif mistake == "wrong shift":
        logits, labels = logits[:, 1:], labels[:, :-1]
    else:
        logits, labels = logits[:, :-1], labels[:, 1:]
    mask = labels != IGNORE
    logp = F.log_softmax(logits if mistake == "low precision" else logits.float(), dim=-1).float()
    if mistake == "probabilities":
        logp = logp.exp()
    per_token = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    if mistake == "ignored counted":
        return per_token.sum(1)
    total = (per_token * mask).sum(1)
    return total / mask.sum(1) if mistake == "mean" else total


class SequenceLogprob(Check):
    """``sequence_logprob(logits, labels)`` -> (B,): the sum of log-softmax(logits at t)[label at
    t + 1] over the positions whose label is not -100. Catches: no shift, the shift the wrong way,
    probabilities instead of log-probabilities, the mean instead of the sum, the -100 positions
    counted (clamped to token 0), inputs changed in place."""

    exercise = "13.2"

    def cases(self) -> list:
        g = generator(131)
        cases = []
        for b, t, v, prompt, dtype in ((1, 5, 7, 2, torch.float32), (2, 6, 11, 3, torch.float32),
                                       (3, 8, 13, 1, torch.float32), (2, 5, 5, 2, torch.float32),
                                       (2, 7, 9, 2, torch.bfloat16)):
            logits = (torch.randn(b, t, v, generator=g) * 2).to(dtype)
            labels = torch.randint(0, v, (b, t), generator=g)
            labels[:, :prompt] = IGNORE
            if b > 1:
                labels[1, -1] = IGNORE  # padding at the end of the second row
            cases.append((logits, labels))
        return cases

    def judge(self, case, got):
        logits, labels = case
        name = f"logits {shape(logits)} {str(logits.dtype).removeprefix('torch.')}, labels {labels.tolist()}"
        out = expect_unchanged(case, got)
        expected = _logprob(logits, labels)
        if not isinstance(out, torch.Tensor):
            raise CheckFailed(f"{name}: expected a torch.Tensor, got {type_name(out)}")
        if out.shape != expected.shape:
            raise CheckFailed(f"{name}: output shape {shape(out)} ≠ expected {shape(expected)} (one number per row)")
        if out.is_floating_point() and torch.allclose(out.float(), expected, atol=1e-4, rtol=1e-4):
            return
        if logits.dtype != torch.float32 and out.is_floating_point() and torch.allclose(
                out.float(), _logprob(logits, labels, "low precision"), atol=1e-4, rtol=1e-4):
            raise CheckFailed(f"{name}: values differ from the reference; they are what you get when log_softmax runs "
                              f"in {str(logits.dtype).removeprefix('torch.')}: convert the logits with .float() first")
        hints = {"no shift": "the logits are not shifted: the logits at position t predict the token at t + 1, so use "
                             "logits[:, :-1] with labels[:, 1:]",
                 "wrong shift": "the shift goes the wrong way: pair logits[:, :-1] with labels[:, 1:]",
                 "probabilities": "probabilities are summed instead of log-probabilities (use log_softmax)",
                 "mean": "the mean over the scored tokens is returned: DPO uses the sum",
                 "ignored counted": "the -100 positions are counted too: multiply by (labels != -100) before summing"}
        for mistake, hint in hints.items():
            wrong = _logprob(logits, labels, mistake)
            if out.is_floating_point() and out.shape == wrong.shape and torch.allclose(out.float(), wrong, atol=1e-4, rtol=1e-4):
                raise CheckFailed(f"{name}: values differ from the reference; they are what you get when {hint}")
        raise CheckFailed(f"{name}: values differ from the reference")


# ---------------------------------------------------------------------------------------------
# 13.3 the DPO loss


def _dpo(pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor, beta: float,
         mistake: str = "") -> torch.Tensor:
    margin = (pc - rc) - (pr - rr) if mistake != "no reference" else pc - pr
    if mistake == "sign":
        margin = -margin
    scaled = margin if mistake == "no beta" else beta * margin
    if mistake == "no log":
        return -torch.sigmoid(scaled).mean()
    losses = -F.logsigmoid(scaled)
    return losses.sum() if mistake == "sum" else losses.mean()


class DpoLoss(Check):
    """``dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta)`` -> the
    mean over pairs of -log σ(β[(π_c - ref_c) - (π_r - ref_r)]), a scalar with gradients flowing to
    the policy's inputs. Catches: the sign flipped, the reference terms left out, β left out, the
    sum instead of the mean, σ without the log, no gradient (a float or a detached tensor), inputs
    changed in place."""

    exercise = "13.3"

    def cases(self) -> list:
        g = generator(133)
        cases = []
        for b, beta in ((4, 0.1), (1, 0.5), (6, 2.0), (3, 0.05)):
            pc, pr = -5 * torch.rand(b, generator=g) - 1, -5 * torch.rand(b, generator=g) - 1
            rc, rr = pc + torch.randn(b, generator=g), pr + torch.randn(b, generator=g)
            cases.append((pc, pr, rc, rr, beta))
        return cases

    def probe(self, dpo_loss, case):
        pc, pr, rc, rr, beta = case
        pc, pr = pc.clone().requires_grad_(True), pr.clone().requires_grad_(True)
        out = dpo_loss(pc, pr, rc, rr, beta)
        grads = None
        if isinstance(out, torch.Tensor) and out.requires_grad and out.numel() == 1:
            grads = list(torch.autograd.grad(out.sum(), [pc, pr], allow_unused=True))
            grads = [g if g is not None else torch.zeros_like(pc) for g in grads]
        return {"out": out.detach() if isinstance(out, torch.Tensor) else out, "grads": grads,
                "args": [pc.detach(), pr.detach(), rc, rr, None]}

    def judge(self, case, got):
        pc, pr, rc, rr, beta = case
        name = f"{pc.numel()} pairs, beta={beta}"
        out = expect_unchanged(case, got)
        if not isinstance(out, torch.Tensor):
            raise CheckFailed(f"{name}: expected a scalar torch.Tensor, got {type_name(out)}")
        if out.numel() != 1:
            raise CheckFailed(f"{name}: expected one number (the mean over the pairs), got shape {shape(out)}")
        expected = _dpo(pc, pr, rc, rr, beta)
        if not torch.allclose(out.float().reshape(()), expected, atol=1e-5, rtol=1e-4):
            hints = {"sign": "the sign of the margin is flipped: the loss must fall as the chosen answer gains",
                     "no reference": "the reference terms are left out: subtract each reference log-probability "
                                     "from the policy's",
                     "no beta": "β is left out: multiply the margin by beta inside the sigmoid",
                     "sum": "the losses are summed over the pairs: take the mean",
                     "no log": "σ is used without the log: the loss is -log σ(…) (F.logsigmoid)"}
            for mistake, hint in hints.items():
                if torch.allclose(out.float().reshape(()), _dpo(pc, pr, rc, rr, beta, mistake), atol=1e-5, rtol=1e-4):
                    raise CheckFailed(f"{name}: the loss differs from the reference; it is what you get when {hint}")
            raise CheckFailed(f"{name}: the loss differs from the reference")
        grads = got.get("grads")
        if type(grads) is not list or len(grads) != 2:
            raise CheckFailed(f"{name}: the loss carries no gradient to the policy's log-probabilities; build it "
                              "from the input tensors with torch operations (no .item(), no detach)")
        leaf_c, leaf_r = pc.clone().requires_grad_(True), pr.clone().requires_grad_(True)
        want = torch.autograd.grad(_dpo(leaf_c, leaf_r, rc, rr, beta), [leaf_c, leaf_r])
        for have, should in zip(grads, want):
            if not isinstance(have, torch.Tensor) or have.shape != should.shape or not torch.allclose(
                    have.float(), should, atol=1e-5, rtol=1e-4):
                raise CheckFailed(f"{name}: the loss is right but its gradient is not; compute it with torch "
                                  "operations on the inputs")


CHECKS = {c.exercise: c for c in (AssistantLabels(), SequenceLogprob(), DpoLoss())}
