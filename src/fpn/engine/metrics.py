"""Where training's numbers go: ``metrics.jsonl`` in the run folder, and TensorBoard when installed.

A record is a dict with ``step`` and either the loss terms and learning rate of a step or
``eval`` (the numbers of an evaluation). ``MetricsLog`` hands each record to its sinks; a sink is
anything with ``write(record)`` and ``close()``, so another format (a CSV, a plot) is one class.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Protocol


class Sink(Protocol):
    def write(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class JsonLinesSink:
    """One JSON object a line, appended to ``path`` and flushed at once (a killed run keeps them),
    with the seconds since the log was opened as ``time``."""

    def __init__(self, path: Path):
        self.file = Path(path).open("a")
        self.start = time.perf_counter()

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps({**record, "time": time.perf_counter() - self.start}) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class TensorBoardSink:
    """Scalars under ``train/`` (loss terms, lr) and ``eval/`` (an evaluation's numbers)."""

    def __init__(self, writer: Any):
        self.writer = writer

    @classmethod
    def if_installed(cls, log_dir: Path) -> TensorBoardSink | None:
        """A sink writing into ``log_dir`` when tensorboard is installed, else None."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        return cls(SummaryWriter(str(log_dir)))

    def write(self, record: dict[str, Any]) -> None:
        scalars = record.get("eval", record)
        prefix = "eval/" if "eval" in record else "train/"
        for key, value in scalars.items():
            if key != "step" and isinstance(value, float):
                self.writer.add_scalar(prefix + key, value, record["step"])

    def close(self) -> None:
        self.writer.close()


class MetricsLog:
    """Hands every record to each of its sinks."""

    def __init__(self, sinks: list[Sink] | None = None):
        self.sinks = list(sinks or [])
        self.start = time.perf_counter()

    @classmethod
    def for_run(cls, run_dir: Path, *, enabled: bool) -> MetricsLog:
        """``run_dir/metrics.jsonl`` and ``run_dir/tensorboard`` (when installed); nothing when not
        ``enabled`` (the ranks other than 0 under torchrun)."""
        if not enabled:
            return cls()
        board = TensorBoardSink.if_installed(Path(run_dir) / "tensorboard")
        return cls([JsonLinesSink(Path(run_dir) / "metrics.jsonl"), *([board] if board else [])])

    def write(self, record: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.write(record)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
