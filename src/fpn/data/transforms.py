"""Train-time augmentation that moves boxes and masks with the pixels.

Resizing to the network's input size is the model's (replaceable) preprocessing step; the
transforms here are the random ones of training (docs/paper.md §6: horizontal flip).
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


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None):
        self.p = p
        self.generator = generator

    def __call__(self, image: torch.Tensor, target: dict[str, Any]):
        if torch.rand((), generator=self.generator).item() < self.p:
            return hflip(image, target)
        return image, target


class Compose:
    def __init__(self, transforms: list):
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, target: dict[str, Any]):
        for transform in self.transforms:
            image, target = transform(image, target)
        return image, target
