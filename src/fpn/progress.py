"""Progress on stderr: a tqdm bar on a terminal, plain periodic lines anywhere else.

A bar redraws itself with carriage returns; written into a log file (a job scheduler's, the one
``scripts/demo.sh`` keeps) it becomes a single line of thousands of characters. So where stderr
is not an interactive terminal, progress is one plain line every ``period`` items and at the
last: what, how far, the last values shown beside it, the speed and the time left at that speed::

    train step 200/3000  loss 0.8123  loss_cls 0.3012  lr 0.02  1.84 it/s  ETA 0:25:22

``progress`` chooses; training (``fpn.engine.hooks``), ``fpn synth``, ``fpn pretrain`` and
``fpn predict`` use it. ``PlainProgress`` answers the part of tqdm's interface they use.
"""

from __future__ import annotations

import datetime
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from tqdm import tqdm

# Lines per run when ``period`` is not given and the total is known.
LINES_PER_RUN = 20


def stderr_is_terminal() -> bool:
    """Whether progress can be a bar that redraws itself (stderr is an interactive terminal)."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def default_period(total: int | None) -> int:
    """About ``LINES_PER_RUN`` lines over a known total; every 100 items when it is unknown."""
    return max(1, total // LINES_PER_RUN) if total else 100


class PlainProgress:
    """Progress as plain lines on ``stream`` (stderr): one every ``period`` items and one at the
    last (``total`` reached, or ``close`` after items not yet reported); no carriage returns.

    Used like tqdm: iterate over it, or call ``update``; ``set_postfix`` sets the values shown.
    """

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 period: int | None = None, initial: int = 0, enabled: bool = True,
                 stream: TextIO | None = None):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc = iterable, total, desc
        self.period = max(1, period) if period else default_period(total)
        self.n = self.initial = self.reported = initial
        self.enabled, self.stream = enabled, stream
        self.postfix: dict[str, Any] = {}
        self.start = time.perf_counter()

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n % self.period == 0 or self.n == self.total:
            self.report()

    def close(self) -> None:
        if self.n != self.reported:
            self.report()

    def report(self) -> None:
        self.reported = self.n
        if self.enabled:
            print(self.line(time.perf_counter() - self.start), file=self.stream or sys.stderr, flush=True)

    def line(self, seconds: float) -> str:
        """``desc n/total  key value ...  rate it/s  ETA h:mm:ss`` after ``seconds`` of work."""
        count = f"{self.n}/{self.total}" if self.total else str(self.n)
        rate = (self.n - self.initial) / seconds if seconds > 0 else 0.0
        eta = datetime.timedelta(seconds=round((self.total - self.n) / rate)) if rate > 0 and self.total \
            else "?"
        shown = "".join(f"  {key} {value}" for key, value in self.postfix.items())
        return f"{self.desc} {count}{shown}  {rate:.2f} it/s  ETA {eta}"


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
             enabled: bool = True, period: int | None = None, initial: int = 0, leave: bool = True
             ) -> tqdm | PlainProgress:
    """A tqdm bar when stderr is a terminal, else ``PlainProgress`` lines every ``period`` items
    (by default about ``LINES_PER_RUN`` over the total). ``enabled=False``: silent either way."""
    if stderr_is_terminal():
        return tqdm(iterable, total=total, desc=desc, initial=initial, leave=leave, disable=not enabled,
                    dynamic_ncols=True)
    return PlainProgress(iterable, total=total, desc=desc, period=period, initial=initial, enabled=enabled)
