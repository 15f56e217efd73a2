"""Reading a run's ``metrics.jsonl``: one JSON record a line, appended as training goes.

A process killed while writing (SIGKILL, power loss) can leave the last line half-written, and a
file from an older fpn may hold such a line in the middle, where a resumed run appended after it.
Readers (training curves, reports, resume) go through ``read_metrics``, which skips a line that
is not a JSON object: silently for an unterminated last line, with a warning naming the line
otherwise. ``write_metrics`` replaces the file atomically (a resumed run trims it this way).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from fpn.engine.atomic_files import atomic_write_bytes

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


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
