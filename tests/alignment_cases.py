"""Solutions and plausible wrong answers of chapter 13's exercises (SFT labels, sequence
log-probabilities, the DPO loss), written apart from the notebook's and course_lib's code;
``test_grading`` runs them with the other exercises'. Each entry: exercise id -> (check, solution,
[(wrong answer, expected part of its message)], untouched stub)."""

import torch
import torch.nn.functional as F

from course_lib import grading


def _stub(*args, **kwargs):
    raise NotImplementedError("Exercise")


# ----------------------------------------------------------------------------------------------
# 13.1: assistant_labels, written as a small state machine (not the notebook's scan)


def _labels(ids, header, end_id, mistake=None):
    labels, inside, seen = [], False, 0
    n = len(header)
    for i, token in enumerate(ids):
        if inside:
            labels.append(token if not (mistake == "no end" and token == end_id) else -100)
            if token == end_id:
                inside = False
                if mistake == "first only":
                    seen = 10**9  # never open again
            continue
        labels.append(-100)
        if seen < 10**9 and i + 1 >= n and list(ids[i + 1 - n:i + 1]) == list(header):
            inside = True
            if mistake == "header":
                labels[-1] = token
    if mistake == "newline":
        labels = [t if lab == -100 and i > 0 and ids[i - 1] == end_id and labels[i - 1] != -100 else lab
                  for i, (t, lab) in enumerate(zip(ids, labels))]
    if mistake == "shifted":
        labels = labels[1:] + [-100]
    if mistake == "zeros":
        labels = [0 if lab == -100 else lab for lab in labels]
    return labels


def _labels_tensor(ids, header, end_id):
    return torch.tensor(_labels(ids, header, end_id))


def _labels_in_place(ids, header, end_id):
    labels = _labels(ids, header, end_id)
    ids[:] = labels
    return labels


# ----------------------------------------------------------------------------------------------
# 13.2: sequence_logprob


def _logprob(logits, labels, mistake=None):
    if mistake == "no shift":
        shifted_logits, targets = logits, labels
    elif mistake == "wrong shift":
        shifted_logits, targets = logits[:, 1:], labels[:, :-1]
    else:
        shifted_logits, targets = logits[:, :-1], labels[:, 1:]
    scored = targets != -100
    logp = (shifted_logits if mistake == "low precision" else shifted_logits.float()).log_softmax(-1).float()
    if mistake == "probabilities":
        logp = logp.exp()
    picked = torch.where(scored, targets, torch.zeros_like(targets))
    per_token = logp.gather(2, picked[..., None])[..., 0]
    if mistake == "ignored counted":
        return per_token.sum(-1)
    total = torch.where(scored, per_token, torch.zeros_like(per_token)).sum(-1)
    return total / scored.sum(-1) if mistake == "mean" else total


# ----------------------------------------------------------------------------------------------
# 13.3: dpo_loss


def _dpo(pc, pr, rc, rr, beta, mistake=None):
    chosen, rejected = pc - rc, pr - rr
    if mistake == "no reference":
        chosen, rejected = pc, pr
    z = (chosen - rejected) * (1.0 if mistake == "no beta" else beta)
    if mistake == "sign":
        z = -z
    if mistake == "no log":
        return -torch.sigmoid(z).mean()
    losses = torch.log1p(torch.exp(-z))  # -log σ(z), written another way
    return losses.sum() if mistake == "sum" else losses.mean()


CH13 = {
    "13.1": (
        grading.check_assistant_labels,
        _labels,
        [(lambda i, h, e: _labels(i, h, e, "header"), "the last token of the header (the newline after 'assistant') "
                                                      "is labelled"),
         (lambda i, h, e: _labels(i, h, e, "no end"), "the end token is not labelled"),
         (lambda i, h, e: _labels(i, h, e, "newline"), "the newline after the end token is labelled"),
         (lambda i, h, e: _labels(i, h, e, "first only"), "only the first reply is labelled"),
         (lambda i, h, e: _labels(i, h, e, "shifted"), "the labels are shifted by one"),
         (lambda i, h, e: _labels(i, h, e, "zeros"), "must be -100 (cross_entropy's ignore_index), not 0"),
         (_labels_tensor, "expected a list of ints, got a tensor"),
         (_labels_in_place, "ids was changed in place")],
        _stub,
    ),
    "13.2": (
        grading.check_sequence_logprob,
        _logprob,
        [(lambda lo, la: _logprob(lo, la, "no shift"), "the logits are not shifted"),
         (lambda lo, la: _logprob(lo, la, "wrong shift"), "the shift goes the wrong way"),
         (lambda lo, la: _logprob(lo, la, "probabilities"), "probabilities are summed instead of log-probabilities"),
         (lambda lo, la: _logprob(lo, la, "mean"), "the mean over the scored tokens is returned"),
         (lambda lo, la: _logprob(lo, la, "ignored counted"), "the -100 positions are counted too"),
         (lambda lo, la: _logprob(lo, la)[:, None], "output shape (1, 1) ≠ expected (1,)"),
         (lambda lo, la: _logprob(lo, la, "low precision"), "log_softmax runs in bfloat16: convert the logits")],
        _stub,
    ),
    "13.3": (
        grading.check_dpo_loss,
        _dpo,
        [(lambda *a: _dpo(*a, mistake="sign"), "the sign of the margin is flipped"),
         (lambda *a: _dpo(*a, mistake="no reference"), "the reference terms are left out"),
         (lambda *a: _dpo(*a, mistake="no beta"), "β is left out"),
         (lambda *a: _dpo(*a, mistake="sum"), "the losses are summed over the pairs"),
         (lambda *a: _dpo(*a, mistake="no log"), "σ is used without the log"),
         (lambda *a: _dpo(*a).item(), "expected a scalar torch.Tensor, got float"),
         (lambda *a: _dpo(*a).detach(), "the loss carries no gradient"),
         (lambda *a: F.logsigmoid(torch.zeros(len(a[0]))), "expected one number")],
        _stub,
    ),
}
