"""detectron2's R50/R101-FPN Faster R-CNN in our key names and config (docs/interop.md §1-§8).

The key table renames; two named transforms move the classifier's rows (background last in
detectron2, first in ours) and give ``bbox_pred`` its four background rows. Everything else
that differs is config of our modules, set by ``detectron2_config``: stride in the 1x1 conv,
BGR 0-255 input with detectron2's means, aligned RoIAlign with adaptive sampling, unrounded
anchors, 1000 proposals after NMS.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from torch import Tensor

from fpn.config.schema import ModelConfig
from fpn.errors import ConversionError
from fpn.interop.tables import (
    Rename,
    background_first,
    check_exactly,
    convert_keys,
    count_blocks,
    resnet_depth,
    with_background_deltas,
)

WHAT = "detectron2 Faster R-CNN"

# detectron2's convolutions hold their norm as a child (``conv1.norm``) and carry no bias.
RENAMES: list[Rename] = [
    (r"^backbone\.bottom_up\.stem\.conv1\.norm\.", "backbone.stem.norm."),
    (r"^backbone\.bottom_up\.stem\.conv1\.weight$", "backbone.stem.conv.weight"),
    (r"^backbone\.bottom_up\.(res\d\.\d+)\.conv(\d)\.norm\.", r"backbone.\1.norm\2."),
    (r"^backbone\.bottom_up\.(res\d\.\d+)\.conv(\d)\.weight$", r"backbone.\1.conv\2.weight"),
    (r"^backbone\.bottom_up\.(res\d\.\d+)\.shortcut\.norm\.", r"backbone.\1.shortcut.1."),
    (r"^backbone\.bottom_up\.(res\d\.\d+)\.shortcut\.weight$", r"backbone.\1.shortcut.0.weight"),
    (r"^backbone\.fpn_lateral(\d)\.", r"neck.lateral.p\1."),  # named by stage: 2..5 = P2..P5
    (r"^backbone\.fpn_output(\d)\.", r"neck.output.p\1."),
    (r"^proposal_generator\.rpn_head\.(conv|objectness_logits|anchor_deltas)\.", r"rpn.head.\1."),
    (r"^roi_heads\.box_head\.fc1\.", "roi_heads.box_head.fc6."),
    (r"^roi_heads\.box_head\.fc2\.", "roi_heads.box_head.fc7."),
    (r"^roi_heads\.box_predictor\.(cls_score|bbox_pred)\.", r"roi_heads.box_predictor.\1."),
]

# Source keys without weights: BatchNorm counters, the anchor generator's cached cell anchors
# and the input mean/std buffers of older detectron2 versions (read into the config instead).
IGNORED = (r"num_batches_tracked$", r"^proposal_generator\.anchor_generator\.cell_anchors\.",
           r"^pixel_(mean|std)$")

TRANSFORMS = {
    "roi_heads.box_predictor.cls_score.weight": background_first,
    "roi_heads.box_predictor.cls_score.bias": background_first,
    "roi_heads.box_predictor.bbox_pred.weight": with_background_deltas,
    "roi_heads.box_predictor.bbox_pred.bias": with_background_deltas,
}

BGR_MEAN = [103.53, 116.28, 123.675]  # detectron2's PIXEL_MEAN, in BGR order, for 0-255 input


def detectron2_config(state_dict: Mapping[str, Tensor]) -> ModelConfig:
    """The config under which our detector computes what detectron2's does with these weights.

    Args:
        state_dict: the detectron2 tensors (``checkpoint["model"]``), detectron2's names.
    """
    keys = list(state_dict)
    cfg = ModelConfig()
    cls_rows = state_dict.get("roi_heads.box_predictor.cls_score.weight")
    if cls_rows is None:
        raise ConversionError(f"{WHAT}: no roi_heads.box_predictor.cls_score.weight (not a Faster R-CNN?)")
    cfg.roi_heads.num_classes = cls_rows.shape[0] - 1
    bottleneck = any(".conv3." in key for key in keys)
    cfg.backbone.depth = resnet_depth(count_blocks(keys, r"^backbone\.bottom_up\.res4\.(\d+)\."),
                                      bottleneck, what=WHAT)
    # §1: MSRA weights (and detectron2's default STRIDE_IN_1X1) stride the 1x1 conv.
    cfg.backbone.stride_in_1x1 = True
    cfg.backbone.frozen_bn_eps = 1e-5  # §8: detectron2's FrozenBatchNorm2d
    # §2: BGR pixels in 0-255 minus detectron2's means (the checkpoint's own if it keeps them).
    cfg.input = dataclasses.replace(
        cfg.input, pixel_scale=255.0, channel_order="BGR",
        pixel_mean=_buffer(state_dict, "pixel_mean", BGR_MEAN),
        pixel_std=_buffer(state_dict, "pixel_std", [1.0, 1.0, 1.0]))
    cfg.rpn.anchors.round_cell_anchors = False  # §5: exact cell anchors, offset 0
    cfg.rpn.anchors.stride_from_feature_size = False
    # §7: Base-RCNN-FPN: 2000 / 1000 per level before NMS, 1000 / 1000 per image after; no size filter.
    cfg.rpn.pre_nms_top_n_train, cfg.rpn.pre_nms_top_n_test = 2000, 1000
    cfg.rpn.post_nms_top_n_train, cfg.rpn.post_nms_top_n_test = 1000, 1000
    cfg.rpn.min_box_size = 0.0
    cfg.roi_heads.aligned, cfg.roi_heads.sampling_ratio = True, 0  # §6: ROIAlignV2
    cfg.roi_heads.min_box_size = 0.0  # detectron2 keeps every detection above the score threshold
    return cfg


def _buffer(state_dict: Mapping[str, Tensor], key: str, default: list[float]) -> list[float]:
    value = state_dict.get(key)
    return default if value is None else [float(v) for v in value.reshape(-1)]


def convert_detectron2(state_dict: Mapping[str, Tensor], cfg: ModelConfig | None = None
                       ) -> tuple[ModelConfig, dict[str, Tensor]]:
    """(config, state dict in our names, background at row 0) of a detectron2 Faster R-CNN.

    Args:
        state_dict: ``checkpoint["model"]`` of a model-zoo ``.pkl`` or a ``.pth``, as tensors.
        cfg: override the inferred config (it must describe the same architecture).
    """
    converted, source_of = convert_keys(state_dict, RENAMES, what=WHAT, ignore=IGNORED,
                                        transforms=TRANSFORMS)
    cfg = cfg or detectron2_config(state_dict)
    check_exactly(cfg, converted, source_of, what=WHAT)
    return cfg, converted

