"""Timing that can be trusted on a noisy laptop: warm-up, many repeats, the median, and ratios
measured side by side in one run (never a timing compared against a number from another day).
"""

from __future__ import annotations

import math
import multiprocessing
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from course_lib.arguments import require_int


@dataclass(frozen=True)
class Timing:
    """Seconds per call of one function over ``len(times)`` repeats."""

    name: str
    times: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def best(self) -> float:
        return min(self.times)

    @property
    def median_ms(self) -> float:
        return self.median * 1e3


def _time_once(fn: Callable[[], object], sync: Callable[[], None] | None) -> float:
    start = time.perf_counter()
    fn()
    if sync is not None:
        sync()  # wait for asynchronous devices (torch.accelerator.synchronize) before stopping
    return time.perf_counter() - start


def measure(
    fn: Callable[[], object],
    *,
    name: str = "fn",
    warmup: int = 3,
    repeat: int = 10,
    sync: Callable[[], None] | None = None,
) -> Timing:
    """Call ``fn()`` ``warmup`` times untimed, then time ``repeat`` calls.

    ``sync`` runs after each call inside the timed region; pass the device's synchronise function
    for GPU work, whose calls return before the work is done.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    warmup, repeat = require_int("warmup", warmup, at_least=0), require_int("repeat", repeat)
    for _ in range(warmup):
        fn()
    if sync is not None:
        sync()
    return Timing(name, tuple(_time_once(fn, sync) for _ in range(repeat)))


def compare(
    candidates: Mapping[str, Callable[[], object]],
    *,
    warmup: int = 3,
    repeat: int = 10,
    sync: Callable[[], None] | None = None,
) -> list[Timing]:
    """Time several functions side by side: repeats are interleaved (a, b, c, a, b, c, ...), so a
    burst of load from elsewhere slows every candidate alike and the ratios stay fair.
    """
    if not isinstance(candidates, Mapping) or not candidates:
        raise ValueError("candidates must be a non-empty mapping of name -> callable")
    for name, fn in candidates.items():
        if not callable(fn):
            raise TypeError(f"candidates[{name!r}] must be callable, got {type(fn).__name__}")
    warmup, repeat = require_int("warmup", warmup, at_least=0), require_int("repeat", repeat)
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    if sync is not None:
        sync()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeat):
        for name, fn in candidates.items():
            times[name].append(_time_once(fn, sync))
    return [Timing(name, tuple(values)) for name, values in times.items()]


def ratio_table(timings: list[Timing], baseline: str | None = None) -> str:
    """Format timings as a table with each one's speed-up over ``baseline`` (default: the first).

    A speed-up above 1 means faster than the baseline.
    """
    if not timings:
        raise ValueError("timings must not be empty")
    names = [t.name for t in timings]
    base_name = names[0] if baseline is None else baseline
    if base_name not in names:
        raise ValueError(f"baseline must be one of {names}, got {base_name!r}")
    base = timings[names.index(base_name)].median
    width = max(len("variant"), *(len(n) for n in names))
    lines = [f"{'variant':<{width}}  {'median':>12}  {'speed-up vs ' + base_name:>{14 + len(base_name)}}"]
    for t in timings:
        lines.append(
            f"{t.name:<{width}}  {_human(t.median):>12}  {base / t.median:>{13 + len(base_name)}.2f}x"
        )
    return "\n".join(lines)


def _human(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e6:.1f} us"


def _peak_in_child(fn: Callable[[], object], conn) -> None:  # noqa: ANN001 (a multiprocessing pipe)
    import resource  # POSIX only: this runs in a forked child, and Windows cannot fork

    import psutil
    import torch

    # The parent's OpenMP thread pool does not survive a fork; running on one thread here keeps
    # PyTorch from waiting on threads that do not exist in this process.
    torch.set_num_threads(1)
    if sys.platform.startswith("linux"):
        # Serve every block over 64 KiB with fresh pages: otherwise glibc may reuse heap pages this
        # process inherited (already resident), and the growth would not show.
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # -3: M_MMAP_THRESHOLD
    before = psutil.Process().memory_info().rss
    fn()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    conn.send(max(0, peak - before))


def _child_peak(fn: Callable[[], object]) -> int:
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_peak_in_child, args=(fn, send))
    child.start()
    value = receive.recv()
    child.join()
    return value


def peak_memory(fn: Callable[[], object], device: object = "cpu") -> float:
    """Bytes of memory ``fn()`` needs at its peak, beyond what was in use before.

    On a GPU, the allocator's own peak counter. On the CPU, ``fn`` runs in a forked copy of this
    process and the growth of its peak resident memory is measured, minus what forking and a first
    tiny PyTorch operation cost there (several MB of one-off set-up): a real measurement, to a few
    MB. NaN where the operating system cannot fork (Windows).
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    import torch

    device = torch.device(device)
    if device.type != "cpu":  # an accelerator: its allocator counts the peak for us
        torch.accelerator.synchronize(device)
        before = torch.accelerator.memory_allocated(device)
        torch.accelerator.reset_peak_memory_stats(device)
        fn()
        torch.accelerator.synchronize(device)
        return float(torch.accelerator.max_memory_allocated(device) - before)
    if "fork" not in multiprocessing.get_all_start_methods():
        return math.nan
    baseline = _child_peak(lambda: torch.softmax(torch.ones(4, 4) @ torch.ones(4, 4), dim=-1))
    return float(max(0, _child_peak(fn) - baseline))
