"""How well a config's anchors cover a dataset's objects, before any training (docs/paper.md §2, §4.1).

An object becomes a positive of the RPN through the anchors that overlap it at IoU >= 0.7 (the
RPN's ``fg_iou_thresh``), or, failing any, through its single best anchor, however poor. The share
of objects that have an anchor at IoU >= 0.7, per COCO size bucket, is therefore a property of the
geometry alone (anchor sizes and ratios, strides, image size, object sizes): a geometry whose
anchors reach few objects handicaps every RPN built on it, whatever it learns. The reproduction
states it for every row of Table 1 beside the paper's own geometry on real COCO boxes.

The anchors are the model's own (``AnchorGenerator`` with the config's sizes, ratios and the level
strides 2^k), laid over the image as the detector resizes and pads it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import box_iou

from fpn.config.schema import ModelConfig
from fpn.model.anchors import AnchorGenerator
from fpn.model.level_assignment import resized_hw
from fpn.model.preprocess import padded_size, rescale_boxes

# COCO's size buckets by the annotation's area (COCOeval's areaRng): small < 32², medium < 96².
SIZE_BUCKETS = {"small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2), "large": (96.0**2, math.inf)}


def size_bucket(areas: Tensor) -> list[str]:
    """COCO's bucket (``SIZE_BUCKETS``) of each area."""
    return [next(name for name, (low, high) in SIZE_BUCKETS.items() if low <= float(a) < high)
            for a in torch.as_tensor(areas).reshape(-1)]


def rpn_anchors(cfg: ModelConfig, image_hw: tuple[int, int]) -> Tensor:
    """(N, 4) xyxy: every anchor the RPN of ``cfg`` lays on an image of ``image_hw`` at test time,
    in the pixels of the resized image (``level_assignment.resized_hw``), padded as the detector pads."""
    rpn = cfg.rpn
    strides = {level: 2 ** int(level[1:]) for level in rpn.levels}  # C_k and P_k have stride 2^k
    generator = AnchorGenerator({level: rpn.anchors.sizes[level] for level in rpn.levels}, strides,
                                rpn.anchors.aspect_ratios,
                                round_cell_anchors=rpn.anchors.round_cell_anchors)
    height, width = resized_hw(image_hw, cfg)
    divisor = cfg.input.size_divisibility
    padded = (padded_size(height, divisor), padded_size(width, divisor))
    feature_hw = {level: (-(-padded[0] // s), -(-padded[1] // s)) for level, s in strides.items()}
    return torch.cat(generator(feature_hw, padded, torch.device("cpu")))


def best_anchor_iou(boxes_xyxy: Tensor, anchors_xyxy: Tensor) -> Tensor:
    """(G,) the highest IoU any of the (N, 4) anchors reaches with each of the (G, 4) boxes."""
    if len(boxes_xyxy) == 0 or len(anchors_xyxy) == 0:
        return torch.zeros(len(boxes_xyxy))
    return box_iou(boxes_xyxy.float(), anchors_xyxy.float()).max(dim=1).values


@dataclass(frozen=True)
class Coverage:
    """One size bucket: how many objects, and which share has an anchor at IoU >= ``threshold``."""

    objects: int
    covered: float  # share in [0, 1]; nan without objects
    mean_best_iou: float

    def as_dict(self) -> dict[str, float]:
        return {"objects": self.objects, "covered": self.covered, "mean_best_iou": self.mean_best_iou}


def coverage(images: Iterable[tuple[Tensor, Tensor, tuple[int, int]]], cfg: ModelConfig, *,
             threshold: float | None = None) -> dict[str, Coverage]:
    """Anchor coverage per COCO size bucket (and ``"all"``) of a dataset under the RPN of ``cfg``.

    ``images`` yields ``(boxes_xyxy (G, 4), areas (G,), (height, width))`` per image: boxes in that
    image's pixels, areas as COCOeval buckets them (the annotation's ``area``). ``threshold``
    defaults to the RPN's ``fg_iou_thresh``.
    """
    threshold = cfg.rpn.fg_iou_thresh if threshold is None else threshold
    anchors_by_size: dict[tuple[int, int], Tensor] = {}
    best, buckets = [], []
    for boxes, areas, image_hw in images:
        image_hw = (int(image_hw[0]), int(image_hw[1]))
        if image_hw not in anchors_by_size:
            anchors_by_size[image_hw] = rpn_anchors(cfg, image_hw)
        boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        resized = rescale_boxes(boxes, image_hw, resized_hw(image_hw, cfg))
        best.append(best_anchor_iou(resized, anchors_by_size[image_hw]))
        buckets += size_bucket(torch.as_tensor(areas, dtype=torch.float64))
    best_iou = torch.cat(best) if best else torch.zeros(0)
    result = {}
    for name in (*SIZE_BUCKETS, "all"):
        inside = torch.tensor([name in ("all", bucket) for bucket in buckets], dtype=torch.bool)
        chosen = best_iou[inside]
        result[name] = Coverage(int(inside.sum()),
                                float((chosen >= threshold).float().mean()) if len(chosen) else math.nan,
                                float(chosen.mean()) if len(chosen) else math.nan)
    return result
