"""``fpn synth``: the built-in synthetic benchmark, written in COCO format."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "synth"


def add_parser(sub) -> None:
    p = sub.add_parser(NAME, help="generate the built-in synthetic benchmark (COCO format)")
    p.add_argument("out_dir", type=Path, help="the folder to write train/ and val/ into")
    p.add_argument("--train", type=int, default=400, help="training images (default 400)")
    p.add_argument("--val", type=int, default=100, help="validation images (default 100)")
    p.add_argument("--image-size", type=int, default=512, help="side of the square images (default 512)")
    p.add_argument("--seed", type=int, default=0, help="the random stream (default 0)")
    p.add_argument("--pretrain", type=int, default=0,
                   help="images of a pre-training split (for fpn pretrain; default 0: none)")
    p.add_argument("--variant", default="shapes",
                   help="shapes (the demo's) or context (small objects whose class their surroundings "
                        "tell; docs/benchmarks.md)")
    p.add_argument("--geometry", default="scaled", choices=["scaled", "paper"],
                   help="object sizes: scaled with the image (default) or paper: in pixels like COCO's "
                        "objects at 800 px, 41/34/25%% small/medium/large (context variant only)")
    p.add_argument("--calibration", type=int, default=0,
                   help="images of a calibration split, to choose schedules on (default 0: none)")


def run(args: argparse.Namespace, progress: bool) -> None:
    from fpn.data import synthetic

    stats = synthetic.generate(args.out_dir, num_train=args.train, num_val=args.val,
                               num_pretrain=args.pretrain, num_calibration=args.calibration,
                               image_size=args.image_size, seed=args.seed, variant=args.variant,
                               geometry=args.geometry, progress=progress)
    print(f"wrote {args.out_dir}: {stats}")
