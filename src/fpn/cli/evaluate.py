"""``fpn eval``: box AP and proposal AR of a checkpoint (``fpn.jobs.evaluation``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fpn.cli.options import add_checkpoint, add_overrides, add_precision

NAME = "eval"


def add_parser(sub) -> None:
    p = sub.add_parser(NAME, help="box AP and proposal AR of a checkpoint (pycocotools)")
    add_checkpoint(p)
    add_overrides(p, "data.val_images=...")
    p.add_argument("--output", type=Path, default=None, help="where to write metrics (default: beside)")
    add_precision(p, default="fp32")


def run(args: argparse.Namespace, progress: bool) -> None:
    from fpn.jobs.evaluation import describe_outputs, run_eval

    result, out = run_eval(args.checkpoint, args.overrides, output=args.output, progress=progress,
                           precision=args.precision, calibration=args.calibration, backend=args.backend)
    print(result.summary())
    print(describe_outputs(result, out))
