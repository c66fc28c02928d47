"""Chapter 13's chat service under load: SmolLM2-135M-Instruct behind the OpenAI-compatible API
(one model, one generation at a time, the rest queued), hit with streaming greedy requests at
concurrency 1 and 4; time to first token, whole-answer latency and generated tokens/s.

    python benchmarks/chat_service.py [--model DIR] [--requests 8] [--concurrency 1 4] [--max-tokens 48]
                                      [--threads 1] [--fast]

With one model and a queue, more concurrent clients cannot raise tokens/s; they wait longer for
their first token (about the concurrency times a whole answer). No target: record the numbers in
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from course_lib import loadtest
from course_lib.chat_service import ChatServiceProcess

PROMPTS = [
    "What is the capital of France?",
    "Give me three tips for sleeping better.",
    "Explain what a neural network is in two sentences.",
    "Write a haiku about the sea.",
    "How do I boil an egg?",
    "What is the difference between a list and a tuple in Python?",
    "Name three planets of the solar system.",
    "Why is the sky blue?",
]


def main(argv: list[str] | None = None) -> list[loadtest.ChatLoadResult]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="transformers folder (default: the bundled model)")
    parser.add_argument("--requests", type=int, default=8, help="timed requests per concurrency (default: 8)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--max-tokens", type=int, default=48, help="tokens per answer at most (default: 48)")
    parser.add_argument("--threads", type=int, default=1, help="compute threads of the service (default: 1)")
    parser.add_argument("--fast", action="store_true", help="2 requests of 8 tokens: checks the script, measures little")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.threads < 1 or args.max_tokens < 1 or min(args.concurrency) < 1:
        parser.error("--requests, --concurrency, --max-tokens and --threads must be positive")
    requests, max_tokens = (2, 8) if args.fast else (args.requests, args.max_tokens)
    with ChatServiceProcess(args.model, threads=args.threads, max_new_tokens=max(max_tokens, 8)) as service:
        print(f"{args.model or 'the bundled SmolLM2-135M-Instruct'}: {requests} streaming greedy requests of up to "
              f"{max_tokens} tokens per run, {args.threads} compute thread(s), one generation at a time")
        results = [loadtest.chat_load_test(service.base_url, PROMPTS, concurrency, requests, max_tokens,
                                           warmup=2 if concurrency == args.concurrency[0] else 0,
                                           name=f"@{concurrency}")
                   for concurrency in args.concurrency]
    print(loadtest.chat_load_table(results))
    return results


if __name__ == "__main__":
    main()
