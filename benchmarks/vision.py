"""Chapter 14's vision code on the CPU, measured side by side in one run: the course's convolution
(course_lib.conv.conv2d, im2col + one matrix product) against F.conv2d, the chapter's SmallCNN against
its ViT (about 61k parameters each: inference and training images/s), and the CNN's static int8 copy
against the float CNN.

    python benchmarks/vision.py [--threads 1] [--repeat 30] [--json rows.json]
    python benchmarks/vision.py --tiny           # tiny shapes and batches, 2 repeats: checks the script
    python benchmarks/vision.py --keep-malloc    # also time the page faults of freshly mapped memory

Self-contained: the models keep their random initial weights (no training, nothing downloaded) and
the inputs are random images from a fixed seed, because the speed of a forward or training step does
not depend on what the numbers are. Every comparison interleaves its candidates' repeats
(course_lib.bench.compare), so a burst of load from elsewhere slows them alike and the ratios stay
fair; the times are medians.

On Linux, glibc's malloc is first told to keep freed memory for reuse (M_MMAP_THRESHOLD and
M_TRIM_THRESHOLD at 1 GiB). Otherwise an output of a few MB may come from freshly mapped pages on one
call and from reused ones on the next, depending on what ran before (when this was written, at one
thread, F.conv2d on a 64×1×28×28 batch took 7 ms alone and 2 ms interleaved with ours, page faults
making the difference: 0.6 ms without them). ``--keep-malloc`` leaves malloc alone, and ``--tiny`` does
too (it runs inside pytest). The int8 model runs on PyTorch's eager quantized CPU kernels, so the whole
benchmark runs on the CPU.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from course_lib import bench, quantize_cnn
from course_lib.conv import SmallCNN, conv2d
from course_lib.vit import ViT

SEED = 0
CNN = dict(channels=(32, 64, 64))
VIT = dict(dim=48, depth=3, heads=4, mlp_dim=96, patch_size=4)


@dataclass(frozen=True)
class ConvShape:
    """One convolution: a (batch, in_channels, size, size) input and a 3×3 kernel, padding 1."""

    batch: int
    in_channels: int
    out_channels: int
    size: int
    stride: int = 1
    groups: int = 1

    def describe(self) -> str:
        text = f"{self.batch}×{self.in_channels}×{self.size}×{self.size} → {self.out_channels} ch"
        if self.groups == self.in_channels > 1:
            text += " depthwise"
        elif self.groups > 1:
            text += f", groups {self.groups}"
        return text + (f", stride {self.stride}" if self.stride != 1 else "")


CONV_SHAPES = (
    ConvShape(64, 1, 32, 28),  # the CNN's first layer on a batch of 28×28 digits
    ConvShape(64, 32, 64, 14),  # its second stage
    ConvShape(32, 32, 32, 56, groups=32),  # a depthwise convolution (MobileNet / EfficientNet)
    ConvShape(64, 32, 64, 28, stride=2),  # a downsampling convolution
)
TINY_CONV_SHAPES = (
    ConvShape(2, 1, 4, 8),
    ConvShape(2, 4, 8, 6),
    ConvShape(2, 4, 4, 8, groups=4),
    ConvShape(2, 4, 8, 8, stride=2),
)
BATCHES = dict(inference=256, training=128, calibration=64, calibration_batches=4)
TINY_BATCHES = dict(inference=8, training=4, calibration=4, calibration_batches=1)


@dataclass
class ConvRow:
    shape: str
    ours_ms: float
    torch_ms: float
    ours_over_torch: float  # time ratio: above 1, ours is slower
    max_abs_diff: float


@dataclass
class ModelRow:
    model: str
    parameters: int
    inference_images_per_s: float
    training_images_per_s: float | None  # None for the int8 copy (inference only; parameters: the float CNN's)


@dataclass
class Results:
    threads: int
    repeat: int
    tiny: bool
    torch: str
    steady_malloc: bool  # whether glibc kept freed memory for reuse (see the module's docstring)
    conv: list[ConvRow] = field(default_factory=list)
    models: list[ModelRow] = field(default_factory=list)  # SmallCNN, ViT, SmallCNN static int8
    cnn_over_vit_inference: float = 0.0  # images/s ratios: above 1, the CNN is faster
    cnn_over_vit_training: float = 0.0
    int8_speed_up: float = 0.0  # int8 images/s over float CNN images/s


def positive(text: str) -> int:
    """An argparse type: an int >= 1 (argparse names the option in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {value}")
    return value


def steady_malloc() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse rather than hand it back to the operating
    system, so repeated calls do not pay page faults on fresh memory. For this whole process, and only
    where glibc is (Linux): False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        # -3: M_MMAP_THRESHOLD (blocks above it are mapped fresh), -1: M_TRIM_THRESHOLD (free heap kept)
        return bool(libc.mallopt(-3, 1 << 30)) and bool(libc.mallopt(-1, 1 << 30))
    except (OSError, AttributeError):  # no glibc (musl has no mallopt)
        return False


def _images(generator: torch.Generator, batch: int) -> torch.Tensor:
    return torch.randn(batch, 1, 28, 28, generator=generator)


def bench_conv(shapes, warmup: int, repeat: int, generator: torch.Generator) -> list[ConvRow]:
    rows = []
    for s in shapes:
        x = torch.randn(s.batch, s.in_channels, s.size, s.size, generator=generator)
        fan_in = s.in_channels // s.groups * 9
        weight = torch.randn(s.out_channels, s.in_channels // s.groups, 3, 3, generator=generator) / fan_in ** 0.5
        bias = torch.randn(s.out_channels, generator=generator) * 0.1
        kwargs = dict(stride=s.stride, padding=1, groups=s.groups)
        ours = lambda: conv2d(x, weight, bias, **kwargs)  # noqa: E731
        reference = lambda: F.conv2d(x, weight, bias, **kwargs)  # noqa: E731
        difference = (ours() - reference()).abs().max().item()
        t_ours, t_torch = bench.compare({"ours": ours, "torch": reference}, warmup=warmup, repeat=repeat)
        rows.append(ConvRow(s.describe(), t_ours.median_ms, t_torch.median_ms, t_ours.median / t_torch.median,
                            difference))
    return rows


def _training_step(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step() -> None:
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def bench_models(batches: dict, warmup: int, repeat: int, generator: torch.Generator) -> tuple[list[ModelRow], dict]:
    torch.manual_seed(SEED)
    cnn, vit = SmallCNN(**CNN), ViT(**VIT)
    calibration = [_images(generator, batches["calibration"]) for _ in range(batches["calibration_batches"])]
    int8 = quantize_cnn.static_int8(cnn, calibration)  # a copy: cnn itself stays float
    models = {"cnn": cnn.eval(), "vit": vit.eval(), "int8": int8.eval()}

    images = _images(generator, batches["inference"])

    def infer(model):
        def run() -> None:
            with torch.no_grad():
                model(images)
        return run

    # the three inference candidates interleaved in one comparison: CNN vs ViT and int8 vs float CNN
    inference = bench.compare({name: infer(m) for name, m in models.items()}, warmup=warmup, repeat=repeat)
    infer_rate = {t.name: batches["inference"] / t.median for t in inference}

    train_images = _images(generator, batches["training"])
    labels = torch.randint(0, 10, (batches["training"],), generator=generator)
    steps = {name: _training_step(models[name].train(), train_images, labels) for name in ("cnn", "vit")}
    training = bench.compare(steps, warmup=warmup, repeat=repeat)
    train_rate = {t.name: batches["training"] / t.median for t in training}
    for model in (cnn, vit):
        model.eval()

    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    channels = ", ".join(map(str, CNN["channels"]))
    vit_name = f"ViT(dim {VIT['dim']}, depth {VIT['depth']}, heads {VIT['heads']}, mlp {VIT['mlp_dim']}, patch {VIT['patch_size']})"
    rows = [ModelRow(f"SmallCNN({channels})", params(cnn), infer_rate["cnn"], train_rate["cnn"]),
            ModelRow(vit_name, params(vit), infer_rate["vit"], train_rate["vit"]),
            ModelRow(f"SmallCNN({channels}) static int8", params(cnn), infer_rate["int8"], None)]
    ratios = dict(cnn_over_vit_inference=infer_rate["cnn"] / infer_rate["vit"],
                  cnn_over_vit_training=train_rate["cnn"] / train_rate["vit"],
                  int8_speed_up=infer_rate["int8"] / infer_rate["cnn"])
    return rows, ratios


def report(r: Results, batches: dict, warmup: int) -> str:
    lines = [f"torch {r.torch} on the CPU, {r.threads} thread{'s' * (r.threads != 1)} (torch.set_num_threads), "
             f"float32 unless marked int8",
             f"random, untrained weights and random inputs (seed {SEED}): speed does not depend on the numbers",
             f"medians of {r.repeat} interleaved repeats after {warmup} warm-up call{'s' * (warmup != 1)} each; "
             f"every ratio measured side by side in this run",
             "malloc keeps freed memory for reuse: page faults on fresh memory are not timed" if r.steady_malloc
             else "malloc left as it is: page faults on freshly mapped memory are timed too",
             "",
             "1. convolution forward, 3×3, padding 1, with bias: course_lib.conv.conv2d (im2col + one matrix "
             "product) vs F.conv2d",
             f"{'input → output':44} {'ours ms':>8} {'torch ms':>9} {'ours/torch':>11} {'max |diff|':>11}"]
    for c in r.conv:
        lines.append(f"{c.shape:44} {c.ours_ms:8.2f} {c.torch_ms:9.2f} {c.ours_over_torch:10.2f}x {c.max_abs_diff:11.1e}")
    cnn, vit, int8 = r.models
    lines += ["",
              f"2. the chapter's two models: inference (eval, no_grad, batch {batches['inference']}), "
              f"training (forward + backward + AdamW step, batch {batches['training']})",
              f"{'model':52} {'params':>7} {'infer img/s':>12} {'train img/s':>12}"]
    for m in (cnn, vit):
        lines.append(f"{m.model:52} {m.parameters:7,d} {m.inference_images_per_s:12,.0f} {m.training_images_per_s:12,.0f}")
    lines.append(f"{'CNN/ViT (images/s ratio: above 1, the CNN is faster)':52} {cnn.parameters / vit.parameters:6.2f}x "
                 f"{r.cnn_over_vit_inference:11.2f}x {r.cnn_over_vit_training:11.2f}x")
    lines += ["",
              f"3. static int8 (conv + batch norm + ReLU fused, {batches['calibration_batches']} calibration "
              f"batch{'es' * (batches['calibration_batches'] != 1)} of {batches['calibration']}) vs the float CNN: "
              f"inference as in 2, timed in the same comparison",
              f"{'model':52} {'infer img/s':>12} {'speed-up':>9}",
              f"{cnn.model + ' float32':52} {cnn.inference_images_per_s:12,.0f} {1:8.2f}x",
              f"{int8.model:52} {int8.inference_images_per_s:12,.0f} {r.int8_speed_up:8.2f}x"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> Results:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=positive, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--repeat", type=positive, default=None,
                        help="timed repeats per candidate (default 30, or 2 with --tiny)")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes and batches, 2 repeats: checks the script")
    parser.add_argument("--keep-malloc", action="store_true",
                        help="leave glibc's malloc settings alone (time page faults on fresh memory too)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    repeat = args.repeat if args.repeat is not None else (2 if args.tiny else 30)
    warmup = 1 if args.tiny else 2
    shapes, batches = (TINY_CONV_SHAPES, TINY_BATCHES) if args.tiny else (CONV_SHAPES, BATCHES)

    steady = False if args.tiny or args.keep_malloc else steady_malloc()
    torch.set_num_threads(args.threads)
    if args.threads > (os.cpu_count() or 1):
        print(f"note: --threads {args.threads} is more than the {os.cpu_count()} CPU cores here")
    torch.manual_seed(SEED)
    generator = torch.Generator().manual_seed(SEED)

    results = Results(threads=torch.get_num_threads(), repeat=repeat, tiny=args.tiny, torch=torch.__version__,
                      steady_malloc=steady)
    results.conv = bench_conv(shapes, warmup, repeat, generator)
    results.models, ratios = bench_models(batches, warmup, repeat, generator)
    for name, value in ratios.items():
        setattr(results, name, value)
    print(report(results, batches, warmup))
    if args.json:
        args.json.write_text(json.dumps(asdict(results), indent=1))
    return results


if __name__ == "__main__":
    main()
