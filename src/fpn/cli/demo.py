"""``fpn demo``: synthesise, train, evaluate and draw in one go (``fpn.jobs.demo``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fpn.cli.options import add_overrides

NAME = "demo"


def add_parser(sub) -> None:
    p = sub.add_parser(NAME, help="synthesise data, train a CPU-sized FPN, evaluate, draw")
    add_overrides(p, "train.max_iter=300")
    p.add_argument("--output", type=Path, default=Path("runs/demo"),
                   help="run directory (default: runs/demo)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over instead of resuming the run in --output (deletes its checkpoints)")


def run(args: argparse.Namespace, progress: bool) -> None:
    from fpn.jobs.demo import run_demo

    run_demo(args.output, overrides=args.overrides, progress=progress, overwrite=args.overwrite)
