"""The client side of chapter 10: a load test of the classifier service (latency percentiles and
throughput at a given concurrency), the side-by-side comparison of backends, and its table; and
chapter 13's streaming load test of the chat service (time to first token, tokens/s).

Kept apart from :mod:`course_lib.serve` (the service itself): a load test is what a client runs,
often from another machine, and needs only an HTTP client.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from course_lib.arguments import require_int


@dataclass(frozen=True)
class LoadResult:
    """What a load test saw: one latency per answered request (seconds), the failures, the wall time."""

    name: str
    latencies: tuple[float, ...]
    failures: int
    seconds: float
    concurrency: int

    @property
    def requests(self) -> int:
        return len(self.latencies) + self.failures

    @property
    def throughput(self) -> float:
        """Answered requests per second of wall time."""
        return len(self.latencies) / self.seconds

    def percentile_ms(self, q: float) -> float:
        """The ``q``-th percentile (0-100, linear interpolation) of the latencies in milliseconds."""
        import numpy as np

        return float(np.percentile(self.latencies, q)) * 1e3 if self.latencies else float("nan")


def load_test(url: str, texts: Sequence[str], requests: int = 200, concurrency: int = 1, warmup: int = 10,
              timeout: float = 30.0, name: str = "") -> LoadResult:
    """Send ``requests`` POST /predict calls (one text each, cycling through ``texts``) from
    ``concurrency`` threads, each with its own keep-alive connection, after ``warmup`` untimed ones.
    A request fails when it gets no answer, a non-200 status, or the wrong number of predictions."""
    import httpx

    requests, concurrency = require_int("requests", requests), require_int("concurrency", concurrency)
    warmup = require_int("warmup", warmup, at_least=0)
    if isinstance(texts, str) or not texts:
        raise ValueError("texts must be a non-empty sequence of str")
    with httpx.Client(timeout=timeout) as client:
        for i in range(warmup):
            client.post(f"{url}/predict", json={"texts": texts[i % len(texts)]}).raise_for_status()

    jobs = iter(range(requests))
    lock = threading.Lock()

    def worker() -> tuple[list[float], int]:
        latencies, failures = [], 0
        with httpx.Client(timeout=timeout) as client:
            while True:
                with lock:
                    i = next(jobs, None)
                if i is None:
                    return latencies, failures
                start = time.perf_counter()
                try:
                    answer = client.post(f"{url}/predict", json={"texts": texts[i % len(texts)]})
                    ok = answer.status_code == 200 and len(answer.json()["predictions"]) == 1
                except (httpx.HTTPError, ValueError, KeyError):
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - start)
                else:
                    failures += 1

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        outcomes = list(pool.map(lambda _: worker(), range(concurrency)))
    seconds = time.perf_counter() - start
    return LoadResult(name or url, tuple(t for latencies, _ in outcomes for t in latencies),
                      sum(f for _, f in outcomes), seconds, concurrency)


def compare_backends(folders: dict[str, tuple[str | Path, str]], texts: Sequence[str], requests: int = 200,
                     concurrencies: Sequence[int] = (1, 8), threads: int = 1, warmup: int = 10) -> list[LoadResult]:
    """Start each ``name: (folder, backend)`` service in turn (only one runs at a time, so they do
    not compete for the cores) and load-test it at each concurrency. Results are named
    ``"<name> @<concurrency>"``, in order."""
    from course_lib.serve import ServiceProcess  # the services run in their own processes

    results = []
    for name, (folder, backend) in folders.items():
        with ServiceProcess(folder, backend, threads=threads) as service:
            for concurrency in concurrencies:
                results.append(load_test(service.url, texts, requests, concurrency, warmup=warmup,
                                         name=f"{name} @{concurrency}"))
    return results


def load_table(results: Sequence[LoadResult], baseline: str | None = None) -> str:
    """The load-test results as a text table, with each row's requests/s over the baseline row at
    the same concurrency (``baseline`` names a backend, default: the first)."""
    if not results:
        raise ValueError("results must not be empty")
    backends = [r.name.rsplit(" @", 1)[0] for r in results]
    base_name = baseline or backends[0]
    if base_name not in backends:
        raise ValueError(f"baseline must be one of {sorted(set(backends))}, got {base_name!r}")
    base = {r.concurrency: r.throughput for r, b in zip(results, backends) if b == base_name}
    width = max(len("service"), *(len(r.name) for r in results))
    lines = [f"{'service':<{width}}  {'p50 ms':>7}  {'p95 ms':>7}  {'p99 ms':>7}  {'req/s':>7}  {'failed':>6}  "
             f"{'req/s vs ' + base_name}"]
    for r in results:
        ratio = f"{r.throughput / base[r.concurrency]:.2f}x" if r.concurrency in base else "-"
        lines.append(f"{r.name:<{width}}  {r.percentile_ms(50):>7.1f}  {r.percentile_ms(95):>7.1f}  "
                     f"{r.percentile_ms(99):>7.1f}  {r.throughput:>7.1f}  {r.failures:>6}  {ratio}")
    return "\n".join(lines)


@dataclass(frozen=True)
class ChatLoadResult:
    """What a streaming load test of the chat service saw, per answered request: the time to the
    first piece of text, the time to the whole answer (seconds) and the tokens generated; plus the
    failed requests and the wall time of the whole run."""

    name: str
    first_token: tuple[float, ...]
    total: tuple[float, ...]
    tokens: tuple[int, ...]
    failures: int
    seconds: float
    concurrency: int

    @property
    def requests(self) -> int:
        return len(self.total) + self.failures

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second of wall time, all requests together."""
        return sum(self.tokens) / self.seconds

    def first_token_ms(self, q: float | None = None) -> float:
        """The mean time to first token (``q`` None) or its ``q``-th percentile, in milliseconds."""
        return _statistic_ms(self.first_token, q)

    def total_ms(self, q: float | None = None) -> float:
        """The mean time to the whole answer (``q`` None) or its ``q``-th percentile, in milliseconds."""
        return _statistic_ms(self.total, q)


def _statistic_ms(values: Sequence[float], q: float | None) -> float:
    import numpy as np

    if not values:
        return float("nan")
    return (float(np.mean(values)) if q is None else float(np.percentile(values, q))) * 1e3


def chat_load_test(base_url: str, prompts: Sequence[str], concurrency: int = 1, requests: int = 8,
                   max_tokens: int = 48, warmup: int = 1, timeout: float = 120.0, model: str = "served",
                   name: str = "") -> ChatLoadResult:
    """Send ``requests`` streaming chat completions (greedy, one user message each, cycling through
    ``prompts``) to ``base_url`` (the OpenAI client's: ``http://host:port/v1``) from
    ``concurrency`` threads, after ``warmup`` untimed ones, and time each answer's first text
    and end. A request fails when it gets no answer within ``timeout`` seconds of silence, a
    non-200 status, an error event or no ``[DONE]``."""
    import json

    import httpx

    requests, concurrency = require_int("requests", requests), require_int("concurrency", concurrency)
    max_tokens, warmup = require_int("max_tokens", max_tokens), require_int("warmup", warmup, at_least=0)
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be a non-empty sequence of str")
    url = f"{base_url.rstrip('/')}/chat/completions"

    def one(client: httpx.Client, prompt: str) -> tuple[float, float, int] | None:
        body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
        start = time.perf_counter()
        first, tokens, done = None, None, False
        try:
            with client.stream("POST", url, json=body) as response:
                if response.status_code != 200:
                    return None
                for line in response.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        done = True
                        break
                    chunk = json.loads(line[len("data: "):])
                    if "error" in chunk:
                        return None
                    if chunk.get("usage"):
                        tokens = chunk["usage"]["completion_tokens"]
                    if first is None and any(c["delta"].get("content") for c in chunk.get("choices", ())):
                        first = time.perf_counter() - start
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return None
        if not done or tokens is None:
            return None
        total = time.perf_counter() - start
        return (total if first is None else first), total, tokens

    with httpx.Client(timeout=timeout) as client:
        for i in range(warmup):
            if one(client, prompts[i % len(prompts)]) is None:
                raise RuntimeError(f"the warm-up request to {url} failed")

    jobs = iter(range(requests))
    lock = threading.Lock()

    def worker() -> tuple[list[tuple[float, float, int]], int]:
        answered, failures = [], 0
        with httpx.Client(timeout=timeout) as client:
            while True:
                with lock:
                    i = next(jobs, None)
                if i is None:
                    return answered, failures
                outcome = one(client, prompts[i % len(prompts)])
                if outcome is None:
                    failures += 1
                else:
                    answered.append(outcome)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        outcomes = list(pool.map(lambda _: worker(), range(concurrency)))
    seconds = time.perf_counter() - start
    answered = [a for done, _ in outcomes for a in done]
    return ChatLoadResult(name or f"@{concurrency}", tuple(a[0] for a in answered), tuple(a[1] for a in answered),
                          tuple(a[2] for a in answered), sum(f for _, f in outcomes), seconds, concurrency)


def chat_load_table(results: Sequence[ChatLoadResult]) -> str:
    """The streaming load-test results as a text table, one row per run."""
    if not results:
        raise ValueError("results must not be empty")
    lines = [f"{'concurrency':>11}  {'requests':>8}  {'failed':>6}  {'TTFT mean ms':>12}  {'TTFT p50 ms':>11}  "
             f"{'TTFT p95 ms':>11}  {'total mean s':>12}  {'tokens/s':>8}"]
    for r in results:
        lines.append(f"{r.concurrency:>11}  {r.requests:>8}  {r.failures:>6}  {r.first_token_ms():>12.0f}  "
                     f"{r.first_token_ms(50):>11.0f}  {r.first_token_ms(95):>11.0f}  {r.total_ms() / 1e3:>12.2f}  "
                     f"{r.tokens_per_s:>8.1f}")
    return "\n".join(lines)
