"""The accuracy gates of the low precisions, measured in one process (``fpn.bench.gates``):

    python benchmarks/precision_gates.py [--run runs/demo] [--photos ../shared/data/coco-real-160]
        [--images 3] [--size 320 427] [--weights FILE.pth] [--output reports/precision_gates.md]

1. the demo run (``fpn demo`` makes it): box AP at fp32, bf16 and int8 on its validation set; the
   gate is bf16 within 0.5 AP of fp32, int8 within 1.0;
2. torchvision R50-FPN weights on real photos: of fp32's detections above 0.5, the share each
   precision keeps (same label, IoU >= 0.9); the gate is 95%. Without ``--weights`` (a torchvision
   ``fasterrcnn_resnet50_fpn`` checkpoint) the weights are ``fpn.bench.standin.probed_standin``,
   fitted to the first ``--images`` photos of the folder, which are then measured.

Where the CPU has no native bf16 (AVX2), bf16's convolutions and fc layers run as
``fpn.bench.gates.emulated_bf16_kernels``: the numbers of the native kernels, at fp32's speed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from fpn.bench.common import markdown_table, publish_report
from fpn.bench.gates import MATCHED_FRACTION, demo_ap_table, torchvision_agreement
from fpn.bench.standin import annotated_photos
from fpn.hardware import describe_machine
from fpn.model.precision import GATES_PASSED

AGREEMENT_HEADER = ["precision", "fp32 detections > 0.5 kept", "share", "gate", "result",
                    "in GATES_PASSED", "seconds"]


def agreement_table(args: argparse.Namespace) -> str:
    photos, targets = annotated_photos(args.photos, args.images)
    weights = None
    if args.weights:
        from fpn.safe_reading import read_checkpoint

        weights = read_checkpoint(args.weights)
    rows = []
    for precision in ("bf16", "int8"):
        start = time.perf_counter()
        matched, total = torchvision_agreement(photos, targets, [precision], size=tuple(args.size),
                                               weights=weights)[precision]
        share = matched / total if total else float("nan")
        rows.append([precision, f"{matched}/{total}", f"{share:.1%}", f">= {MATCHED_FRACTION:.0%}",
                     "passed" if share >= MATCHED_FRACTION else "FAILED",
                     "yes" if precision in GATES_PASSED["torchvision"] else "no",
                     f"{time.perf_counter() - start:.0f}"])
        print(markdown_table(AGREEMENT_HEADER, rows[-1:]), flush=True)
    what = args.weights or "the probed stand-in (fpn.bench.standin, seed 0)"
    return (f"torchvision R50-FPN weights: {what}; the first {args.images} photos of {args.photos}, "
            f"shorter side {args.size[0]} (longer at most {args.size[1]})\n\n"
            + markdown_table(AGREEMENT_HEADER, rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/demo"))
    parser.add_argument("--photos", type=Path, default=Path("../shared/data/coco-real-160"))
    parser.add_argument("--images", type=int, default=3, help="photos fitted and measured")
    parser.add_argument("--size", type=int, nargs=2, default=[320, 427], metavar=("SHORT", "LONG"))
    parser.add_argument("--weights", type=Path, default=None, help="real torchvision weights, if at hand")
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    report = [f"machine: {describe_machine()}; {torch.get_num_threads()} threads\n"]
    if not args.skip_demo:
        report += ["Box AP of the demo run per precision:\n",
                   demo_ap_table(args.run, ["fp32", "bf16", "int8"]), ""]
    report += ["Agreement with fp32 on torchvision weights:\n", agreement_table(args)]
    publish_report("\n".join(report), args.output)


if __name__ == "__main__":
    main()
