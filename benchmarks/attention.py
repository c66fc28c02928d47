"""Naive attention (course_lib.attention, which materialises the T x T weights) against PyTorch's
fused F.scaled_dot_product_attention: median time and peak extra memory per sequence length,
measured side by side in one run, with the ratios.

    python benchmarks/attention.py [--lengths 128 256 512 1024 2048] [--heads 8] [--dim 64] [--device auto]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from course_lib.attention import scaled_dot_product_attention
from course_lib.bench import compare, peak_memory
from course_lib.runtime import setup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512, 1024, 2048])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    session = setup(seed=0, device=args.device)
    device = session.device
    sync = torch.accelerator.synchronize if device.type != "cpu" else None
    print(f"forward, (batch {args.batch}, {args.heads} heads, T, {args.dim}), float32")
    print(f"{'T':>6} {'naive ms':>9} {'SDPA ms':>8} {'speed-up':>9} {'naive MB':>9} {'SDPA MB':>8} {'memory ratio':>13}")
    for length in args.lengths:
        q, k, v = (torch.randn(args.batch, args.heads, length, args.dim, device=device) for _ in range(3))
        naive = lambda: scaled_dot_product_attention(q, k, v)  # noqa: E731
        fused = lambda: F.scaled_dot_product_attention(q, k, v)  # noqa: E731
        tn, tf = compare({"naive": naive, "sdpa": fused}, warmup=1, repeat=args.repeat, sync=sync)
        mn, mf = peak_memory(naive, device) / 2**20, peak_memory(fused, device) / 2**20
        ratio = f"{mn / mf:.0f}x" if mf >= 1 else "SDPA < 1 MB"
        print(f"{length:>6} {tn.median_ms:>9.1f} {tf.median_ms:>8.1f} {tn.median / tf.median:>8.1f}x {mn:>9.0f} {mf:>8.0f} {ratio:>13}")


if __name__ == "__main__":
    main()
