"""The config's schema: one dataclass per part of the model, and the run around it.

Every field carries the paper's default (docs/paper.md); presets in ``fpn/configs/*.yaml`` list
only the fields they change. Variants are ``Literal`` fields resolved by a ``match`` in each
module's ``build_*`` function: there is no registry. A new section of ``Config`` is one field
here: overrides on the command line (``fpn.config.overrides``) take their sections from it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class BackboneConfig:
    """ResNet bottom-up pathway (docs/paper.md §1, §6)."""

    depth: Literal[18, 34, 50, 101] = 50
    norm: Literal["frozen_bn", "bn", "gn"] = "frozen_bn"
    # Stages frozen from the input: 0 none, 1 the stem, 2 stem + res2 (the paper's), ... 5 all.
    freeze_at: int = 2
    # detectron2's MSRA weights stride the 1x1 conv of a bottleneck; torchvision strides the 3x3.
    stride_in_1x1: bool = False
    # Channels of the stem and of res2's bottleneck; 64 is every published ResNet.
    width: int = 64
    frozen_bn_eps: float = 1e-5
    gn_groups: int = 32


@dataclass
class NeckConfig:
    """The feature pyramid (docs/paper.md §1) and the single-scale baselines of Tables 1-3."""

    kind: Literal["fpn", "single_scale"] = "fpn"
    channels: int = 256  # d
    top_down: bool = True  # ablation (d) turns it off
    lateral: bool = True  # ablation (e) turns it off
    p6: bool = True  # P6 = stride-2 subsampling of P5, for the RPN
    # With kind: single_scale the heads read this bottom-up map directly (ablations a, b).
    single_level: Literal["c4", "c5"] = "c4"
    # Fix the pyramid's weights (with backbone.freeze_at: 5, the shared features of Table 5's
    # steps 3 and 4, in which only the RPN or the box head is fine-tuned).
    frozen: bool = False


@dataclass
class AnchorConfig:
    """One anchor scale per level, three aspect ratios (docs/paper.md §2)."""

    sizes: dict[str, list[float]] = field(
        default_factory=lambda: {"p2": [32.0], "p3": [64.0], "p4": [128.0], "p5": [256.0], "p6": [512.0]}
    )
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    # torchvision rounds its cell anchors to integers ([-23, -11, 23, 11] for 32 px at 1:2).
    round_cell_anchors: bool = True
    # torchvision derives a level's stride as padded_size // feature_size instead of the declared
    # stride; they differ on P6 when P5's size is odd (800 px: 61 instead of 64). Converted
    # torchvision models set this to reproduce its anchors exactly.
    stride_from_feature_size: bool = False


@dataclass
class RPNConfig:
    """Region Proposal Network on the pyramid (docs/paper.md §2)."""

    levels: list[str] = field(default_factory=lambda: ["p2", "p3", "p4", "p5", "p6"])
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    conv_channels: int | None = None  # hidden 3x3 conv width; None = the feature width
    pre_nms_top_n_train: int = 2000  # per level
    pre_nms_top_n_test: int = 1000
    post_nms_top_n_train: int = 2000  # per image
    post_nms_top_n_test: int = 1000
    nms_thresh: float = 0.7
    min_box_size: float = 1e-3
    fg_iou_thresh: float = 0.7
    bg_iou_thresh: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    box_weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])
    # Decoding clamps dw, dh at log(1000/16) from above (torchvision, detectron2); mmdetection also
    # clamps them from below at -log(1000/16), so a box shrinks at most 62.5 times (docs/interop.md §4).
    clamp_box_shrink: bool = False
    smooth_l1_beta: float = 1.0 / 9.0
    # Anchors covering a crowd region by more than this fraction are ignored, never negatives.
    crowd_ioa_thresh: float = 0.5


@dataclass
class RoIHeadConfig:
    """Fast R-CNN on the pyramid (docs/paper.md §3)."""

    levels: list[str] = field(default_factory=lambda: ["p2", "p3", "p4", "p5"])
    head: Literal["2fc", "res5"] = "2fc"  # res5: the conv5 head of He et al. (ablation a)
    pooler: Literal["roi_align", "roi_pool"] = "roi_align"
    pooler_resolution: int = 7
    sampling_ratio: int = 2
    aligned: bool = False
    canonical_scale: float = 224.0
    canonical_level: int = 4
    fc_dim: int = 1024
    num_classes: int = 80  # object classes K; the classifier has K + 1 outputs, 0 = background
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    fg_iou_thresh: float = 0.5
    bg_iou_thresh: float = 0.5
    box_weights: list[float] = field(default_factory=lambda: [10.0, 10.0, 5.0, 5.0])
    clamp_box_shrink: bool = False  # as model.rpn.clamp_box_shrink (mmdetection: true)
    smooth_l1_beta: float = 1.0 / 9.0
    crowd_ioa_thresh: float = 0.5  # RoIs mostly inside a crowd region are ignored, not negatives
    score_thresh: float = 0.05
    min_box_size: float = 0.01  # detections narrower or shorter than this (px) are dropped
    nms_thresh: float = 0.5
    detections_per_image: int = 100


@dataclass
class SegmentProposalConfig:
    """Segment proposals on the pyramid: DeepMask-style mask MLPs on every level (docs/paper.md §5).

    Used when ``model.proposals: segments`` (with ``model.box_head: false``). A mask MLP is a
    window x window conv to ``hidden_channels`` + ReLU, then sibling 1x1 convs: mask_size² mask
    logits and one score logit per position; one set of weights per MLP, shared by all levels.
    """

    levels: list[str] = field(default_factory=lambda: ["p2", "p3", "p4", "p5", "p6"])
    # "5x5": the 5x5 MLP only; "7x7": the 7x7 MLP only; "dual": both (Table 6).
    mlps: Literal["5x5", "7x7", "dual"] = "dual"
    # Object scale, max(width, height) in resized-image pixels, that the 5x5 MLP proposes on each level.
    object_scales: dict[str, float] = field(
        default_factory=lambda: {"p2": 32.0, "p3": 64.0, "p4": 128.0, "p5": 256.0, "p6": 512.0}
    )
    # The 7x7 MLP proposes the half-octave scales: object_scales times this factor (7 ≈ 5·√2).
    half_octave_factor: float = 2**0.5
    hidden_channels: int = 512
    mask_size: int = 14  # 28: Table 6's "2x mask resolution"
    # A mask covers a square of object scale · (1 + context_padding) centred on its position:
    # 40, 80, 160, 320, 640 px on P2..P6 for the 5x5 MLP (√2 times that for the 7x7).
    context_padding: float = 0.25
    # A position of level k is positive for an object of its scale whose centre is at most
    # positive_radius cells (positive_radius · 2^k px) away in x and in y.
    positive_radius: float = 1.0
    samples_per_image: int = 128
    positive_fraction: float = 0.25  # positives : negatives = 1 : 3
    mask_loss_weight: float = 10.0  # against 1 for the score loss
    detections_per_image: int = 1000  # best-scoring positions kept at test time (no NMS)
    mask_threshold: float = 0.5  # on the pasted, bilinearly upsampled mask probabilities


@dataclass
class InputConfig:
    """Resize, normalise and pad (docs/paper.md §1, §6); done outside the network, replaceable."""

    min_size_train: list[int] = field(default_factory=lambda: [800])  # one drawn per image
    min_size_test: int = 800
    # The featurized image pyramid at test time (docs/paper.md §7): shorter sides in pixels, one
    # forward pass each, detections (or proposals) merged by NMS; empty = the single scale
    # min_size_test. max_size still caps the longer side at every scale.
    test_scales: list[int] = field(default_factory=list)
    max_size: int = 1333
    pixel_mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    pixel_std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    # Images arrive as RGB floats in [0, 1]; detectron2 weights expect BGR in 0-255.
    pixel_scale: float = 1.0
    channel_order: Literal["RGB", "BGR"] = "RGB"
    size_divisibility: int = 32


@dataclass
class ModelConfig:
    """The detector as a composition (docs/paper.md §2-3): the paper's systems share every part.

    - Faster R-CNN (Table 3): ``proposals: rpn`` and ``box_head: true`` (the default);
    - RPN alone (Table 1): ``proposals: rpn`` and ``box_head: false``;
    - Fast R-CNN on fixed proposals (Table 2): ``proposals: given`` and ``box_head: true``; the
      proposals come with each training target (``"proposals"``) and as the ``proposals``
      argument in eval mode.
    - Segment proposals (Table 6): ``proposals: segments`` and ``box_head: false``; the mask
      MLPs of ``segment_proposals`` read the pyramid (docs/paper.md §5).
    """

    proposals: Literal["rpn", "given", "segments"] = "rpn"
    box_head: bool = True
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    neck: NeckConfig = field(default_factory=NeckConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi_heads: RoIHeadConfig = field(default_factory=RoIHeadConfig)
    segment_proposals: SegmentProposalConfig = field(default_factory=SegmentProposalConfig)
    input: InputConfig = field(default_factory=InputConfig)
    # What the labels 1..K mean: filled in from the training set, so a checkpoint describes itself.
    class_names: list[str] = field(default_factory=list)
    category_ids: list[int] = field(default_factory=list)  # dataset category id of label i + 1


@dataclass
class DataConfig:
    """Where the images and annotations are, and in which format (``fpn.data.formats``)."""

    # A name in fpn.data.formats.FORMATS (coco, voc, yolo): a table, so that a new format is one
    # module and one entry there; an unknown name is refused when the data is opened.
    format: str = "coco"
    # COCO: the image folders and the annotation JSONs; YOLO: the image folders (labels found by
    # Ultralytics' images/ -> labels/ rule) and the data.yaml or classes.txt naming the classes.
    train_images: str = "data/synth/train/images"
    train_annotations: str = "data/synth/train/annotations.json"
    val_images: str = "data/synth/val/images"
    val_annotations: str = "data/synth/val/annotations.json"
    voc_root: str = ""
    # The class names of a VOC-format set, in label order; empty: Pascal VOC's 20 classes.
    voc_classes: list[str] = field(default_factory=list)
    # Fixed proposals for Fast R-CNN (model.proposals=given), written by `fpn proposals`; at most
    # model.rpn.post_nms_top_n_train (training) / post_nms_top_n_test (evaluation) are used per image.
    train_proposals: str = ""
    val_proposals: str = ""
    horizontal_flip: float = 0.5
    num_workers: int = 2
    # Annotations naming unknown image or category ids (YOLO: class indices), repeated image ids,
    # malformed segmentations: "error" refuses the file; "warn" skips them, counted in one warning.
    on_bad_annotations: Literal["error", "warn"] = "error"
    # A COCO file_name that is absolute or leaves the image folder ("../../x.jpg") is refused naming
    # the image; true reads it anyway (an annotation file from elsewhere could name any file).
    allow_outside_image_paths: bool = False


@dataclass
class TrainConfig:
    """The optimisation schedule (docs/paper.md §6)."""

    batch_size: int = 16
    base_lr: float = 0.02  # for base_batch_size images; scaled linearly with batch_size
    base_batch_size: int = 16
    momentum: float = 0.9
    weight_decay: float = 1e-4
    max_iter: int = 90000
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    lr_steps: list[int] = field(default_factory=lambda: [60000, 80000])
    lr_gamma: float = 0.1
    grad_clip_norm: float | None = None
    checkpoint_period: int = 5000
    keep_checkpoints: int = 3  # the newest checkpoints kept in RUN/checkpoints; 0 keeps every one
    eval_period: int = 0  # 0: only at the end
    log_period: int = 20
    seed: int = 0
    device: str = "auto"  # auto: cuda when present, else cpu
    # What the forward pass computes in. bf16: autocast (convolutions and fc layers in bf16; master
    # weights, optimizer, losses and box maths in fp32), on a CPU worthwhile only where it computes
    # bf16 natively (avx512_bf16, amx_bf16); fp16: CUDA only, with loss scaling; auto: bf16 where the
    # CPU or GPU computes it natively, else fp32 (fpn.model.precision). Replaces train.amp (off ->
    # fp32, bf16 -> auto, fp16 -> fp16), which older config files may still name.
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "fp32"
    max_bad_samples: int = 100
    # Weights that initialise the model, loaded in order (later ones win): fpn runs or checkpoints,
    # torchvision / detectron2 / mmdetection detector checkpoints, or a torchvision ImageNet ResNet
    # (into the backbone). The parts the model has are loaded, shapes checked; parts absent from
    # them stay fresh. Classifier and box-regressor rows are carried over for classes whose names
    # match the training set's and re-initialised for the others (docs/finetuning.md).
    init: list[str] = field(default_factory=list)
    # A tensor of train.init whose shape does not fit the model: false = a one-line error naming
    # it; true = keep the model's fresh tensor and say so in the initialisation report.
    init_skip_mismatched: bool = False
    # Fine-tuning on little data: the first heads_only_iters steps train only the heads (RPN, box
    # head, mask MLPs) with the backbone and pyramid fixed; then every unfrozen part trains.
    heads_only_iters: int = 0
    # The backbone's learning rate as a fraction of the heads' (0.1 is common when fine-tuning).
    backbone_lr_factor: float = 1.0


@dataclass
class PretrainConfig:
    """Pre-training the bottom-up pathway as a classifier of object crops (``fpn pretrain``).

    The stand-in for ImageNet weights where none exist (docs/pretraining.md): crops of the objects
    of ``data.train_*`` with some context, and of background, classified by a linear layer on C5.
    """

    crop_size: int = 64
    # A crop's window is this many times its object's longer side (drawn log-uniformly per crop).
    context: list[float] = field(default_factory=lambda: [1.5, 3.0])
    background_per_object: float = 0.25
    held_out: float = 0.1  # share of the images whose crops measure the accuracy, never trained on
    iters: int = 2000
    batch_size: int = 128
    lr: float = 0.1  # cosine decay to 0 after a linear warm-up
    warmup_iters: int = 100
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)


def to_dict(cfg: Any) -> Any:
    """A config (or part of one, frozen or not) as plain YAML-able Python values."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, list | tuple):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, Mapping):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg
