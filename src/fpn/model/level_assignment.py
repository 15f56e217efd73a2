"""The pyramid level Eq. 1 (docs/paper.md §3) gives objects of a dataset, under a model config.

Eq. 1 reads an RoI of w x h pixels *of the resized image* from P_k, k = floor(k0 + log2(sqrt(wh) /
canonical)), clamped to the RoI heads' levels. A ground-truth box is the RoI a perfect proposal
would be, so the levels of a dataset's boxes say which levels its objects will be detected on:
``fpn browse`` shows their shares before training, and the reproduction report uses them.
The computation is the model's own: its resize (``fpn.model.preprocess``) and the RoI pooler's
level mapper (``MultiLevelRoIPooler.levels``), built from the same config fields.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from fpn.config.schema import ModelConfig
from fpn.model.preprocess import rescale_boxes, resize_scale
from fpn.model.roi_heads import MultiLevelRoIPooler


def level_mapper(cfg: ModelConfig) -> MultiLevelRoIPooler:
    """The RoI pooler a detector of ``cfg`` builds (only its level mapper is used here)."""
    heads = cfg.roi_heads
    strides = {level: 2 ** int(level[1:]) for level in heads.levels}  # P_k (or C_k) has stride 2^k
    return MultiLevelRoIPooler(strides, canonical_scale=heads.canonical_scale,
                               canonical_level=heads.canonical_level)


def resized_hw(image_hw: tuple[int, int], cfg: ModelConfig, min_size: int | None = None) -> tuple[int, int]:
    """The size the detector resizes an image of ``image_hw`` to (shorter side ``min_size``, by
    default ``cfg.input.min_size_test``, longer side capped at ``cfg.input.max_size``)."""
    scale = resize_scale(image_hw, min_size or cfg.input.min_size_test, cfg.input.max_size)
    return int(image_hw[0] * scale), int(image_hw[1] * scale)  # as interpolate rounds


def gt_levels(boxes_xyxy: Tensor, image_hw: tuple[int, int], cfg: ModelConfig, *,
              min_size: int | None = None) -> Tensor:
    """(G,) int64: the k of the P_k Eq. 1 maps each (G, 4) box (xyxy, in the pixels of an image of
    ``image_hw``) to, once the detector of ``cfg`` has resized the image (``resized_hw``)."""
    boxes = torch.as_tensor(boxes_xyxy, dtype=torch.float32).reshape(-1, 4)
    resized = rescale_boxes(boxes, tuple(image_hw), resized_hw(image_hw, cfg, min_size))
    return level_mapper(cfg).levels(resized)


def level_shares(images: Iterable[tuple[Tensor, tuple[int, int]]], cfg: ModelConfig, *,
                 min_size: int | None = None) -> dict[str, float]:
    """The share of boxes per level of the RoI heads, e.g. ``{"p2": 0.41, "p3": 0.33, ...}``.

    ``images`` yields ``(boxes_xyxy (G, 4), (height, width))`` per image, in that image's pixels.
    Every level of ``cfg.roi_heads.levels`` is a key; the shares sum to 1 (all 0 without boxes).
    """
    names = {int(level[1:]): level for level in cfg.roi_heads.levels}
    counts = dict.fromkeys(names.values(), 0)
    for boxes, image_hw in images:
        for k, n in zip(*torch.unique(gt_levels(boxes, image_hw, cfg, min_size=min_size),
                                      return_counts=True), strict=True):
            counts[names[int(k)]] += int(n)
    total = sum(counts.values())
    return {level: count / total if total else 0.0 for level, count in counts.items()}
