"""Fine-tuning the bundled MiniLM on the movie-review sentences with chapter 07's plain-loop recipe:
prints training time, samples/s and test accuracy against the chapter's targets.

    python benchmarks/finetune.py            # the chapter's default run: all 8,453 sentences, 3 epochs
    python benchmarks/finetune.py --fast     # its fast mode: 640 sentences, 1 epoch, 300 test sentences

Targets (issue 6, 2 CPU cores): default ≥ 84% test accuracy in ≤ 10 min of training; fast ≥ 70% in ≤ 90 s.
"""

from __future__ import annotations

import argparse
import time

from course_lib import finetune, train
from course_lib.data import load_movie_reviews
from course_lib.pretrained import load_tokenizer
from course_lib.runtime import seed_everything, setup

PRESETS = {  # train sentences (None: all), test sentences (None: all), epochs, batch, lr, targets
    "default": dict(train=None, test=None, epochs=3, batch=32, lr=1e-4, accuracy=0.84, seconds=600),
    "fast": dict(train=640, test=300, epochs=1, batch=16, lr=2e-4, accuracy=0.70, seconds=90),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="the chapter's fast-mode sizes")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores but one)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    preset = PRESETS["fast" if args.fast else "default"]
    session = setup(seed=args.seed, device=args.device, threads=args.threads, fast=args.fast)

    tokenizer = load_tokenizer()
    data = load_movie_reviews()
    if preset["train"]:
        data["train"] = data["train"].shuffle(seed=args.seed).select(range(preset["train"]))
    if preset["test"]:
        data["test"] = data["test"].select(range(preset["test"]))
    del data["validation"]  # the benchmark times training alone; chapter 07 validates each epoch
    loaders = finetune.make_loaders(finetune.tokenize(data, tokenizer), tokenizer, batch_size=preset["batch"],
                                    seed=args.seed)
    seed_everything(args.seed)
    model = finetune.load_classifier_model()
    start = time.perf_counter()
    finetune.fine_tune(model, loaders, epochs=preset["epochs"], lr=preset["lr"], device=session.device, progress=False)
    seconds = time.perf_counter() - start
    logits, labels = train.predict(model, loaders["test"], session.device)
    accuracy = finetune.classification_metrics(logits, labels)["accuracy"]
    samples = len(data["train"]) * preset["epochs"]
    print(f"{'run':8} {'sentences':>9} {'epochs':>6} {'train time':>10} {'samples/s':>9} {'test accuracy':>13}")
    print(f"{'fast' if args.fast else 'default':8} {len(data['train']):9,} {preset['epochs']:6} {seconds:8.0f} s "
          f"{samples / seconds:9.1f} {accuracy:13.2%}")
    met = accuracy >= preset["accuracy"] and seconds <= preset["seconds"]
    print(f"target: >= {preset['accuracy']:.0%} in <= {preset['seconds']} s: {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
