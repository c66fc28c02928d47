"""Chapter 09's table from the command line: the fine-tuned classifier in fp32, structurally pruned,
and int8 (legacy torch.ao, torchao eager, torchao + torch.compile) — linear-weight and state-dict
size, latency side by side at two batch shapes, test accuracy.

    python benchmarks/compression.py [--repeat 20] [--no-compile] [--no-accuracy] [--classifier DIR]

Targets (issue 7, 2 CPU cores): int8 ≥ 1.7x faster than fp32 eager at 32 x 128, ≥ 3.5x smaller linear
weights, ≤ 1 point of test accuracy lost; 30% of FFN neurons pruned: measurably faster.
"""

from __future__ import annotations

import argparse
import copy

import torch

from course_lib import finetune, prune, quantize, train
from course_lib.data import load_movie_reviews
from course_lib.runtime import setup

SHAPES = ((1, 64), (32, 128))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile variants")
    parser.add_argument("--no-accuracy", action="store_true", help="skip the test-set evaluation")
    parser.add_argument("--classifier", default=None, help="model folder (default: chapter 07's)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    setup(seed=0, device="cpu", threads=args.threads)
    model, tokenizer, _ = finetune.load_classifier(args.classifier)
    reviews = load_movie_reviews()
    texts = list(reviews["test"]["text"])

    variants = {
        "fp32": model,
        "pruned 30% FFN (no recovery)": prune.prune_ffn_neurons(copy.deepcopy(model), 0.3),
        "legacy dynamic int8": quantize.legacy_dynamic_int8(model),
        "torchao int8 (eager)": quantize.torchao_int8(model),
    }
    if not args.no_compile:
        for name, base in (("fp32 + compile", model), ("torchao int8 + compile", variants["torchao int8 (eager)"])):
            compiled = torch.compile(base)
            for batch, length in SHAPES:  # compile for both shapes before timing
                with torch.inference_mode():
                    compiled(**quantize.fixed_shape_batch(tokenizer, texts, batch, length))
            variants[name] = compiled

    latency = {}
    for batch, length in SHAPES:
        inputs = quantize.fixed_shape_batch(tokenizer, texts, batch, length)
        for timing in quantize.measure_latency(variants, inputs, warmup=2, repeat=args.repeat):
            latency.setdefault(timing.name, {})[(batch, length)] = timing.median

    if not args.no_accuracy:
        tokenized = finetune.tokenize(reviews["test"], tokenizer)
        loader = finetune.make_loaders({"test": tokenized}, tokenizer)["test"]

    print(f"{'variant':30} {'linear MB':>9} {'total MB':>8} {'1x64 ms':>8} {'32x128 ms':>10} {'speed-up':>8} {'test acc':>8}")
    base = latency["fp32"][SHAPES[1]]
    for name, variant in variants.items():
        eager = getattr(variant, "_orig_mod", variant)
        accuracy = "-"
        if not args.no_accuracy:
            logits, labels = train.predict(eager, loader)
            accuracy = f"{finetune.classification_metrics(logits, labels)['accuracy']:.2%}"
        print(f"{name:30} {quantize.linear_bytes(eager) / 1e6:9.1f} {quantize.state_dict_bytes(eager) / 1e6:8.1f} "
              f"{1e3 * latency[name][SHAPES[0]]:8.1f} {1e3 * latency[name][SHAPES[1]]:10.1f} "
              f"{base / latency[name][SHAPES[1]]:7.2f}x {accuracy:>8}")


if __name__ == "__main__":
    main()
