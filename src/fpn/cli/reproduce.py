"""``fpn reproduce``: the paper's tables in miniature (``fpn.reproduction``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fpn.cli.options import HELP, positive_int

NAME = "reproduce"


def add_parser(sub) -> None:
    p = sub.add_parser(NAME,
                       help="the paper's Tables 1, 2, 3 and 6 in miniature: train, evaluate, report")
    p.add_argument("--quick", action="store_true",
                   help="a step per row, on a tiny set (under a minute on a quiet 2-core machine)")
    p.add_argument("--seeds", type=positive_int, default=None,
                   help="seeds for every row of Tables 1-3 (default: 3; 2 with --quick)")
    p.add_argument("--data-seed", type=int, default=0,
                   help="the benchmark generator's seed: another draw of the data (default 0)")
    p.add_argument("--rows", default="",
                   help="only these rows, comma-separated (e.g. table2_c,table2_d; default: all)")
    p.add_argument("--calibrate", default="", metavar="TABLE",
                   help="instead of the study: the learning-rate sweep and evaluation curves that choose "
                        "TABLE's schedule (1, 2 or 3), written to OUTPUT/calibration/")
    p.add_argument("--output", type=Path, default=Path("reports/reproduction"), help="where the report goes")
    p.add_argument("--work", type=Path, default=Path("runs/reproduction"),
                   help="data and training runs (a killed reproduction continues from here)")
    p.add_argument("--jobs", type=positive_int, default=1,
                   help="train this many runs at once, each with cores/JOBS threads (on 2 cores, 2 jobs "
                        "did about 1.45x the work per hour of 1; default 1)")
    p.add_argument("--report-only", action="store_true",
                   help="write the report of the runs finished so far; train nothing (safe while a study "
                        "runs in the same --work)")
    p.add_argument("--retrain-stale", action="store_true",
                   help="move runs made with another config than the code makes now to WORK/.../stale/ "
                        "and train them again (without it they stop the study; nothing is deleted)")
    p.add_argument("--device", default="auto", help=HELP["device"])


def run(args: argparse.Namespace, progress: bool) -> None:
    from fpn.reproduction.command import reproduce

    reproduce(calibrate=args.calibrate, rows=args.rows, quick=args.quick, seeds=args.seeds,
              data_seed=args.data_seed, output=args.output, work=args.work, device=args.device,
              jobs=args.jobs,
              retrain_stale=args.retrain_stale, report_only=args.report_only)
