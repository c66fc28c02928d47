"""Small image data sets for chapter 14, offline first, and image transforms written with torch.

Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017; MIT licence: 70,000 28×28 grey photos of clothes in 10
classes) is read from the original idx files: Debian's ``dataset-fashion-mnist`` package installs
them under ``/usr/share/datasets/fashion-mnist``; otherwise they are fetched once from the original
site into the data cache (checked by SHA-256); when neither works, scikit-learn's bundled 8×8
digits stand in, enlarged to 28×28, and :attr:`ImageSet.note` says what changed. torchvision cannot
be installed beside this torch (see ``data/README.md``), so loading and transforms are written here.
"""

from __future__ import annotations

import gzip
import http.client
import math
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from course_lib.arguments import require_int
from course_lib.data import cache_dir, sha256

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
ONLINE_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FILES = {  # name -> SHA-256 of the original gzip file
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
SOURCES = ("auto", "debian", "cache", "online", "digits")


@dataclass
class ImageSet:
    """Train and test images as uint8 tensors (N, H, W) with int64 labels; ``source`` says where
    they came from and ``note`` what differs from Fashion-MNIST (empty when nothing does)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]
    source: str
    note: str = ""

    def __str__(self) -> str:
        h, w = self.train_images.shape[1:]
        text = (f"{self.source}: {len(self.train_images):,} train and {len(self.test_images):,} test images, "
                f"{h}×{w}, {len(self.classes)} classes")
        return text + (f" ({self.note})" if self.note else "")


def read_idx(path: Path) -> np.ndarray:
    """An idx file (LeCun's MNIST format, gzipped or not) as an array: big-endian dimension sizes
    after a 4-byte magic number whose third byte is the type (0x08 = uint8) and fourth the rank."""
    raw = gzip.open(path).read() if str(path).endswith(".gz") else Path(path).read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not a uint8 idx file (magic bytes {raw[:4].hex()})")
    rank = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(rank))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * rank)
    if data.size != math.prod(shape):
        raise ValueError(f"{path}: header says {shape} ({math.prod(shape)} values), file holds {data.size}")
    return data.reshape(shape)


def _from_folder(folder: Path, source: str) -> ImageSet:
    arrays = {name: read_idx(folder / name) for name in FILES}
    t = {name: torch.from_numpy(a.copy()) for name, a in arrays.items()}
    return ImageSet(t["train-images-idx3-ubyte.gz"], t["train-labels-idx1-ubyte.gz"].long(),
                    t["t10k-images-idx3-ubyte.gz"], t["t10k-labels-idx1-ubyte.gz"].long(), FASHION_CLASSES, source)


def _complete(folder: Path, check_hashes: bool) -> bool:
    return all((folder / n).is_file() and (not check_hashes or sha256(folder / n) == h) for n, h in FILES.items())


def fetch_fashion_mnist(cache: Path | None = None, url: str = ONLINE_URL, timeout: float = 30.0) -> Path:
    """Download the four original files into ``<cache>/fashion-mnist`` (once), each checked by SHA-256;
    a file whose hash differs is deleted and an error raised."""
    folder = (cache or cache_dir()) / "fashion-mnist"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        for name, expected in FILES.items():
            target = folder / name
            if target.is_file() and sha256(target) == expected:
                continue
            partial = target.with_suffix(".part")
            try:
                with urllib.request.urlopen(url + name, timeout=timeout) as response, open(partial, "wb") as out:
                    out.write(response.read())
                if sha256(partial) != expected:
                    raise ValueError(f"{name} downloaded from {url} has the wrong SHA-256; deleted")
                partial.replace(target)
            finally:
                partial.unlink(missing_ok=True)
    except http.client.HTTPException as error:  # a broken transfer (not an OSError)
        raise OSError(f"download from {url} failed: {type(error).__name__}: {error}") from error
    finally:
        if not any(folder.iterdir()):
            folder.rmdir()  # nothing fetched: leave no empty folder behind
    return folder


def digits_as_fashion(size: int = 28, seed: int = 0) -> ImageSet:
    """scikit-learn's 1,797 handwritten digits (8×8, 17 grey levels), enlarged to ``size``×``size``
    with bilinear interpolation and split 80/20 with a fixed shuffle: a stand-in with the same shapes."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).float()[:, None] / 16.0
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    labels = torch.from_numpy(digits.target).long()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(order))
    train, test = order[:cut], order[cut:]
    return ImageSet(images[train], labels[train], images[test], labels[test], tuple(str(d) for d in range(10)),
                    "scikit-learn digits",
                    "Fashion-MNIST was not found: these are 1,797 8×8 handwritten digits enlarged to 28×28, "
                    "far fewer and easier images, so the accuracies are not comparable with the chapter's text")


def load_fashion_mnist(source: str = "auto", cache: Path | None = None) -> ImageSet:
    """Fashion-MNIST from ``source``: "debian" (the installed package), "cache" (a copy fetched
    earlier), "online" (fetch the original files), "digits" (the scikit-learn stand-in), or "auto":
    the first of these that works, in that order."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    folder = (cache or cache_dir()) / "fashion-mnist"
    if source in ("auto", "debian") and _complete(DEBIAN_DIR, check_hashes=False):
        return _from_folder(DEBIAN_DIR, "Fashion-MNIST (Debian package dataset-fashion-mnist)")
    if source in ("auto", "cache") and _complete(folder, check_hashes=True):
        return _from_folder(folder, f"Fashion-MNIST (cached in {folder})")
    if source in ("auto", "online"):
        try:
            return _from_folder(fetch_fashion_mnist(cache), "Fashion-MNIST (fetched from the original site)")
        except (OSError, ValueError) as error:
            if source == "online":
                raise RuntimeError(f"could not fetch Fashion-MNIST from {ONLINE_URL}: {error}") from error
    if source in ("auto", "digits"):
        return digits_as_fashion()
    where = DEBIAN_DIR if source == "debian" else folder
    raise FileNotFoundError(f"Fashion-MNIST is not in {where} (source={source!r}); install the Debian package "
                            "dataset-fashion-mnist, or use source='online' or 'auto'")


# ---------------------------------------------------------------------------------------------
# tensors and transforms

MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST's training-set pixel mean and standard deviation (in [0, 1])


def to_inputs(images: torch.Tensor, mean: float = MEAN, std: float = STD) -> torch.Tensor:
    """uint8 (N, H, W) -> float (N, 1, H, W), standardised: what the models take."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 3:
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a uint8 (N, H, W) tensor, got {got}")
    return ((images.float() / 255.0 - mean) / std)[:, None]


def balanced_subset(labels: torch.Tensor, per_class: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``per_class`` examples of every class, drawn with a fixed seed (sorted)."""
    per_class = require_int("per_class", per_class)
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for c in labels.unique().tolist():
        where = (labels == c).nonzero().flatten()
        if len(where) < per_class:
            raise ValueError(f"class {c} has {len(where)} examples, fewer than per_class={per_class}")
        chosen.append(where[torch.randperm(len(where), generator=g)[:per_class]])
    return torch.cat(chosen).sort().values


def _check_batch(x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a float (N, C, H, W) tensor, got {got}")
    return x


def shift(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Move (N, C, H, W) images ``dx`` pixels right and ``dy`` down; uncovered pixels take each
    image's corner value (the background)."""
    n, c, h, w = _check_batch(x).shape
    if abs(dx) >= w or abs(dy) >= h:
        raise ValueError(f"a shift of ({dx}, {dy}) leaves nothing of a {h}×{w} image")
    out = x[:, :, :1, :1].expand(n, c, h, w).clone()
    src = x[:, :, max(0, -dy): h - max(0, dy), max(0, -dx): w - max(0, dx)]
    out[:, :, max(0, dy): max(0, dy) + src.shape[2], max(0, dx): max(0, dx) + src.shape[3]] = src
    return out


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate (N, C, H, W) images by ``degrees`` (counter-clockwise) about their centre, bilinear;
    corners that come from outside take each image's corner value."""
    _check_batch(x)
    theta = math.radians(degrees)
    cos, sin = math.cos(theta), math.sin(theta)
    # affine_grid maps each output position to where it samples the input, with y pointing down: turning
    # the picture counter-clockwise on screen samples at the output position turned clockwise.
    matrix = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=x.dtype, device=x.device)
    matrix = matrix.expand(x.shape[0], 2, 3)
    grid = F.affine_grid(matrix, list(x.shape), align_corners=False)
    background = x[:, :, :1, :1]
    return F.grid_sample(x - background, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + background


def add_noise(x: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    """``x`` plus Gaussian noise of standard deviation ``std`` (in the inputs' units), seeded."""
    g = torch.Generator().manual_seed(seed)  # on the CPU: the same noise on every device
    return x + std * torch.randn(_check_batch(x).shape, generator=g, dtype=x.dtype).to(x.device)
