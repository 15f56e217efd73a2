"""``fpn export``: a run as one ONNX graph or OpenVINO IR (``fpn.jobs.export``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fpn.cli.options import HELP, add_checkpoint, add_overrides

NAME = "export"


def add_parser(sub) -> None:
    p = sub.add_parser(NAME, help="a checkpoint -> one ONNX graph (any image size) for ONNX Runtime, "
                       "or OpenVINO IR")
    add_checkpoint(p)
    add_overrides(p, "model.roi_heads.score_thresh=0.3")
    p.add_argument("--format", choices=["onnx", "openvino"], default="onnx",
                   help="onnx (default), or openvino: OpenVINO IR (NAME.xml, NAME.bin) from the same graph")
    p.add_argument("--output", type=Path, required=True, help="the .onnx (or OpenVINO .xml) file to write")
    p.add_argument("--precision", choices=["fp32", "int8"], default="fp32",
                   help="openvino only: int8 is NNCF post-training quantization (default fp32)")
    p.add_argument("--calibration", action="append", type=Path, default=None, metavar="PATH",
                   help=HELP["calibration"].format(""))
    p.add_argument("--verify-image", type=Path, default=None,
                   help="an image for the exported vs PyTorch check (default: a random one)")
    p.add_argument("--no-verify", action="store_true", help="skip the exported vs PyTorch check")


def run(args: argparse.Namespace, progress: bool) -> None:
    from fpn.jobs.export import run_export

    print(f"exporting to {args.output} (tracing the eval path; about half a minute)", flush=True)
    report = run_export(args.checkpoint, args.output, overrides=args.overrides,
                        verify_outputs=not args.no_verify, verify_image=args.verify_image,
                        format=args.format, precision=args.precision, calibration=args.calibration)
    print("\n".join(report.lines()))
