"""A training step on an image with 10, 100 and 1000 ground-truth boxes: time and peak memory.

    python benchmarks/dense_boxes.py [--size 512]

Anchor matching builds the anchors x boxes IoU matrix in chunks of a fixed number of elements
(``fpn.model.boxes.match_anchors``), so memory stays bounded as the box count grows; the table
also gives the size the whole matrix would have had.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fpn.bench.common import PeakRSS, markdown_table
from fpn.config.files import load_config
from fpn.model.detector import FasterRCNN


def step_time(model, images, targets, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        losses = model(images, targets)
        sum(losses.values()).backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    size = args.size
    cfg = load_config("demo", [f"model.input.min_size_train=[{size}]", f"model.input.max_size={size}"]).model
    torch.manual_seed(0)
    model = FasterRCNN(cfg).train()
    image = [torch.rand(3, size, size)]
    rows = []
    for count in (10, 100, 1000):
        xy = torch.rand(count, 2) * (size - 40)
        boxes = torch.cat([xy, xy + 8 + torch.rand(count, 2) * 32], dim=1)
        targets = [{"boxes": boxes, "labels": torch.randint(1, cfg.roi_heads.num_classes + 1, (count,))}]
        with PeakRSS() as mem:
            seconds = step_time(model, image, targets)
        anchors = sum(3 * (size // s) ** 2 for s in (4, 8, 16, 32, 64))
        rows.append([str(count), f"{seconds:.3f}", f"{mem.growth:.0f}", f"{anchors * count * 4 / 2**20:.0f}"])
    print(f"demo preset at {size}x{size}, {torch.get_num_threads()} threads, median of 3 steps\n")
    print(markdown_table(["boxes", "step s", "peak growth MiB", "whole IoU matrix would be MiB"], rows))


if __name__ == "__main__":
    main()
