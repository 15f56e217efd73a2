"""``fpn predict``: detections for images, folders and videos (``fpn.jobs.prediction``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fpn.cli.options import HELP, add_checkpoint, add_overrides, add_precision

NAME = "predict"


def add_parser(sub) -> None:
    p = sub.add_parser(
        NAME, help="detect objects in images, folders or videos",
        description="Write predictions.json (COCO-style: bbox x, y, width, height), predictions.csv "
        "(x1, y1, x2, y2) and drawn copies under DIR/drawn/, named after the inputs' paths relative to "
        "the folder they share; a video gives an annotated DIR/drawn/<path>.mp4 (needs the video extra).")
    add_checkpoint(p)
    p.add_argument("inputs", nargs="+", type=Path, help="images, videos or folders of them")
    add_overrides(p, "model.input.test_scales=[600,800]")
    p.add_argument("--output", type=Path, default=Path("predictions"),
                   help="folder for predictions.json, predictions.csv and the drawn images "
                        "(default: predictions)")
    p.add_argument("--score-thresh", type=float, default=0.5,
                   help="keep detections scored at least this, in predictions.json, predictions.csv and the "
                        "drawings alike (default 0.5; 0.05: all the detections the evaluation scores)")
    p.add_argument("--colour-by", choices=["class", "level"], default="class", help=HELP["colour_by"])
    p.add_argument("--device", default="auto", help=HELP["device"])
    add_precision(p, fallback=", else the input images")


def run(args: argparse.Namespace, progress: bool) -> None:
    from fpn.jobs.prediction import run_predict

    summary = run_predict(args.checkpoint, args.inputs, args.output, score_thresh=args.score_thresh,
                          device=args.device, progress=progress, overrides=args.overrides,
                          colour_by=args.colour_by, precision=args.precision, calibration=args.calibration,
                          backend=args.backend)
    print(f"wrote {summary.describe()}")
