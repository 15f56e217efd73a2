"""Accuracy and speed of the deployment variants on the synthetic benchmark, in one process:
fp32 PyTorch (the reference), the optional int8 pyramid, and the exported ONNX graph run by
ONNX Runtime.

    python benchmarks/deploy_accuracy.py [--run runs/demo] [--calibration 16] [--output FILE.md]

Evaluates a trained run (``fpn demo`` makes one) on its validation set with pycocotools. The
int8 pyramid is calibrated on training images; the ONNX graph is exported from the same weights.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from fpn.api import Detector
from fpn.bench.common import markdown_table, publish_report
from fpn.config.files import load_config
from fpn.engine.checkpoint import find_checkpoint
from fpn.evaluation import inference as ev
from fpn.export import OnnxDetector, export_onnx
from fpn.jobs.datasets import build_dataset, coco_ground_truth, label_to_category_id, val_loader
from fpn.model.quantize import quantize_pyramid

KEYS = ("AP", "AP50", "AP75", "AP_s", "AP_m", "AP_l")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", type=Path, default=Path("runs/demo"))
    parser.add_argument("--calibration", type=int, default=16, help="training images for calibration")
    parser.add_argument("--output", type=Path, default=None, help="also write the Markdown table here")
    args = parser.parse_args()
    cfg = load_config(find_checkpoint(args.run)[1])
    model = Detector.from_checkpoint(args.run, "cpu", precision="fp32").model.eval()
    val_set = build_dataset(cfg.data, "val")
    train_set = build_dataset(cfg.data, "train")
    coco_gt = coco_ground_truth(val_set)

    def evaluate(name: str, detector) -> list[str]:
        start = time.perf_counter()
        with torch.inference_mode():
            result = ev.evaluate_detector(detector, val_loader(val_set), coco_gt, label_to_category_id(cfg),
                                          with_proposals=False, progress=False)
        metrics = result.metrics
        seconds = (time.perf_counter() - start) / len(val_set)
        print(f"{name}: AP {100 * metrics['AP']:.1f}", flush=True)
        return [name, *(f"{100 * metrics[k]:.1f}" for k in KEYS), f"{1000 * seconds:.0f}"]

    rows = [evaluate("PyTorch fp32", model)]
    int8 = quantize_pyramid(model, [train_set[i][0] for i in range(args.calibration)])
    rows.append(evaluate("PyTorch, int8 pyramid", int8))
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx")
        rows.append(evaluate("ONNX Runtime fp32", OnnxDetector(path)))
    report = (f"`{args.run}`, {len(val_set)} validation images, {torch.get_num_threads()} threads\n\n"
              + markdown_table(["variant", *KEYS, "ms per image (eval loop)"], rows))
    publish_report(report, args.output)


if __name__ == "__main__":
    main()
