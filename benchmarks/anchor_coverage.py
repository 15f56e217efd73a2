"""How well each Table 1 row's anchors cover the validation objects of the reproduction's benchmark.

For every validation box: the best IoU any anchor of the row reaches, and how many anchors reach
the RPN's positive threshold (0.7, docs/paper.md §4.1), by COCO size. No training: anchors and
boxes only. The miniature scales the paper's anchor sizes by 256/800 but not the strides (a
ResNet's are fixed), so anchors are 3.1x smaller relative to their level's stride than in the
paper. The last row shows the same objects in the paper's own geometry: images and boxes scaled
to 800 px, the paper's FPN anchors. Used by reports/reproduction/discussion.md.

    python benchmarks/anchor_coverage.py [--data runs/reproduction/full-data0/data]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from torchvision.ops import box_iou

from fpn.config import load_config
from fpn.model.detector import FasterRCNN
from fpn.reproduction.plan import FULL, PAPER_IMAGE_SIZE, ROWS
from fpn.reproduction.study import Reproduction

POSITIVE_IOU = 0.7
SIZES = {"small": (0, 32**2), "medium": (32**2, 96**2), "large": (96**2, float("inf"))}


def anchors_for(model_cfg, image_size: int) -> torch.Tensor:
    """Every anchor of the model's RPN on one square image, (N, 4) xyxy pixels."""
    rpn = FasterRCNN(model_cfg).rpn
    feature_hw = {level: (-(-image_size // s),) * 2 for level, s in rpn.anchor_generator.strides.items()}
    return torch.cat(rpn.anchor_generator(feature_hw, (image_size, image_size), torch.device("cpu")))


def coverage(anchors: torch.Tensor, boxes_xyxy: torch.Tensor, areas: torch.Tensor) -> dict[str, str]:
    """Per COCO size: mean best IoU, share of boxes with an anchor >= 0.7, mean anchors >= 0.7."""
    iou = box_iou(boxes_xyxy, anchors)
    best, positives = iou.max(dim=1).values, (iou >= POSITIVE_IOU).sum(dim=1).float()
    cells = {}
    for name, (low, high) in SIZES.items():
        inside = (areas >= low) & (areas < high)
        share = 100 * (best[inside] >= POSITIVE_IOU).float().mean()
        cells[name] = f"{best[inside].mean():.2f} / {share:.0f}% / {positives[inside].mean():.1f}"
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("runs/reproduction/full-data0/data"),
                        help="the study's data folder (fpn reproduce writes it)")
    args = parser.parse_args()
    coco = json.loads((args.data / "val" / "annotations.json").read_text())
    xywh = torch.tensor([a["bbox"] for a in coco["annotations"]], dtype=torch.float32)
    boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
    areas = xywh[:, 2] * xywh[:, 3]
    counts = {name: int(((areas >= lo) & (areas < hi)).sum()) for name, (lo, hi) in SIZES.items()}
    print(f"{len(boxes)} validation boxes ({', '.join(f'{n} {c}' for n, c in counts.items())}); per size: "
          f"mean best IoU / share with an anchor at IoU >= {POSITIVE_IOU} / "
          f"anchors at IoU >= {POSITIVE_IOU} per box\n")
    print("| row | anchors | small | medium | large |")
    print("|---|---|---|---|---|")
    reproduction = Reproduction(Path(tempfile.mkdtemp()), FULL)
    for row in (r for r in ROWS if r.table == "1"):
        anchors = anchors_for(reproduction.config(row, 0).model, FULL.image_size)
        cells = coverage(anchors, boxes, areas)
        print(f"| {row.label}, {FULL.image_size} px | {len(anchors)} | {cells['small']} | "
              f"{cells['medium']} | {cells['large']} |")
    scale = PAPER_IMAGE_SIZE / FULL.image_size
    anchors = anchors_for(load_config("rpn_c_fpn").model, PAPER_IMAGE_SIZE)
    cells = coverage(anchors, boxes * scale, areas)  # sizes binned at 256 px, as in the report
    print(f"| (c) FPN, the paper's geometry: boxes x{scale:.3g} to {PAPER_IMAGE_SIZE} px | {len(anchors)} | "
          f"{cells['small']} | {cells['medium']} | {cells['large']} |")


if __name__ == "__main__":
    main()
