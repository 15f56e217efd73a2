"""``fpn proposals``: an RPN's proposals for every image of a split (``fpn.jobs.proposals``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fpn.cli.options import add_overrides

NAME = "proposals"


def add_parser(sub) -> None:
    p = sub.add_parser(NAME, help="write the RPN proposals of a run for every image of a split")
    p.add_argument("checkpoint", type=Path, help="a run of the RPN alone or of Faster R-CNN")
    add_overrides(p, "model.rpn.post_nms_top_n_test=2000")
    p.add_argument("--split", choices=["train", "val"], required=True,
                   help="the split whose images get proposals")
    p.add_argument("--output", type=Path, required=True, help="the proposal file to write")


def run(args: argparse.Namespace, progress: bool) -> None:
    from fpn.jobs.proposals import run_proposals

    result = run_proposals(args.checkpoint, args.split, args.output, args.overrides, progress=progress)
    print(f"wrote {result['path']}: proposals for {result['images']} {args.split} images"
          + (f" ({len(result['skipped'])} unreadable skipped)" if result["skipped"] else ""))
