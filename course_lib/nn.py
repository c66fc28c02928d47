"""Neural-network building blocks written from their formulas: activations, a linear layer and
the losses, each numerically stable where the naive formula is not.

Each function mirrors a PyTorch one (``torch.relu``, ``F.gelu``, ``torch.sigmoid``, ``torch.tanh``,
``torch.softmax``, ``torch.log_softmax``, ``nn.Linear``, ``F.cross_entropy``, ``F.mse_loss``) and
is tested against it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from course_lib.arguments import require_int


def _check_tensor(name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def _check_dim(name: str, x: torch.Tensor, dim: int) -> int:
    if not -x.ndim <= dim < max(x.ndim, 1):
        raise ValueError(f"dim must be in [{-x.ndim}, {x.ndim - 1}] for {name} of shape {tuple(x.shape)}, got {dim}")
    return dim


def relu(x: torch.Tensor) -> torch.Tensor:
    """max(x, 0)."""
    return torch.clamp(_check_tensor("x", x), min=0)


def gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """x·Φ(x), Φ the standard normal CDF (``"none"``, via erf) or its tanh approximation
    (``"tanh"``, used by GPT-2 and the original BERT code)."""
    _check_tensor("x", x)
    if approximate == "none":
        return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
    if approximate == "tanh":
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    """1 / (1 + e^-x), computed so that e^-x is never taken of a large negative x (which would
    overflow): for x < 0 the equal form e^x / (1 + e^x) is used."""
    _check_tensor("x", x)
    # e^-|x|, in (0, 1]: cannot overflow. -|x| is written as a where, not x.abs(), so that its
    # gradient at 0 is -1 rather than abs's 0 (which would make the slope at 0 come out 0, not 1/4)
    e = torch.exp(torch.where(x >= 0, -x, x))
    return torch.where(x >= 0, 1 / (1 + e), e / (1 + e))


def tanh(x: torch.Tensor) -> torch.Tensor:
    """(e^x - e^-x) / (e^x + e^-x), written as ±(1 - e^-2|x|) / (1 + e^-2|x|) (the sign of x) so
    that no exponential overflows."""
    _check_tensor("x", x)
    e = torch.exp(2 * torch.where(x >= 0, -x, x))  # e^-2|x|, with the slope at 0 kept (see sigmoid)
    t = (1 - e) / (1 + e)
    return torch.where(x >= 0, t, -t)


def logsumexp(x: torch.Tensor, dim: int = -1, keepdim: bool = False) -> torch.Tensor:
    """log Σ e^x along ``dim``, shifted by the maximum so the exponentials stay ≤ 1.
    A slice that is all -inf gives -inf (as ``torch.logsumexp``)."""
    _check_dim("x", _check_tensor("x", x), dim)
    m = x.amax(dim=dim, keepdim=True)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)  # keep -inf - -inf from making NaN
    out = m + torch.log(torch.exp(x - m).sum(dim=dim, keepdim=True))
    return out if keepdim else out.squeeze(dim)


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """e^x / Σ e^x along ``dim``, computed as e^(x - max) / Σ e^(x - max): the same value, but
    no exponential can overflow."""
    _check_dim("x", _check_tensor("x", x), dim)
    e = torch.exp(x - x.amax(dim=dim, keepdim=True))
    return e / e.sum(dim=dim, keepdim=True)


def log_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """log softmax(x) = x - logsumexp(x): exact for large logits, where log(softmax(x)) gives -inf."""
    return x - logsumexp(x, dim=dim, keepdim=True)


class Linear(nn.Module):
    """y = x Wᵀ + b, with W of shape (out_features, in_features), initialised as ``nn.Linear``:
    uniform in ±1/√in_features, so the output's scale does not grow with the input width."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        in_features, out_features = require_int("in_features", in_features), require_int("out_features", out_features)
        self.in_features, self.out_features = in_features, out_features
        bound = 1 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(out_features, in_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(
                f"x must have last dimension in_features={self.in_features}, got shape {tuple(x.shape)}"
            )
        y = x @ self.weight.T
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def _check_classification(logits: torch.Tensor, targets: torch.Tensor) -> None:
    _check_tensor("logits", logits)
    _check_tensor("targets", targets)
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (N, C), got {tuple(logits.shape)}")
    if targets.shape != logits.shape[:1]:
        raise ValueError(f"targets must have shape ({logits.shape[0]},) to match logits {tuple(logits.shape)}, got {tuple(targets.shape)}")
    if targets.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"targets must hold integer class indices, got dtype {targets.dtype}")


def cross_entropy_naive(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """L = −(1/N) Σᵢ Σⱼ yᵢⱼ log ŷᵢⱼ exactly as written: ŷ = e^z / Σ e^z, y one-hot.

    For teaching only: e^z overflows to inf for logits above ~88 (float32), and the loss becomes
    NaN; :func:`cross_entropy` computes the same quantity stably.
    """
    _check_classification(logits, targets)
    probs = torch.exp(logits) / torch.exp(logits).sum(dim=1, keepdim=True)
    y = torch.nn.functional.one_hot(targets.long(), logits.shape[1]).to(logits.dtype)
    return -(y * torch.log(probs)).sum() / logits.shape[0]


def cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy from logits in the log-sum-exp form, as ``F.cross_entropy`` defines it.

    - ``ignore_index``: targets equal to it (padding) add nothing and are not counted in the mean;
      if every target is ignored the mean is 0/0 = NaN, as in PyTorch.
    - ``label_smoothing`` ε: the target distribution is (1−ε)·one-hot + ε/C, so the model is not
      pushed towards infinitely confident logits.
    - ``reduction``: ``"mean"`` over the counted targets, ``"sum"``, or ``"none"`` (per sample).
    """
    _check_classification(logits, targets)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    keep = targets != ignore_index
    n_classes = logits.shape[1]
    bad = keep & ((targets < 0) | (targets >= n_classes))
    if bad.any():
        raise ValueError(f"targets must be in [0, {n_classes - 1}] or ignore_index={ignore_index}")
    log_probs = log_softmax(logits, dim=1)
    safe = torch.where(keep, targets, 0).long()
    nll = -log_probs.gather(1, safe[:, None]).squeeze(1)
    loss = (1 - label_smoothing) * nll - label_smoothing * log_probs.mean(dim=1)
    loss = torch.where(keep, loss, torch.zeros_like(loss))
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / keep.sum()


def mse_loss(prediction: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Mean squared error (1/N) Σ (prediction − target)². Shapes must match exactly: broadcasting
    (N, 1) against (N,) silently gives an (N, N) loss, a classic bug, so it is an error here."""
    _check_tensor("prediction", prediction)
    _check_tensor("target", target)
    if prediction.shape != target.shape:
        raise ValueError(
            f"prediction and target must have the same shape, got {tuple(prediction.shape)} and {tuple(target.shape)}"
        )
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    squared = (prediction - target) ** 2
    return {"mean": squared.mean, "sum": squared.sum, "none": lambda: squared}[reduction]()
