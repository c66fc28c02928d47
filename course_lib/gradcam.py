"""Grad-CAM (Selvaraju et al., 2017) written with two hooks: where in the image a CNN found evidence
for a class.

A forward hook keeps a convolutional layer's output A (B, K, h, w) and a tensor hook its gradient
∂y_c/∂A. Each channel's weight is its gradient averaged over positions; the map is
ReLU(Σ_k weight_k · A_k) — positive evidence only — enlarged to the image and scaled to [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def grad_cam(model: nn.Module, layer: nn.Module, images: torch.Tensor,
             targets: torch.Tensor | list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps (B, H, W) in [0, 1] for ``images`` (B, C, H, W), one per image for its class in
    ``targets`` (default: the predicted class), and the logits. The model runs in eval mode; its
    parameters' gradients are left untouched and both hooks are removed afterwards."""
    if not isinstance(layer, nn.Module) or not any(m is layer for m in model.modules()):
        raise ValueError("layer must be one of model's modules (e.g. its last convolution block)")
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"images must be a (B, C, H, W) tensor, got {getattr(images, 'shape', type(images).__name__)}")
    saved: dict[str, torch.Tensor] = {}

    def keep(module, inputs, output):
        saved["activation"] = output
        output.register_hook(lambda grad: saved.__setitem__("gradient", grad))
        return output.clone()  # the next layer may work in place (ReLU(inplace=True)): keep A as it was

    handle = layer.register_forward_hook(keep)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            x = images.detach().requires_grad_(True)  # so the graph exists even when the weights are frozen
            logits = model(x)
            if targets is None:
                chosen = logits.argmax(-1)
            else:
                chosen = torch.as_tensor(targets, dtype=torch.long).reshape(-1)
                if chosen.shape[0] != logits.shape[0] or chosen.min() < 0 or chosen.max() >= logits.shape[-1]:
                    raise ValueError(f"targets must hold one class in [0, {logits.shape[-1]}) per image, got "
                                     f"{chosen.tolist()}")
            if "activation" not in saved:
                raise ValueError("layer was not used in the forward pass")
            score = logits.gather(1, chosen[:, None]).sum()
            torch.autograd.grad(score, saved["activation"])  # fires the tensor hook; parameters untouched
    finally:
        handle.remove()
        model.train(was_training)
    activation, gradient = saved["activation"].detach(), saved["gradient"]
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activation).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(dim=1).clamp_min(1e-12)
    return cam / peak[:, None, None], logits.detach()
