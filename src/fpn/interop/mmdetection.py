"""mmdetection 2.x / 3.x ``faster_rcnn_r50_fpn`` in our key names and config (docs/interop.md §1-§8).

The key table renames; the classifier's rows move (background last in mmdetection, first in
ours) and ``fc_reg`` gets four background rows. What differs besides names is config:
``mmdetection_config`` sets RGB 0-255 input with mmdetection's mean and std, the stride
placement of the ResNet style ('pytorch': 3x3, 'caffe': 1x1, with caffe's BGR input), aligned
RoIAlign with adaptive sampling, unrounded anchors, mmdetection's proposal counts, and the
delta clamp from below of its ``DeltaXYWHBBoxCoder``.

Facts (mmdetection's ``configs/_base_/models/faster-rcnn_r50_fpn.py`` and its modules):
anchors ``scales=[8]`` at strides 4..64 (sizes 32..512), ratios (0.5, 1, 2) ratio-major,
``center_offset=0``, no rounding; box coder stds (0.1, 0.1, 0.2, 0.2) in the RoI head = our
weights (10, 10, 5, 5), (1, 1, 1, 1) in the RPN; ``RoIAlign(sampling_ratio=0)`` (mmcv's
default ``aligned=True``); ``finest_scale=56`` level mapping, which is Eq. 1 with 224 at level 4.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from fpn.config.schema import ModelConfig
from fpn.errors import ConversionError
from fpn.interop.tables import (
    Rename,
    background_first,
    check_exactly,
    convert_keys,
    count_blocks,
    prefixed,
    resnet_depth,
    with_background_deltas,
)
from fpn.interop.torchvision import RESNET_RENAMES

WHAT = "mmdetection Faster R-CNN"

# mmdetection's ResNet keeps torchvision's names (conv1, bn1, layer{n}, downsample), under "backbone.".
RENAMES: list[Rename] = [
    *prefixed(RESNET_RENAMES, "backbone.", "backbone."),
    (r"^neck\.lateral_convs\.(\d)\.conv\.", lambda m: f"neck.lateral.p{int(m[1]) + 2}."),  # 0 = P2
    (r"^neck\.fpn_convs\.(\d)\.conv\.", lambda m: f"neck.output.p{int(m[1]) + 2}."),
    (r"^rpn_head\.rpn_conv\.", "rpn.head.conv."),
    (r"^rpn_head\.rpn_cls\.", "rpn.head.objectness_logits."),
    (r"^rpn_head\.rpn_reg\.", "rpn.head.anchor_deltas."),
    (r"^roi_head\.bbox_head\.shared_fcs\.0\.", "roi_heads.box_head.fc6."),
    (r"^roi_head\.bbox_head\.shared_fcs\.1\.", "roi_heads.box_head.fc7."),
    (r"^roi_head\.bbox_head\.fc_cls\.", "roi_heads.box_predictor.cls_score."),
    (r"^roi_head\.bbox_head\.fc_reg\.", "roi_heads.box_predictor.bbox_pred."),
]

IGNORED = (r"num_batches_tracked$",)

TRANSFORMS = {
    "roi_heads.box_predictor.cls_score.weight": background_first,
    "roi_heads.box_predictor.cls_score.bias": background_first,
    "roi_heads.box_predictor.bbox_pred.weight": with_background_deltas,
    "roi_heads.box_predictor.bbox_pred.bias": with_background_deltas,
}

RGB_MEAN, RGB_STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]  # 'pytorch' style, 0-255
CAFFE_BGR_MEAN = [103.53, 116.28, 123.675]  # 'caffe' style: BGR 0-255, std 1


def resnet_style(meta: Mapping[str, Any]) -> str:
    """'caffe' when the config text saved in ``meta`` says ``style='caffe'``, else 'pytorch'."""
    text = meta.get("config") or meta.get("cfg") or ""
    return "caffe" if isinstance(text, str) and re.search(r"style\s*=\s*['\"]caffe['\"]", text) else "pytorch"


def class_names(meta: Mapping[str, Any]) -> list[str]:
    """``meta["CLASSES"]`` (2.x) or ``meta["dataset_meta"]["classes"]`` (3.x); [] if neither."""
    names = meta.get("CLASSES")
    dataset_meta = meta.get("dataset_meta")
    if names is None and isinstance(dataset_meta, Mapping):
        names = dataset_meta.get("classes")
    return [str(name) for name in names] if isinstance(names, list | tuple) else []


def mmdetection_config(state_dict: Mapping[str, Tensor], meta: Mapping[str, Any] | None = None
                       ) -> ModelConfig:
    """The config under which our detector computes what mmdetection's does with these weights.

    Args:
        state_dict: ``checkpoint["state_dict"]``, mmdetection's names.
        meta: ``checkpoint["meta"]``: the ResNet style is read from its config text.
    """
    meta = meta or {}
    keys = list(state_dict)
    cls_rows = state_dict.get("roi_head.bbox_head.fc_cls.weight")
    if cls_rows is None:
        first = next((k for k in keys if not k.startswith(("backbone.", "neck."))), "?")
        raise ConversionError(f"{WHAT}: no roi_head.bbox_head.fc_cls.weight, found {first} "
                              f"{tuple(state_dict[first].shape) if first in state_dict else ''} "
                              "(not a two-stage Faster R-CNN?)")
    cfg = ModelConfig()
    cfg.roi_heads.num_classes = cls_rows.shape[0] - 1
    bottleneck = any(".conv3." in key for key in keys)
    cfg.backbone.depth = resnet_depth(count_blocks(keys, r"^backbone\.layer3\.(\d+)\."), bottleneck,
                                      what=WHAT)
    cfg.backbone.frozen_bn_eps = 1e-5  # BatchNorm2d in eval mode (norm_eval=True)
    cfg.backbone.freeze_at = 2  # frozen_stages=1: the stem and layer1
    if resnet_style(meta) == "caffe":
        cfg.backbone.stride_in_1x1 = True
        cfg.input = dataclasses.replace(cfg.input, pixel_scale=255.0, channel_order="BGR",
                                        pixel_mean=CAFFE_BGR_MEAN, pixel_std=[1.0, 1.0, 1.0])
    else:
        cfg.backbone.stride_in_1x1 = False
        cfg.input = dataclasses.replace(cfg.input, pixel_scale=255.0, channel_order="RGB",
                                        pixel_mean=RGB_MEAN, pixel_std=RGB_STD)
    cfg.rpn.anchors.round_cell_anchors = False
    cfg.rpn.anchors.stride_from_feature_size = False
    # test_cfg.rpn / train_cfg.rpn_proposal: nms_pre per level, max_per_img per image.
    cfg.rpn.pre_nms_top_n_train, cfg.rpn.pre_nms_top_n_test = 2000, 1000
    cfg.rpn.post_nms_top_n_train, cfg.rpn.post_nms_top_n_test = 1000, 1000
    cfg.rpn.min_box_size = 0.0
    cfg.rpn.clamp_box_shrink = cfg.roi_heads.clamp_box_shrink = True  # DeltaXYWHBBoxCoder
    cfg.roi_heads.aligned, cfg.roi_heads.sampling_ratio = True, 0
    cfg.roi_heads.min_box_size = 0.0
    return cfg


def convert_mmdetection(state_dict: Mapping[str, Tensor], meta: Mapping[str, Any] | None = None,
                        cfg: ModelConfig | None = None) -> tuple[ModelConfig, dict[str, Tensor]]:
    """(config, state dict in our names, background at row 0) of an mmdetection Faster R-CNN.

    Args:
        state_dict: ``checkpoint["state_dict"]``.
        meta: ``checkpoint["meta"]`` (for the ResNet style), if the checkpoint has one.
        cfg: override the inferred config (it must describe the same architecture).
    """
    converted, source_of = convert_keys(state_dict, RENAMES, what=WHAT, ignore=IGNORED,
                                        transforms=TRANSFORMS)
    cfg = cfg or mmdetection_config(state_dict, meta)
    check_exactly(cfg, converted, source_of, what=WHAT)
    return cfg, converted
