"""``fpn pretrain``: a backbone pre-trained as a classifier of object crops (``fpn.jobs.pretraining``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fpn.cli.options import HELP, add_overrides

NAME = "pretrain"


def add_parser(sub) -> None:
    p = sub.add_parser(NAME, help="pre-train a backbone as a classifier of object crops "
                       "(a start for backbones without ImageNet weights; then fpn train --init RUN)")
    p.add_argument("--config", default="demo", help=HELP["config"])
    add_overrides(p, "pretrain.iters=2000")
    p.add_argument("--output", type=Path, default=Path("runs/pretrain"),
                   help="run directory (default: runs/pretrain)")


def run(args: argparse.Namespace, progress: bool) -> None:
    from fpn.config.files import load_config
    from fpn.jobs.pretraining import describe, run_pretrain

    result = run_pretrain(load_config(args.config, args.overrides), args.output, progress=progress)
    print(f"{describe(result)}; backbone in {args.output} (use it with fpn train --init {args.output})")
