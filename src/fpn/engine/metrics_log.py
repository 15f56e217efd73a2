"""Where training's numbers go, in the run folder: ``metrics.jsonl`` (the record of truth),
``metrics.csv`` (the same numbers as a table), ``curves.png`` (redrawn at each evaluation and at
the end), and TensorBoard's event files in ``tensorboard/`` when it is installed (the
``tensorboard`` extra; ``tensorboard --logdir runs``).

A record is a dict with ``step`` and either the loss terms and learning rate of a step or
``eval`` (the numbers of an evaluation). ``MetricsLog`` hands each record to its sinks; a sink is
anything with ``write(record)`` and ``close()``, so another format is one class. The CSV and the
picture start from the records already in ``metrics.jsonl`` (a resumed run, its log trimmed to
its checkpoint), so they always show the whole run.

Reading the log back: a process killed while writing (SIGKILL, power loss) can leave the last
line half-written, and a file from an older fpn may hold such a line in the middle, where a
resumed run appended after it. Readers (training curves, reports, resume) go through
``read_metrics``, which skips a line that is not a JSON object: silently for an unterminated last
line, with a warning naming the line otherwise. ``write_metrics`` replaces the file atomically
(a resumed run trims it this way).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from pathlib import Path
from typing import Any, Protocol

from fpn.engine.atomic_files import atomic_write_bytes

log = logging.getLogger(__name__)

METRICS_FILE, CSV_FILE, CURVES_FILE = "metrics.jsonl", "metrics.csv", "curves.png"


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


def flat_numbers(record: dict[str, Any]) -> dict[str, float | int]:
    """A record's numbers in one level: ``step``, the loss terms and lr, or an evaluation's numbers
    under their own names (AP, AP50, ...) and ``eval_seconds``; the log's ``time`` left out."""
    flat: dict[str, float | int] = {"step": record["step"]}
    items = [*record.get("eval", {}).items(), *record.items()] if isinstance(record.get("eval"), dict) \
        else record.items()
    for key, value in items:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if key not in ("step", "time", "eval") and number:
            flat[key] = value
    return flat


class CsvSink:
    """``metrics.csv``: a row per record (a step's losses and lr, or an evaluation's numbers), a
    column for every number from the record it first appears in. Rows are appended; when a record
    brings a new column (the first evaluation) the file is rewritten, atomically, with it."""

    def __init__(self, path: Path, records: list[dict[str, Any]] = ()):
        self.path = Path(path)
        self.rows = [flat_numbers(r) for r in records if isinstance(r.get("step"), int)]
        self.columns: list[str] = []
        for row in self.rows:
            self.columns += [key for key in row if key not in self.columns]
        self._rewrite()

    def write(self, record: dict[str, Any]) -> None:
        row = flat_numbers(record)
        self.rows.append(row)
        new = [key for key in row if key not in self.columns]
        if new:
            self.columns += new
            self._rewrite()
            return
        with self.path.open("a", newline="") as file:
            csv.DictWriter(file, self.columns).writerow(row)

    def _rewrite(self) -> None:
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, self.columns or ["step"])
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_bytes(self.path, text.getvalue().encode())

    def close(self) -> None:
        pass


class CurvesSink:
    """``curves.png`` (``fpn.engine.training_curves.plot_training_curves``), redrawn after every evaluation
    and when the log closes (the end of training, or its failure). A picture that cannot be drawn
    is a warning, never the end of a run."""

    def __init__(self, path: Path, records: list[dict[str, Any]] = ()):
        self.path, self.records = Path(path), list(records)
        self.drawn = -1  # how many records the picture shows

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if "eval" in record:
            self.draw()

    def draw(self) -> None:
        from fpn.engine.training_curves import plot_training_curves

        try:
            plot_training_curves(self.records, self.path)
            self.drawn = len(self.records)
        except Exception as err:  # noqa: BLE001  (a plot must not cost a training run)
            log.warning("%s not drawn: %s: %s", self.path, type(err).__name__, err)

    def close(self) -> None:
        if self.records and self.drawn != len(self.records):
            self.draw()


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
        """``metrics.jsonl``, ``metrics.csv``, ``curves.png`` and ``tensorboard/`` (when installed)
        in ``run_dir``; nothing when not ``enabled`` (the ranks other than 0 under torchrun)."""
        if not enabled:
            return cls()
        run_dir = Path(run_dir)
        earlier = read_metrics(run_dir / METRICS_FILE) if (run_dir / METRICS_FILE).is_file() else []
        board = TensorBoardSink.if_installed(run_dir / "tensorboard")
        return cls([JsonLinesSink(run_dir / METRICS_FILE), CsvSink(run_dir / CSV_FILE, earlier),
                    CurvesSink(run_dir / CURVES_FILE, earlier), *([board] if board else [])])

    def write(self, record: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.write(record)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics log, in order; lines that are not a JSON object are skipped."""
    path = Path(path)
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        elif number == len(lines):  # no newline after it: a write cut short
            log.info("%s: the last line is incomplete (a write cut short); skipped", path)
        else:
            log.warning("%s: line %d is not a JSON record; skipped", path, number)
    return records


def write_metrics(path: str | Path, records: list[dict[str, Any]]) -> None:
    """Replace the metrics log with ``records``, atomically."""
    atomic_write_bytes(Path(path), "".join(json.dumps(r) + "\n" for r in records).encode())
