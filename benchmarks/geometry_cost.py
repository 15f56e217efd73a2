"""What the paper geometry costs per training step against the first studies' scaled one.

One SGD step of a row's miniature detector (``fpn reproduce``'s config, random weights: the time
does not depend on them) on a batch of the row's own benchmark images, the two geometries
interleaved in one process so that the machine's load and speed cancel in the ratio: the scaled
geometry at 256 px (``--geometry scaled``, the first studies') against the paper's at the study's
image size (384 px). A study's training time scales with this ratio, its evaluations roughly with
the pixel count. Used for the study's budget (issue 34).

    python benchmarks/geometry_cost.py [--repeats 5] [--rows table1_c,table3_a,table3_b,table3_c]
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from fpn.bench.training import interleaved, optimizer_for, train_step
from fpn.data import synthetic
from fpn.hardware import machine_summary
from fpn.model.detector import FasterRCNN
from fpn.reproduction.plan import FULL, row_named
from fpn.reproduction.study import Reproduction


def benchmark_batch(geometry: str, image_size: int, batch: int, seed: int = 0):
    """``batch`` images of the context benchmark in ``geometry`` and their targets, in memory."""
    variant = synthetic.get_variant("context", geometry)
    images, targets = [], []
    for index in range(batch):
        pixels, objects = variant.make(np.random.default_rng([seed, index]), image_size, False)
        boxes = []
        for _, mask in objects:
            ys, xs = np.nonzero(mask)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        images.append(torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                        "labels": torch.tensor([k + 1 for k, _ in objects], dtype=torch.int64),
                        "sample_seed": index})
    return images, targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rows", default="table1_c,table1_f,table3_a,table3_b,table3_c")
    args = parser.parse_args()
    torch.manual_seed(0)
    settings = {"scaled, 256 px": replace(FULL, geometry="scaled", image_size=256),
                f"paper, {FULL.image_size} px": FULL}
    print(f"one training step of batch {FULL.batch_size}, median of {args.repeats}, interleaved; "
          f"{machine_summary()}\n")
    print("| row | " + " | ".join(f"{name} s/step" for name in settings) + " | ratio |")
    print("|---|" + "---|" * (len(settings) + 1))
    for name in args.rows.split(","):
        row = row_named(name)
        steps = {}
        for label, budget in settings.items():
            cfg = Reproduction(Path(tempfile.mkdtemp()), budget).config(row, 0)
            model = FasterRCNN(cfg.model).train()
            optimizer = optimizer_for(model, budget.batch_size)
            batch = benchmark_batch(budget.geometry, budget.image_size, budget.batch_size)
            steps[label] = lambda m=model, o=optimizer, b=batch: train_step(m, o, b)
        timed = interleaved(steps, args.repeats)
        medians = [timed[label].median for label in settings]
        print(f"| {row.label} (table {row.table}) | " + " | ".join(f"{m:.3f}" for m in medians)
              + f" | {medians[-1] / medians[0]:.2f} |")


if __name__ == "__main__":
    main()
