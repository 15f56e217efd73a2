"""The featurized image pyramid at test time (docs/paper.md §7, the paper's Fig. 1a).

The baseline FPN argues against: the image is resized to several shorter sides, the detector
runs on every copy (its own preprocessing, features and heads), and what the copies find is
merged in original-image pixels:

- detections: concatenated over the scales, per-class NMS at ``model.roi_heads.nms_thresh``,
  the ``model.roi_heads.detections_per_image`` best kept;
- proposals (the RPN alone, or ``return_proposals=True``): concatenated, class-agnostic NMS at
  ``model.rpn.nms_thresh``, the ``model.rpn.post_nms_top_n_test`` best by objectness kept.

With a single scale nothing is merged: the result is the plain detector's at that shorter
side, exactly (re-running NMS could only drop proposals, because the RPN's own NMS runs per
level while the merge is class-agnostic). ``FasterRCNN`` calls ``detect_on_image_pyramid`` in
eval mode when ``model.input.test_scales`` is non-empty.

The model is used through ``model.cfg``, ``model.preprocess``, ``model.features`` and
``model.heads`` only, so this module does not import the detector.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fpn.config.schema import ModelConfig
from fpn.errors import ConfigError
from fpn.model.boxes import batched_nms

Outputs = list[dict[str, Tensor]]


def check_test_scales(scales: list[int]) -> list[int]:
    """``scales`` as a list of positive ints, or a one-line ConfigError naming the config field."""
    if isinstance(scales, int | str) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in scales
    ):
        raise ConfigError(f"model.input.test_scales: expected shorter sides in pixels, positive "
                         f"integers such as [480, 640, 800], got {scales!r}")
    return list(scales)


def detect_at_scale(model: nn.Module, images: list[Tensor], min_size: int, *, return_proposals: bool = False,
                    proposals: list[Tensor] | None = None) -> Outputs:
    """The plain detector in eval mode with the shorter side ``min_size`` instead of ``min_size_test``."""
    batch, _ = model.preprocess(images, proposals=proposals, min_size=min_size)
    return model.heads(model.features(batch.tensor), batch, return_proposals=return_proposals)


def merge_scales(per_scale: list[Outputs], cfg: ModelConfig) -> Outputs:
    """Per image, the outputs of every scale (original pixels) merged by NMS (see the module doc)."""
    merged = []
    for outputs in zip(*per_scale, strict=True):
        out: dict[str, Tensor] = {}
        if "boxes" in outputs[0]:
            boxes = torch.cat([o["boxes"] for o in outputs])
            scores = torch.cat([o["scores"] for o in outputs])
            labels = torch.cat([o["labels"] for o in outputs])
            keep = batched_nms(boxes, scores, labels, cfg.roi_heads.nms_thresh)
            keep = keep[: cfg.roi_heads.detections_per_image]
            out.update(boxes=boxes[keep], scores=scores[keep], labels=labels[keep])
            if "levels" in outputs[0]:  # the pyramid level of each RoI, at its own image scale
                out["levels"] = torch.cat([o["levels"] for o in outputs])[keep]
        if "proposals" in outputs[0]:
            boxes = torch.cat([o["proposals"] for o in outputs])
            objectness = torch.cat([o["objectness"] for o in outputs])
            one_group = torch.zeros(len(boxes), dtype=torch.int64, device=boxes.device)
            keep = batched_nms(boxes, objectness, one_group, cfg.rpn.nms_thresh)
            keep = keep[: cfg.rpn.post_nms_top_n_test]
            out.update(proposals=boxes[keep], objectness=objectness[keep])
        merged.append(out)
    return merged


def detect_on_image_pyramid(model: nn.Module, images: list[Tensor], scales: list[int], *,
                            return_proposals: bool = False, proposals: list[Tensor] | None = None
                            ) -> Outputs:
    """Run ``model`` (eval mode) at every shorter side in ``scales`` and merge, per image.

    Returns what the model's eval mode returns: per image ``boxes``, ``scores``, ``labels`` in
    original pixels (plus ``proposals``, ``objectness`` with ``return_proposals``), or only the
    proposals for the RPN alone. ``proposals`` are the given proposals of
    ``model.proposals=given``, in original pixels, used at every scale.
    """
    scales = check_test_scales(scales)
    if not scales:
        raise ConfigError("model.input.test_scales: the image pyramid needs at least one scale")
    if model.training:
        raise ValueError("the image pyramid (model.input.test_scales) is for inference: call model.eval()")
    per_scale = [detect_at_scale(model, images, s, return_proposals=return_proposals, proposals=proposals)
                 for s in scales]
    if len(per_scale) == 1:
        return per_scale[0]
    return merge_scales(per_scale, model.cfg)
