"""course_lib.bert against transformers.BertModel on the bundled all-MiniLM-L6-v2: the same batch,
forward only, timed side by side; prints the ratio (goal: from scratch within 1.2x of transformers).

    python benchmarks/bert.py [--batch 32] [--length 64] [--repeat 10] [--device auto]
"""

from __future__ import annotations

import argparse

import torch

from course_lib import bert
from course_lib.bench import compare, ratio_table
from course_lib.pretrained import bundled_model_path, load_model
from course_lib.runtime import setup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = setup(seed=0, device=args.device).device
    ours = bert.from_pretrained(bundled_model_path()).to(device)
    theirs = load_model().to(device).eval()
    ids = torch.randint(1000, 30000, (args.batch, args.length), device=device)
    mask = torch.ones_like(ids)
    mask[: args.batch // 2, args.length // 2:] = 0  # half the batch is padded to half length
    sync = torch.accelerator.synchronize if device.type != "cpu" else None
    with torch.no_grad():
        timings = compare(
            {"transformers": lambda: theirs(input_ids=ids, attention_mask=mask),
             "course_lib.bert": lambda: ours(ids, mask)},
            warmup=3, repeat=args.repeat, sync=sync,
        )
    print(f"batch {args.batch} x {args.length} tokens, forward")
    print(ratio_table(timings))
    ratio = timings[1].median / timings[0].median
    print(f"course_lib.bert takes {ratio:.2f}x the time of transformers (goal: <= 1.2x)")


if __name__ == "__main__":
    main()
