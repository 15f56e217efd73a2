"""Helpers every benchmark shares: median time, flops, peak memory, Markdown tables.

Timings are medians over repeats after a warm-up run; they are only comparable within one run,
on one machine.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path


class PeakRSS:
    """Peak resident memory growth (MiB) of this process while the block runs (sampled)."""

    def __enter__(self):
        self.start = self.peak = rss_mib()
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while self._running:
            self.peak = max(self.peak, rss_mib())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._running = False
        self._thread.join()
        self.peak = max(self.peak, rss_mib())

    @property
    def growth(self) -> float:
        return self.peak - self.start


def rss_mib() -> float:
    """This process's resident memory in MiB (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20
    except OSError:
        return 0.0


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """The median time of ``repeats`` calls after one warm-up call (allocations, kernel selection,
    the folded backbone, anchor caches)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def count_flops(fn: Callable[[], object]) -> float:
    """Floating-point operations of one call (PyTorch's flop counter: convolutions, matrix products)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def publish_report(report: str, output: Path | None) -> None:
    """Print a Markdown report and, when ``output`` is given, write it there too."""
    print("\n" + report)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(report + "\n")
