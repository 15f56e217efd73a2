"""``fpn bench``: inference or training speed against torchvision (``fpn.bench``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fpn.cli.options import positive_int

NAME = "bench"


def add_parser(sub) -> None:
    p = sub.add_parser(NAME, help="inference (or training) speed against torchvision on identical weights")
    p.add_argument("--train", action="store_true",
                   help="training steps instead: R50-FPN at 512 and 800 px, and the demo preset")
    p.add_argument("--repeats", type=positive_int, default=None,
                   help="timed runs per row (default: 3, 5 with --train)")
    p.add_argument("--quick", action="store_true",
                   help="only the 512x512 input, small scaling tables at 512 px and no ONNX Runtime rows "
                        "(with --train: no 800 px row)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch threads (default: torch's choice)")
    p.add_argument("--output", type=Path, default=None, help="also write the Markdown report here")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "int8", "all"], default="all",
                   help="rows at this precision besides fp32 (default all: bf16 and int8, with --train "
                        "bf16; auto: the one this CPU would choose)")
    p.add_argument("--backend", choices=["all", "pytorch", "onnxruntime", "openvino"], default="all",
                   help="runtimes with rows besides PyTorch (default all: ONNX Runtime and OpenVINO, fp32 "
                        "and int8; not with --quick or --train)")


def run(args: argparse.Namespace, progress: bool) -> None:
    from fpn.bench.command import run_bench

    run_bench(train=args.train, repeats=args.repeats, quick=args.quick, threads=args.threads,
              precision=args.precision, backend=args.backend, output=args.output)
