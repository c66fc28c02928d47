"""Chapter 10's load test from the command line: the classifier served over HTTP by eager PyTorch
(fp32), onnxruntime (fp32) and onnxruntime int8, one service at a time, each hit with one-sentence
requests at concurrency 1 and 8; latency percentiles and requests/s side by side.

    python benchmarks/serving.py [--requests 300] [--threads 1] [--classifier DIR] [--fast]

Targets (issue 8, 2 CPU cores): best backend, sequential requests, p50 <= 12 ms and p99 <= 25 ms,
and >= 2.5x the requests/s of the eager fp32 service; no failed requests.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from course_lib import export, finetune, loadtest
from course_lib.data import load_movie_reviews
from course_lib.runtime import setup


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per backend and concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=1, help="compute threads of each service (default: 1)")
    parser.add_argument("--classifier", type=Path, default=None, help="model folder (default: chapter 07's)")
    parser.add_argument("--fast", action="store_true", help="30 requests per run: checks the script, measures little")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.threads < 1 or min(args.concurrency) < 1:
        parser.error("--requests, --threads and --concurrency must be positive")
    requests = 30 if args.fast else args.requests
    setup(seed=0, device="cpu", threads=args.threads, fast=args.fast)
    model, tokenizer, _ = finetune.load_classifier(args.classifier)
    texts = list(load_movie_reviews()["test"]["text"])
    classifier = Path(args.classifier) if args.classifier else finetune.classifier_dir()
    print(f"{requests} one-sentence requests per run, concurrency {args.concurrency}, {args.threads} compute thread(s) per service")
    with tempfile.TemporaryDirectory() as tmp:
        export.export_onnx(model, tokenizer, Path(tmp) / "onnx", export.example_inputs(tokenizer, texts[:4]))
        export.quantize_onnx(Path(tmp) / "onnx", Path(tmp) / "onnx_int8")
        folders = {"torch fp32": (classifier, "torch"), "onnx fp32": (Path(tmp) / "onnx", "onnx"),
                   "onnx int8": (Path(tmp) / "onnx_int8", "onnx")}
        results = loadtest.compare_backends(folders, texts, requests, args.concurrency, threads=args.threads)
    print(loadtest.load_table(results))


if __name__ == "__main__":
    main()
