"""One entry point for other libraries' detectors: read, identify, convert (docs/interop.md).

    checkpoint = read_checkpoint("model_final_280758.pkl")   # no pickled code is run
    identify(checkpoint)                                      # "detectron2"
    foreign = convert_detector(checkpoint)                    # ForeignDetector
    model = FasterRCNN(foreign.cfg); model.load_state_dict(foreign.state_dict)

``ForeignDetector.cfg`` is the config under which our modules compute what the source library
computes with those weights (input format, stride placement, RoIAlign, anchors, proposal
counts, class layout and names); ``state_dict`` is in our key names, background at row 0.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor

from fpn.config.schema import ModelConfig
from fpn.errors import ConversionError
from fpn.interop import detectron2, mmdetection
from fpn.interop.tables import check_exactly, convert_keys, count_blocks, resnet_depth
from fpn.interop.torchvision import DETECTOR_RENAMES, torchvision_config
from fpn.model.detector import FasterRCNN

Library = Literal["fpn", "torchvision", "detectron2", "mmdetection", "torchvision_resnet"]
DETECTOR_LIBRARIES = ("torchvision", "detectron2", "mmdetection")
TORCHVISION = "torchvision Faster R-CNN"


@dataclass
class ForeignDetector:
    """Another library's detector as our config and our state dict.

    Attributes:
        library: where the weights came from ("torchvision", "detectron2", "mmdetection", "fpn").
        cfg: the config that reproduces the source model, class names and category ids included.
        state_dict: tensors in our key names, ready for ``FasterRCNN(cfg).load_state_dict``.
    """

    library: str
    cfg: ModelConfig
    state_dict: dict[str, Tensor]

    def build(self) -> FasterRCNN:
        """Our detector, in eval mode, holding these weights (loaded strictly)."""
        model = FasterRCNN(self.cfg)
        model.load_state_dict(self.state_dict)
        return model.eval()


@functools.cache
def torchvision_coco_categories() -> list[str]:
    """torchvision's 91 COCO slots: "__background__", then the COCO names by id, "N/A" in the gaps."""
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    return list(FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])


def coco80() -> tuple[list[str], list[int]]:
    """COCO's 80 category names in contiguous order, and their COCO category ids (1..90, gaps)."""
    slots = torchvision_coco_categories()
    ids = [i for i, name in enumerate(slots) if name not in ("__background__", "N/A")]
    return [slots[i] for i in ids], ids


def split_checkpoint(checkpoint: Mapping[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(tensors, metadata) of a checkpoint mapping: ``{"model": ...}`` (detectron2, torchvision
    references) and ``{"state_dict": ..., "meta": ...}`` (mmdetection) wrappers are opened; a
    ``module.`` prefix (DistributedDataParallel) is removed."""
    metadata: dict[str, Any] = {}
    state: Mapping[str, Any] = checkpoint
    for wrapper in ("state_dict", "model"):
        if isinstance(checkpoint.get(wrapper), Mapping):
            state = checkpoint[wrapper]
            metadata = {k: v for k, v in checkpoint.items() if k != wrapper}
            break
    not_tensor = next((k for k, v in state.items() if not isinstance(v, Tensor)), None)
    if not_tensor is not None:
        raise ConversionError(f"{not_tensor!r} holds a {type(state[not_tensor]).__name__}, not a tensor: "
                              "not a state dict")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state), metadata


def identify(checkpoint: Mapping[str, Any]) -> Library:
    """Which library's key names a checkpoint (or its state dict) uses.

    Returns "detectron2", "torchvision" (the detector), "mmdetection", "fpn", or
    "torchvision_resnet" (an ImageNet classification ResNet: ``conv1``, ``layer1..4``, ``fc``).
    Raises ConversionError, in one line, for anything else.
    """
    state, _ = split_checkpoint(checkpoint)
    keys = list(state)

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if has("backbone.bottom_up.") or has("proposal_generator."):
        return "detectron2"
    if has("backbone.body.") or has("backbone.fpn.inner_blocks."):
        return "torchvision"
    if has("neck.lateral_convs.") or has("roi_head.") or has("rpn_head.") or has("backbone.layer1."):
        return "mmdetection"
    if has("backbone.stem.") or has("neck.lateral."):
        return "fpn"
    if "conv1.weight" in state and has("layer1.") and "fc.weight" in state:
        return "torchvision_resnet"
    first = keys[0] if keys else "(none)"
    raise ConversionError(f"not a checkpoint of torchvision, detectron2, mmdetection or fpn: "
                          f"{len(keys)} tensors, the first named {first!r}")


def convert_detector(checkpoint: Mapping[str, Any], *, library: str | None = None,
                     cfg: ModelConfig | None = None) -> ForeignDetector:
    """Another library's Faster R-CNN as our config and state dict.

    Args:
        checkpoint: what ``read_checkpoint`` returns (or a bare state dict).
        library: force "torchvision", "detectron2", "mmdetection" or "fpn" instead of
            ``identify``.
        cfg: use this config instead of the inferred one; it must describe the same
            architecture (a mismatch is one line naming the first key and both shapes).
    """
    state, metadata = split_checkpoint(checkpoint)
    library = library or identify(checkpoint)
    match library:
        case "torchvision":
            inferred = cfg is None
            converted, source_of = convert_keys(state, DETECTOR_RENAMES, what=TORCHVISION,
                                                ignore=(r"num_batches_tracked$",))
            if inferred and "roi_heads.box_predictor.cls_score.weight" not in state:
                raise ConversionError(f"{TORCHVISION}: no roi_heads.box_predictor.cls_score.weight")
            cfg = cfg or torchvision_config(state)
            check_exactly(cfg, converted, source_of, what=TORCHVISION)
            if inferred and cfg.roi_heads.num_classes == 90:  # COCO ids as labels, background slot 0
                cfg.class_names = torchvision_coco_categories()[1:]
                cfg.category_ids = list(range(1, 91))
        case "detectron2":
            inferred = cfg is None
            cfg, converted = detectron2.convert_detectron2(state, cfg)
            if inferred and cfg.roi_heads.num_classes == 80:
                cfg.class_names, cfg.category_ids = coco80()
        case "mmdetection":
            inferred = cfg is None
            meta = metadata.get("meta") if isinstance(metadata.get("meta"), Mapping) else {}
            cfg, converted = mmdetection.convert_mmdetection(state, meta, cfg)
            if inferred:
                _mmdetection_names(cfg, mmdetection.class_names(meta))
        case "fpn":
            cfg = cfg or _fpn_config(state)
            converted = state
            check_exactly(cfg, converted, {}, what="fpn checkpoint")
        case "torchvision_resnet":
            raise ConversionError("an ImageNet classification ResNet, not a detector: initialise a "
                                  "training run's backbone with it instead")
        case _:
            raise ConversionError(f"unknown library {library!r}; one of {list(DETECTOR_LIBRARIES)}")
    # published mmdetection checkpoints may be float16 (publish_model.py --float16): ours are float32
    converted = {k: v.float() if v.is_floating_point() else v for k, v in converted.items()}
    return ForeignDetector(library, cfg, converted)


def _mmdetection_names(cfg: ModelConfig, names: list[str]) -> None:
    """The checkpoint's class names if they fit; COCO's 80 if it has none and 80 classes."""
    coco_names, coco_ids = coco80()
    if len(names) == cfg.roi_heads.num_classes:
        cfg.class_names = names
    elif not names and cfg.roi_heads.num_classes == 80:
        cfg.class_names = coco_names
    if cfg.class_names == coco_names:
        cfg.category_ids = coco_ids


def _fpn_config(state: Mapping[str, Tensor]) -> ModelConfig:
    """Our default config with the class count and depth of a bare fpn state dict."""
    cfg = ModelConfig()
    keys = list(state)
    if "roi_heads.box_predictor.cls_score.weight" in state:
        cfg.roi_heads.num_classes = state["roi_heads.box_predictor.cls_score.weight"].shape[0] - 1
    bottleneck = any(re.search(r"\.conv3\.", k) for k in keys)
    cfg.backbone.depth = resnet_depth(count_blocks(keys, r"^backbone\.res4\.(\d+)\."), bottleneck,
                                      what="fpn checkpoint")
    return cfg


def describe(foreign: ForeignDetector) -> str:
    """One line: the library, the classes and the config choices that reproduce it."""
    cfg = foreign.cfg
    names = cfg.class_names
    classes = f"{cfg.roi_heads.num_classes} classes"
    if names:
        shown = [n for n in names if n != "N/A"][:3]
        classes += f" ({', '.join(shown)}, ...)" if len(names) > 3 else f" ({', '.join(shown)})"
    scale = "0-255" if cfg.input.pixel_scale == 255 else "0-1"
    choices = [f"{cfg.input.channel_order} {scale}",
               "stride in 1x1" if cfg.backbone.stride_in_1x1 else "stride in 3x3",
               "aligned RoIAlign" if cfg.roi_heads.aligned else "unaligned RoIAlign",
               f"sampling ratio {cfg.roi_heads.sampling_ratio}",
               "rounded anchors" if cfg.rpn.anchors.round_cell_anchors else "unrounded anchors",
               f"FrozenBN eps {cfg.backbone.frozen_bn_eps:g}",
               f"{cfg.rpn.post_nms_top_n_test} proposals"]
    if cfg.rpn.clamp_box_shrink:
        choices.append("deltas clamped both ways")
    return f"{foreign.library} ResNet-{cfg.backbone.depth}-FPN, {classes}; " + ", ".join(choices)
