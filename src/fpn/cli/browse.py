"""``fpn browse``: a dataset looked at, or checked, before training (``fpn.jobs.browse``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fpn.cli.options import HELP
from fpn.errors import ConfigError

NAME = "browse"


def add_parser(sub) -> None:
    p = sub.add_parser(
        NAME, help="look at a dataset before training: ground truth drawn, class counts, object sizes, "
                       "the share of objects per pyramid level",
        description="Draws the ground truth of a few images into DIR/gt/ and writes class_counts.png, "
        "object_sizes.png (COCO's small/medium/large buckets), levels.png (the pyramid level Eq. 1 gives "
        "each object under --config) and summary.json. DATA: a COCO annotation file, a folder with "
        "annotations.json (and images/), an `fpn synth` folder, a Pascal VOC root or a YOLO folder "
        "(data.yaml or classes.txt beside labels/); none: the config's data. --check: list every problem "
        "of the dataset instead (exit 1 if any).")
    p.add_argument("data", type=Path, nargs="?", default=None, metavar="DATA",
                   help="the dataset to look at (default: the config's data)")
    p.add_argument("--output", type=Path, default=None, help="where the pictures and charts go")
    p.add_argument("--check", action="store_true",
                   help="only check: every record a command would refuse or skip, counted by kind with the "
                        "first examples (exit 1 if any); writes nothing")
    p.add_argument("--images", type=Path, default=None,
                   help="the image folder of a COCO annotation file (default: images/ beside it, or its "
                        "folder)")
    p.add_argument("--split", default="train", help="VOC's ImageSets/Main list, or the split of an "
                   "`fpn synth` folder or of the config's data (default train)")
    p.add_argument("--config", default="demo",
                   help="preset or YAML whose model the levels are for (default demo)")
    p.add_argument("--num-images", type=int, default=16, help="images drawn (default 16)")
    p.add_argument("--colour-by", choices=["class", "level"], default="class", help=HELP["colour_by"])


def run(args: argparse.Namespace, progress: bool) -> int | None:
    from fpn.jobs.browse import check_dataset, run_browse

    if args.check:
        report = check_dataset(args.data, images=args.images, split=args.split, config=args.config)
        print(report.text())
        return 0 if report.clean else 1
    if args.output is None:
        raise ConfigError("fpn browse: --output DIR is needed for the pictures and charts (or --check)")
    summary = run_browse(args.data, args.output, images=args.images, split=args.split, config=args.config,
                         num_images=args.num_images, colour_by=args.colour_by)
    print(summary.text())
    charts = ", ".join(summary.charts) or "no charts (pip install matplotlib)"
    print(f"wrote {len(summary.drawn)} drawn images in {args.output / 'gt'}, {charts} and summary.json "
          f"in {args.output}")
