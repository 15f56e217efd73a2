"""Box formats and clipping: the conventions every layer shares (data, model, evaluation).

Inside fpn boxes are ``(x1, y1, x2, y2)`` float tensors in image pixels, widths ``x2 - x1``
(no +1). COCO files and COCO results use ``(x, y, width, height)``. This module imports no
other part of fpn, so the data side and the model can both use it.
"""

from __future__ import annotations

import torch
from torch import Tensor

# The keys of a training target that hold boxes in image pixels: resizing and flipping an image
# move all of them ("proposals": the fixed proposals of Fast R-CNN, docs/paper.md §3).
TARGET_BOX_KEYS = ("boxes", "crowd_boxes", "proposals")


def xyxy_to_xywh(boxes_xyxy: Tensor) -> Tensor:
    """(..., 4) corners -> (..., 4) top-left corner, width and height (COCO's ``bbox``)."""
    return torch.cat([boxes_xyxy[..., :2], boxes_xyxy[..., 2:] - boxes_xyxy[..., :2]], dim=-1)


def xywh_to_xyxy(boxes_xywh: Tensor) -> Tensor:
    """(..., 4) COCO ``bbox`` -> (..., 4) corners."""
    return torch.cat([boxes_xywh[..., :2], boxes_xywh[..., :2] + boxes_xywh[..., 2:]], dim=-1)


def clip_boxes(boxes_xyxy: Tensor, image_hw: tuple[int, int]) -> Tensor:
    """Clip boxes (..., 4) to an image of ``(height, width)``."""
    height, width = image_hw
    x = boxes_xyxy[..., 0::2].clamp(min=0, max=width)
    y = boxes_xyxy[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)
