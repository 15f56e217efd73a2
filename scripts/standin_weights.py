"""Random-valued stand-ins for torchvision's published checkpoints, for trying fine-tuning offline.

    python scripts/standin_weights.py DIR

writes DIR/fasterrcnn_resnet50_fpn_coco-258fb6c6.pth (a COCO Faster R-CNN: FrozenBatchNorm2d,
91 class slots, the published file's keys and shapes) and DIR/resnet50-0676ba61.pth (an ImageNet
ResNet-50 classifier). Their numbers are random: they show what ``fpn train --init`` does with
such files (docs/finetuning.md), not what the real weights detect.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torchvision

from fpn.bench.reference import torchvision_detector


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    detector = torchvision_detector(seed=0)  # the benchmarks' reference, FrozenBatchNorm2d, 91 classes
    torch.save(detector.state_dict(), out_dir / "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth")
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), out_dir / "resnet50-0676ba61.pth")
    print(f"wrote random-valued stand-ins in {out_dir}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
