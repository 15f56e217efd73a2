"""Segment proposals (docs/paper.md §5) beside Faster R-CNN: inference time per image in one run.

    python benchmarks/segment_proposals.py [--repeats 2] [--threads N] [--output reports/x.md]

On one random 800x1333 image (shorter side 800, as the paper): the paper's Faster R-CNN + FPN
(``paper_r50_fpn``, d = 256) against the segment-proposal presets ``segprop_5x5``,
``segprop_7x7`` and ``segprop_dual`` (d = 128, 512-channel MLPs, 14x14 masks, 1000 proposals),
and the ResNet-50 + FPN (d = 128) pyramid alone for reference. Random weights, the same backbone.

Segment proposals are timed as the paper times them: one forward pass of the pyramid and the
MLPs, masks computed for the 1000 best positions (``paste_masks=False``). Pasting those 1000
masks into the image and encoding them as COCO RLE (what ``fpn eval`` does next) is timed
separately. Times are medians over ``--repeats`` after one warm-up; the systems are timed in turn
within each repeat, so a change in the machine's load hits all of them alike, and the ratios are
taken within this one run.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time
from pathlib import Path

import torch

from fpn.bench.common import markdown_table, publish_report
from fpn.config.files import load_config
from fpn.evaluation.coco import encode_mask_proposals
from fpn.model.detector import FasterRCNN

IMAGE_HW = (800, 1333)
SEGMENT_PRESETS = ["segprop_5x5", "segprop_7x7", "segprop_dual"]


def build(preset: str) -> FasterRCNN:
    torch.manual_seed(0)
    return FasterRCNN(load_config(preset).model).eval()


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    with torch.inference_mode():
        out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--output", type=Path, default=None, help="also write the Markdown table here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    image = torch.rand(3, *IMAGE_HW, generator=torch.Generator().manual_seed(0))
    faster = build("paper_r50_fpn")
    segments = {preset: build(preset) for preset in SEGMENT_PRESETS}
    pyramid = segments["segprop_5x5"]

    def pyramid_alone():
        batch, _ = pyramid.preprocess([image])
        return pyramid.features(batch.tensor)

    systems = {"Faster R-CNN + FPN (paper_r50_fpn, d = 256)": lambda: faster([image])[0],
               "ResNet-50 + FPN alone (d = 128)": pyramid_alone}
    for preset, model in segments.items():
        systems[f"segment proposals ({preset})"] = lambda model=model: model([image], paste_masks=False)[0]
    threshold = pyramid.cfg.segment_proposals.mask_threshold
    times: dict[str, list[float]] = {name: [] for name in systems}
    paste_times: dict[str, list[float]] = {name: [] for name in systems}
    for repeat in range(args.repeats + 1):  # the first round is the warm-up
        for name, fn in systems.items():
            elapsed, out = timed(fn)
            if repeat:
                times[name].append(elapsed)
            if "mask_probs" in out:
                pasted, _ = timed(lambda out=out: encode_mask_proposals(
                    out["mask_probs"], out["mask_regions"], IMAGE_HW, threshold=threshold))
                if repeat:
                    paste_times[name].append(pasted)
            print(f"round {repeat}: {name}: {elapsed:.2f} s", flush=True)
    reference = statistics.median(times[next(iter(systems))])
    lines = [
        f"{datetime.date.today()}, torch {torch.__version__}, {torch.get_num_threads()} threads on "
        f"{os.cpu_count()} CPU cores; one random {IMAGE_HW[0]}x{IMAGE_HW[1]} image (network input "
        f"{IMAGE_HW[0]}x{IMAGE_HW[1]}, padded to 800x1344); ResNet-50, random weights; median of "
        f"{args.repeats} after a warm-up",
        "",
    ]
    rows = []
    for name in systems:
        median = statistics.median(times[name])
        paste = f"{statistics.median(paste_times[name]):.2f}" if paste_times[name] else "-"
        rows.append([name, f"{median:.2f}", f"{median / reference:.2f}", paste])
    lines.append(markdown_table(["system", "s / image", "ratio to Faster R-CNN",
                                 "+ paste 1000 masks and RLE, s"], rows))
    publish_report("\n".join(lines), args.output)


if __name__ == "__main__":
    main()
