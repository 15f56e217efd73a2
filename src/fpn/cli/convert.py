"""``fpn convert``: another library's Faster R-CNN weights as an fpn run (``fpn.jobs.conversion``)."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "convert"


def add_parser(sub) -> None:
    p = sub.add_parser(NAME,
                       help="torchvision, detectron2 or mmdetection Faster R-CNN weights -> an fpn run")
    p.add_argument("weights", type=Path, help="a .pkl (detectron2 model zoo), .pth/.pt or .safetensors file "
                                              "(no pickled code is run)")
    p.add_argument("--output", type=Path, required=True, help="run directory to write")
    p.add_argument("--from", dest="library", choices=["torchvision", "detectron2", "mmdetection"],
                   default=None, help="the library that wrote the weights (default: recognised by key names)")


def run(args: argparse.Namespace, progress: bool) -> None:
    from fpn.jobs.conversion import run_convert

    description, path = run_convert(args.weights, args.output, library=args.library)
    print(f"{description}; wrote {path}: use {args.output} with fpn predict / fpn eval")
