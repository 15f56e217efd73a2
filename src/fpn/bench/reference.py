"""The reference every benchmark measures against: torchvision's R50-FPN Faster R-CNN, and ours
holding its weights.

torchvision's detector is built here only (``fpn bench``, ``fpn bench --train``, the accuracy
gates and ``scripts/standin_weights.py`` use it): ``fasterrcnn_resnet50_fpn``'s architecture
with FrozenBatchNorm2d, 91 class slots and seeded random weights (no weights are downloaded).
Our twin is built from a config (``twin_config``), never changed after construction.
"""

from __future__ import annotations

from typing import Any

import torch
import torchvision
from torchvision.models.detection import FasterRCNN as TVFasterRCNN
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import FrozenBatchNorm2d

from fpn.config.overrides import merge
from fpn.config.schema import ModelConfig
from fpn.interop.torchvision import from_torchvision, torchvision_config
from fpn.model.detector import FasterRCNN

# Raised logit of one class, so that a detector with random weights still scores some RoIs above
# the 0.05 threshold and the two implementations have detections to compare.
DETECTABLE_CLASS_BIAS = 6.0


def torchvision_detector(seed: int = 0, *, size: tuple[int, int] = (800, 1333),
                         detectable_class: int | None = None) -> TVFasterRCNN:
    """torchvision's R50-FPN Faster R-CNN as published (FrozenBN, 91 classes), seeded random weights.

    FrozenBN eps is 0, as torchvision sets it for its published COCO weights (docs/interop.md §8).
    Its resize takes shorter side ``size[0]``, longer side at most ``size[1]``. With
    ``detectable_class`` that class's logit is raised by ``DETECTABLE_CLASS_BIAS``, so that random
    weights still give detections to compare. Returned in eval mode.
    """
    torch.manual_seed(seed)
    body = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    model = TVFasterRCNN(_resnet_fpn_extractor(body, 3), num_classes=91, min_size=size[0], max_size=size[1])
    for module in model.modules():
        if isinstance(module, FrozenBatchNorm2d):
            module.eps = 0.0
    if detectable_class is not None:
        with torch.no_grad():
            model.roi_heads.box_predictor.cls_score.bias[detectable_class] += DETECTABLE_CLASS_BIAS
    return model.eval()


def twin_config(reference: TVFasterRCNN, changes: dict[str, Any] | None = None) -> ModelConfig:
    """The config under which our detector computes what ``reference`` does, with the same resize,
    and ``changes`` (a nested mapping of ``model.*`` fields) applied."""
    cfg = torchvision_config(reference.state_dict())
    transform = reference.transform
    resize = {"input": {"min_size_test": int(transform.min_size[-1]), "max_size": int(transform.max_size),
                        "min_size_train": [int(s) for s in transform.min_size]}}
    cfg = merge(cfg, resize, "the torchvision reference")
    return merge(cfg, changes, "benchmark setting") if changes else cfg


def fpn_twin(reference: TVFasterRCNN, changes: dict[str, Any] | None = None) -> FasterRCNN:
    """Our detector (eval mode) holding ``reference``'s weights, built from ``twin_config``."""
    return from_torchvision(reference.state_dict(), twin_config(reference, changes))
