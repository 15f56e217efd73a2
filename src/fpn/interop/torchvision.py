"""Build our detector from torchvision's checkpoints (docs/interop.md).

- ``from_torchvision(state_dict)``: torchvision's ``fasterrcnn_resnet50_fpn`` (v1) -> FasterRCNN
  giving the same detections.
- ``load_torchvision_resnet(backbone, state_dict)``: ImageNet classification weights of a
  torchvision ResNet into our bottom-up pathway.

The conversion is an explicit table of key renames; every source key must be used and every
target tensor filled with a tensor of the same shape, or the conversion fails loudly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

from fpn.config.schema import ModelConfig
from fpn.errors import ConversionError
from fpn.interop.tables import Rename, prefixed
from fpn.model.backbone import ResNet
from fpn.model.detector import FasterRCNN

__all__ = ["from_torchvision", "load_torchvision_resnet", "torchvision_config",
           "DETECTOR_RENAMES", "RESNET_RENAMES", "rename_keys", "load_exactly"]


def _stage(match: re.Match) -> str:
    return f"res{int(match[1]) + 1}.{match[2]}"


RESNET_RENAMES: list[Rename] = [
    (r"^conv1\.", "stem.conv."),
    (r"^bn1\.", "stem.norm."),
    (r"^layer(\d)\.(\d+)\.conv(\d)\.", lambda m: f"{_stage(m)}.conv{m[3]}."),
    (r"^layer(\d)\.(\d+)\.bn(\d)\.", lambda m: f"{_stage(m)}.norm{m[3]}."),
    (r"^layer(\d)\.(\d+)\.downsample\.", lambda m: f"{_stage(m)}.shortcut."),
]



# FPN levels: torchvision numbers its blocks 0..3 from the finest, P2.
DETECTOR_RENAMES: list[Rename] = [
    *prefixed(RESNET_RENAMES, "backbone.body.", "backbone."),
    (r"^backbone\.fpn\.inner_blocks\.(\d)\.(0\.)?", lambda m: f"neck.lateral.p{int(m[1]) + 2}."),
    (r"^backbone\.fpn\.layer_blocks\.(\d)\.(0\.)?", lambda m: f"neck.output.p{int(m[1]) + 2}."),
    (r"^rpn\.head\.conv\.(0\.0\.)?", "rpn.head.conv."),  # pre-v2 checkpoints lack the ".0.0"
    (r"^rpn\.head\.cls_logits\.", "rpn.head.objectness_logits."),
    (r"^rpn\.head\.bbox_pred\.", "rpn.head.anchor_deltas."),
    (r"^roi_heads\.box_head\.(fc[67])\.", r"roi_heads.box_head.\1."),
    (r"^roi_heads\.box_predictor\.(cls_score|bbox_pred)\.", r"roi_heads.box_predictor.\1."),
]


def rename_keys(state_dict: Mapping[str, Tensor], renames: list[Rename], *, what: str
                ) -> dict[str, Tensor]:
    """Apply the first matching rename to every key; unmatched keys are an error.

    BatchNorm's ``num_batches_tracked`` counters carry no weights and are dropped.
    """
    converted, unused = {}, []
    for key, tensor in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        for pattern, repl in renames:
            new_key, count = re.subn(pattern, repl, key, count=1)
            if count:
                converted[new_key] = tensor
                break
        else:
            unused.append(key)
    if unused:
        raise ConversionError(f"{what}: {len(unused)} key(s) have no place in our model, e.g. {unused[:3]}")
    return converted


def load_exactly(model: torch.nn.Module, converted: dict[str, Tensor], *, what: str,
                 allow_missing: tuple[str, ...] = ()) -> None:
    """Copy ``converted`` into ``model`` after checking that keys and shapes match one for one."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in converted and not k.startswith(allow_missing)]
    unexpected = [k for k in converted if k not in expected]
    wrong = [f"{k}: {tuple(converted[k].shape)} vs ours {tuple(expected[k].shape)}"
             for k in converted if k in expected and converted[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise ConversionError(
            f"{what}: missing {missing[:3]} ({len(missing)}), unexpected {unexpected[:3]} "
            f"({len(unexpected)}), shape mismatches {wrong[:3]} ({len(wrong)})"
        )
    model.load_state_dict(converted, strict=not allow_missing)


def _strip_wrappers(state_dict: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    for wrapper in ("model", "state_dict"):
        if wrapper in state_dict and isinstance(state_dict[wrapper], Mapping):
            state_dict = state_dict[wrapper]
    if all(k.startswith("module.") for k in state_dict):  # saved from DistributedDataParallel
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    return state_dict


def torchvision_config(state_dict: Mapping[str, Tensor]) -> ModelConfig:
    """The config under which our detector computes what torchvision's does with these weights."""
    cfg = ModelConfig()
    cfg.roi_heads.num_classes = state_dict["roi_heads.box_predictor.cls_score.weight"].shape[0] - 1
    # A BatchNorm2d checkpoint (weights=None build) keeps counters and uses eps 1e-5; the
    # published COCO weights were made with FrozenBatchNorm2d and are meant for eps 0 (docs/interop.md §8).
    has_counters = any(k.endswith("num_batches_tracked") for k in state_dict)
    cfg.backbone.frozen_bn_eps = 1e-5 if has_counters else 0.0
    cfg.backbone.freeze_at = 2  # torchvision's default: 3 trainable stages
    cfg.rpn.anchors.stride_from_feature_size = True  # torchvision's P6 stride quirk
    return cfg


def from_torchvision(state_dict: Mapping[str, Tensor], cfg: ModelConfig | None = None) -> FasterRCNN:
    """Our FasterRCNN, in eval mode, holding torchvision ``fasterrcnn_resnet50_fpn`` weights.

    Args:
        state_dict: ``model.state_dict()`` of torchvision's detector, or the published
            checkpoint's contents (``{"model": ...}`` wrappers and ``module.`` prefixes accepted).
        cfg: override the inferred config (it must keep the same architecture).
    """
    state_dict = _strip_wrappers(state_dict)
    if "roi_heads.box_predictor.cls_score.weight" not in state_dict:
        raise ConversionError("not a torchvision Faster R-CNN state dict: no roi_heads.box_predictor")
    cfg = cfg or torchvision_config(state_dict)
    model = FasterRCNN(cfg)
    converted = rename_keys(state_dict, DETECTOR_RENAMES, what="torchvision Faster R-CNN")
    load_exactly(model, converted, what="torchvision Faster R-CNN")
    return model.eval()


def load_torchvision_resnet(backbone: ResNet, state_dict: Mapping[str, Tensor]) -> None:
    """ImageNet weights of torchvision's ``resnet{18,34,50,101}`` into our bottom-up pathway.

    The classifier (``fc``) is dropped; stages the backbone does not build (res5 of the C4
    baseline) are dropped too.
    """
    state_dict = {k: v for k, v in _strip_wrappers(state_dict).items() if not k.startswith("fc.")}
    built = {f"layer{int(name[3:]) - 1}." for name in backbone.stage_names}
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith("layer") or k[:7] in built}
    converted = rename_keys(state_dict, RESNET_RENAMES, what="torchvision ResNet")
    load_exactly(backbone, converted, what="torchvision ResNet")
