"""How many CPU threads should PyTorch use? 1 vs all cores, on a quiet machine and beside a busy
process (a kernel next to pytest, a server next to its load client). Prints medians and ratios
measured side by side; course_lib.runtime.default_threads() follows from these numbers.

    python benchmarks/threads.py [--size 1024] [--repeat 30]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time

import torch

from course_lib.bench import compare, ratio_table


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _candidates(size: int, cores: int) -> dict:
    x, w = torch.randn(256, size), torch.randn(size, size)

    def with_threads(n: int):
        def run() -> None:
            torch.set_num_threads(n)
            x @ w

        return run

    return {f"{n} thread{'s' if n > 1 else ''}": with_threads(n) for n in sorted({1, cores})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="matmul size: (256, N) @ (N, N)")
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    print(f"torch {torch.__version__}, {cores} usable cores, matmul (256, {args.size}) @ ({args.size}, {args.size})")
    if cores < 2:
        print("only one core: nothing to compare")
        return

    print("\nquiet machine:")
    print(ratio_table(compare(_candidates(args.size, cores), repeat=args.repeat)))

    busy = mp.get_context("spawn").Process(target=_spin, args=(3600,), daemon=True)
    busy.start()
    try:
        time.sleep(0.5)
        print("\nbeside one busy process (one core spinning):")
        print(ratio_table(compare(_candidates(args.size, cores), repeat=args.repeat)))
    finally:
        busy.terminate()
        busy.join()


if __name__ == "__main__":
    main()
