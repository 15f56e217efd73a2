"""What ``fpn bench`` runs: the inference benchmark (``inference.run``) or, with ``train``, the
training one (``training.run``); the report printed and, with ``output``, written."""

from __future__ import annotations

from pathlib import Path

from fpn.bench import inference, training
from fpn.bench.common import publish_report


def run_bench(*, train: bool = False, repeats: int | None = None, quick: bool = False,
              threads: int | None = None, precision: str = "all", backend: str = "all",
              output: Path | None = None) -> None:
    """``repeats`` timed runs per row (default: 3 for inference, 5 for training); ``backend`` only
    for inference (training runs PyTorch alone)."""
    if train:
        report = training.run(repeats=repeats or 5, quick=quick, threads=threads, precision=precision)
    else:
        report = inference.run(repeats=repeats or 3, quick=quick, threads=threads, precision=precision,
                               backend=backend)
    publish_report(report, output)
