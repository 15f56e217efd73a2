"""Train-time augmentation that moves boxes and masks with the pixels.

Resizing to the network's input size is the model's (replaceable) preprocessing step; the
augmentation of training is the horizontal flip (docs/paper.md §6), drawn per sample from the
seeded data order (``fpn.data.order.EpochView``) so that a resumed run flips the same images.
"""

from __future__ import annotations

from typing import Any

import torch

from fpn.box_format import TARGET_BOX_KEYS


def hflip(image: torch.Tensor, target: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    """Mirror an image left-right with its boxes (x1' = W - x2, x2' = W - x1) and masks."""
    width = image.shape[-1]
    target = dict(target)
    for key in TARGET_BOX_KEYS:
        if key in target and len(target[key]):
            boxes = target[key].clone()
            boxes[:, [0, 2]] = width - target[key][:, [2, 0]]
            target[key] = boxes
    if "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    return image.flip(-1), target

