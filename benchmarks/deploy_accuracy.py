"""Accuracy and speed of the optional int8 pyramid on the synthetic benchmark.

    python benchmarks/int8.py [--run runs/demo] [--calibration 16]

Evaluates a trained run (``fpn demo`` makes one) on its validation set in fp32, then calibrates
the int8 backbone and pyramid on training images and evaluates again, in the same process.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from fpn.api import Detector, find_checkpoint, read_config
from fpn.benchmark import markdown_table
from fpn.engine.jobs import build_dataset, evaluate_model
from fpn.model.quantize import quantize_pyramid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", type=Path, default=Path("runs/demo"))
    parser.add_argument("--calibration", type=int, default=16, help="training images for calibration")
    args = parser.parse_args()
    cfg = read_config(find_checkpoint(args.run)[1])
    detector = Detector.from_checkpoint(args.run, "cpu")
    val_set = build_dataset(cfg.data, "val")
    train_set = build_dataset(cfg.data, "train")
    rows = []
    for name in ("fp32", "int8"):
        if name == "int8":
            quantize_pyramid(detector.model, [train_set[i][0] for i in range(args.calibration)])
        start = time.perf_counter()
        metrics = evaluate_model(detector.model, val_set, cfg, progress=False)
        seconds = (time.perf_counter() - start) / len(val_set)
        rows.append([name, *(f"{100 * metrics[k]:.1f}" for k in ("AP", "AP50", "AP_s", "AR@100")),
                     f"{1000 * seconds:.0f}"])
    print(f"{args.run}, {len(val_set)} validation images, {torch.get_num_threads()} threads\n")
    print(markdown_table(["pyramid", "AP", "AP50", "AP_s", "AR@100", "ms per image (eval loop)"], rows))


if __name__ == "__main__":
    main()
