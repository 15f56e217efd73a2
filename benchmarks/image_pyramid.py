"""The featurized image pyramid (docs/paper.md §7) against FPN: inference time in one run.

    python benchmarks/image_pyramid.py [--repeats 3] [--baseline c5] [--output reports/x.md]

On one random 800x1333 image: the paper's FPN detector (``paper_r50_fpn``, shorter side 800)
against a single-scale detector (``ablation_b_c5`` by default, or ``ablation_a_c4``) on a
5-scale image pyramid, and the same single-scale detector at 800 alone for reference. ResNet-50,
random weights, 90 object classes + background (torchvision's 91 outputs). The scales are the
multi-scale test scales of SPPnet / Fast R-CNN, the image pyramids the FPN paper cites:
shorter sides 480, 576, 688, 864, 1200 with the longer side capped at 2000.

Times are medians over ``--repeats`` after one warm-up; the systems are timed in turn within
each repeat, so a change in the machine's load hits all of them alike, and the ratios are
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
from fpn.model.detector import FasterRCNN

SCALES = [480, 576, 688, 864, 1200]
MAX_SIZE = 2000
IMAGE_HW = (800, 1333)


def build(preset: str, overrides: list[str]) -> FasterRCNN:
    torch.manual_seed(0)
    cfg = load_config(preset, ["model.roi_heads.num_classes=90", *overrides])
    return FasterRCNN(cfg.model).eval()


def seconds(model: FasterRCNN, image: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    start = time.perf_counter()
    with torch.inference_mode():
        out = model([image], return_proposals=True)[0]
    return time.perf_counter() - start, out


def network_input(model: FasterRCNN, image: torch.Tensor, min_size: int) -> str:
    """The resized size the network sees at shorter side ``min_size`` (before padding)."""
    h, w = model.preprocess([image], min_size=min_size)[0].image_sizes[0]
    return f"{h}x{w}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", choices=["c4", "c5"], default="c5")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--output", type=Path, default=None, help="also write the Markdown table here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = {"c4": "ablation_a_c4", "c5": "ablation_b_c5"}[args.baseline]
    image = torch.rand(3, *IMAGE_HW, generator=torch.Generator().manual_seed(0))
    scales = ",".join(map(str, SCALES))
    fpn, single = build("paper_r50_fpn", []), build(preset, [])
    pyramid = build(preset, [f"model.input.test_scales=[{scales}]", f"model.input.max_size={MAX_SIZE}"])
    name = args.baseline.upper()
    systems = {
        "FPN (paper_r50_fpn), one scale": (fpn, network_input(fpn, image, 800)),
        f"{name} ({preset}), one scale": (single, network_input(single, image, 800)),
        f"{name} ({preset}), image pyramid of {len(SCALES)} scales": (
            pyramid, " + ".join(network_input(pyramid, image, s) for s in SCALES)),
    }
    times: dict[str, list[float]] = {name: [] for name in systems}
    counts: dict[str, tuple[int, int]] = {}
    for repeat in range(args.repeats + 1):  # the first round is the warm-up
        for name, (model, _) in systems.items():
            elapsed, out = seconds(model, image)
            counts[name] = (len(out["boxes"]), len(out["proposals"]))
            if repeat:
                times[name].append(elapsed)
            print(f"round {repeat}: {name}: {elapsed:.2f} s", flush=True)
    reference = statistics.median(times[next(iter(systems))])
    lines = [
        f"{datetime.date.today()}, torch {torch.__version__}, {torch.get_num_threads()} threads on "
        f"{os.cpu_count()} CPU cores; one random {IMAGE_HW[0]}x{IMAGE_HW[1]} image; ResNet-50, random "
        f"weights, 91 outputs; median of {args.repeats} after a warm-up",
        "",
    ]
    rows = []
    for name, (_, sizes) in systems.items():
        median = statistics.median(times[name])
        rows.append([name, sizes, f"{median:.2f}", f"{median / reference:.2f}", *map(str, counts[name])])
    header = ["system", "network input(s)", "s", "ratio to FPN", "detections", "proposals"]
    lines.append(markdown_table(header, rows))
    publish_report("\n".join(lines), args.output)


if __name__ == "__main__":
    main()
