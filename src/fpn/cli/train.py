"""``fpn train``: train a detector (``fpn.jobs.training``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fpn.cli.options import add_overrides

NAME = "train"


def add_parser(sub) -> None:
    p = sub.add_parser(NAME, help="train a detector")
    p.add_argument("--config", default=None,
                   help="a preset name or a YAML file (default: demo; with --resume, the run's own config)")
    add_overrides(p, "train.base_lr=0.01")
    p.add_argument("--output", type=Path, default=Path("runs/train"),
                   help="run directory (default: runs/train)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --output from its last checkpoint, with its own config; "
                        "only the schedule's length (train.max_iter, train.lr_steps), periods, device and "
                        "evaluation settings may be changed")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in a folder that holds a run: delete its checkpoints, metrics and "
                        "evaluations first")
    p.add_argument("--no-eval", action="store_true", help="skip evaluation")
    p.add_argument("--init", action="append", default=[], type=Path, metavar="WEIGHTS",
                   help="start from these weights (repeatable; appended to train.init): an fpn run, a "
                        "torchvision/detectron2/mmdetection detector checkpoint, or a torchvision "
                        "ImageNet ResNet (.pth) for the backbone")


def run(args: argparse.Namespace, progress: bool) -> None:
    from fpn.jobs.training import requested_config, run_train

    cfg = requested_config(args.config, args.overrides, args.output, resume=args.resume, init=args.init)
    result = run_train(cfg, args.output, resume=args.resume, overwrite=args.overwrite, progress=progress,
                       evaluate=not args.no_eval)
    if result["evaluation"] is not None:
        print(result["evaluation"].summary())
    print(f"trained {result['step']} steps in {result['seconds'] / 60:.1f} min; run in {args.output}")
