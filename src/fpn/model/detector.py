"""The assembled detector: preprocess -> bottom-up -> top-down -> proposals -> RoI heads -> boxes.

One class for the paper's systems (docs/paper.md §2-5), composed by ``ModelConfig``: a proposal
source (the RPN, proposals given with the images, or segment proposals, §5) and, optionally, the
Fast R-CNN box head.
Faster R-CNN with shared features is both: the RPN and Fast R-CNN read the same pyramid and
train jointly. Training mode returns a dict of losses; eval mode returns, per image, boxes in
original-image pixels, as torchvision's detectors do, so it can be swapped in for them.

Shape shorthand: N images, P proposals per image, D detections per image.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from fpn.config.overrides import merge
from fpn.config.read_only import frozen, thawed
from fpn.config.schema import ModelConfig
from fpn.errors import CheckpointError, ConfigError
from fpn.model.backbone import ResNet, stage_channels
from fpn.model.fuse import InferenceCopy
from fpn.model.image_pyramid import check_test_scales, detect_on_image_pyramid
from fpn.model.layout import convolution_input_channels, speed_path_memory_format
from fpn.model.neck import NECK_FACTS, build_neck
from fpn.model.preprocess import ImageBatch, Preprocessor, padded_size, rescale_boxes, resize_scale
from fpn.model.roi_heads import RoIHeads
from fpn.model.rpn import RegionProposalNetwork
from fpn.model.segment_proposals import SegmentProposalHead
from fpn.model.speed_paths import TrainingSpeedPaths, set_training_speed_paths


class FasterRCNN(nn.Module):
    """Faster R-CNN on a feature pyramid, or one of the paper's other systems and baselines.

    In eval mode the bottom-up pathway runs as a copy with its frozen normalisation folded into
    the convolutions, in channels-last memory (``fpn.model.fuse.InferenceCopy``): the same function,
    faster on CPUs. The copy is rebuilt whenever the weights change; set ``fast_inference = False``
    to run the training-mode modules instead. ``compile_inference = True`` also passes that
    copy through ``torch.compile`` (dynamic shapes): a one-off compilation of about half a
    minute on a CPU, then a faster bottom-up pathway (``fpn bench`` measures it).

    In training mode the speed paths chosen when the model is built run (``fast_training``: True for
    all of them, False for none, or a ``TrainingSpeedPaths``): the same function to float rounding.
    They are set by one pass over the built model (``fpn.model.speed_paths``), parts passed in included.

    Channels-last memory is used (in training and in the inference copy) only when every
    convolution of the bottom-up pathway, the pyramid and the RPN head reads a multiple of 16
    channels (``model.backbone.width``, ``model.neck.channels``; ``fpn.model.layout``): at width 8,
    oneDNN's AVX-512 channels-last kernels crashed the training process (issue 25). Other models keep
    the plain layout, decided from the model's structure alone, so a config computes the same
    numbers on every host whatever its instruction set. ``memory_format`` holds the choice.

    Parts can be passed in, built by hand (detectron2's ``GeneralizedRCNN(backbone=..., ...)``):
    ``neck`` any module stating ``fpn.model.neck.Neck``'s facts (the bottom-up pathway is built up
    to the deepest map it reads), ``rpn`` called as ``RegionProposalNetwork``, ``roi_heads`` as
    ``RoIHeads``. The config builds the parts not given; it still says which parts the model has
    (``model.proposals``, ``model.box_head``).
    """

    def __init__(self, cfg: ModelConfig, fast_inference: bool = True, compile_inference: bool = False,
                 fast_training: bool | TrainingSpeedPaths = True, *, neck: nn.Module | None = None,
                 rpn: nn.Module | None = None, roi_heads: nn.Module | None = None):
        super().__init__()
        if not cfg.box_head and cfg.proposals == "given":
            raise ConfigError("model.box_head=false with model.proposals=given leaves nothing to train")
        segments = cfg.proposals == "segments"
        if segments and cfg.box_head:
            raise ConfigError("model.proposals=segments proposes masks without a box head: "
                              "set model.box_head=false")
        if segments and cfg.input.test_scales:
            raise ConfigError("model.input.test_scales (the image pyramid) is not supported with "
                              "model.proposals=segments")
        if rpn is not None and cfg.proposals != "rpn":
            raise ConfigError(f"an rpn was passed in, but model.proposals={cfg.proposals} (set it to rpn)")
        if roi_heads is not None and not cfg.box_head:
            raise ConfigError("roi_heads were passed in, but model.box_head=false")
        if neck is not None:
            _check_neck(neck)
        self.test_scales = tuple(check_test_scales(cfg.input.test_scales))
        # What the model was built from, read-only: every part below keeps its own read-only part of it
        # (``fpn.config.read_only.frozen``), so nothing can change a built model's behaviour but rebuilding it
        # (``with_changes``).
        self.cfg = cfg = frozen(cfg)
        self.fast_inference = fast_inference
        self.compile_inference = compile_inference
        self.training_paths = paths = TrainingSpeedPaths.of(fast_training)
        self.inference_backbone = InferenceCopy()  # not a submodule: nothing in the state dict
        given = {"neck": neck, "rpn": rpn, "roi_heads": roi_heads}
        self.given_parts = tuple(name for name, part in given.items() if part is not None)
        self.preprocess = Preprocessor(cfg.input)
        # The bottom-up pathway stops at the deepest map the neck reads: res4 for the C4 baseline,
        # whose res5 lives in its RoI head.
        neck_reads = neck.in_levels if neck is not None else _levels_read_by_neck(cfg)
        self.backbone = ResNet(cfg.backbone, last_stage=max(int(level[1:]) for level in neck_reads))
        self.neck = neck if neck is not None else build_neck(cfg.neck, self.backbone.out_channels)
        if cfg.neck.frozen:  # shared features fixed (steps 3 and 4 of the paper's Table 5 schedule)
            self.neck.requires_grad_(False)
        levels_read = {name: levels for name, levels, built_here in (  # by the heads built from cfg
            ("rpn.levels", cfg.rpn.levels, cfg.proposals == "rpn" and rpn is None),
            ("roi_heads.levels", cfg.roi_heads.levels, cfg.box_head and roi_heads is None),
            ("segment_proposals.levels", cfg.segment_proposals.levels, segments)) if built_here}
        in_channels = _shared_channels(levels_read, self.neck) if levels_read else 0
        if rpn is None and cfg.proposals == "rpn":
            rpn = RegionProposalNetwork(cfg.rpn, in_channels, self.neck.strides)
        self.rpn = rpn
        if roi_heads is None and cfg.box_head:
            roi_heads = RoIHeads(cfg.roi_heads, in_channels, self.neck.strides, cfg.backbone)
        self.roi_heads = roi_heads
        if segments:  # registered only here, so the other compositions keep their state-dict keys
            self.segment_proposals = SegmentProposalHead(cfg.segment_proposals, in_channels,
                                                         self.neck.strides)
        else:
            self.segment_proposals = None
        set_training_speed_paths(self, paths)
        self.memory_format = speed_path_memory_format(convolution_input_channels(  # of the speed paths
            {"backbone": self.backbone, "neck": self.neck, "rpn": self.rpn}, skip=[self.backbone.stem.conv]))

    @property
    def fast_training(self) -> bool:
        """Whether any training speed path runs (fixed when the model is built)."""
        return self.training_paths != TrainingSpeedPaths.of(False)

    @fast_training.setter
    def fast_training(self, value: bool) -> None:
        raise AttributeError("the training speed paths are chosen when the model is built: "
                             "FasterRCNN(cfg, fast_training=...)")

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def with_changes(self, changes: dict[str, Any]) -> FasterRCNN:
        """A new detector with this one's weights (on its device, in its mode), built from its config
        changed by ``changes``, a nested mapping as ``fpn.config.overrides.merge`` takes (e.g.
        ``{"input": {"min_size_test": 600}}``), with copies of the parts passed in. A change that
        reshapes a weight is a ``ConfigError``."""
        cfg = merge(thawed(self.cfg), changes, "changes")
        given = {name: copy.deepcopy(getattr(self, name)) for name in self.given_parts}
        model = FasterRCNN(cfg, fast_inference=self.fast_inference, compile_inference=self.compile_inference,
                           fast_training=self.training_paths, **given)
        try:
            model.load_state_dict(self.state_dict())
        except RuntimeError as err:
            raise ConfigError(f"changes {changes}: the weights no longer fit ({str(err).splitlines()[1:2]})"
                              ) from None
        return model.to(self.device).train(self.training)

    def load_parts(self, state_dict: dict[str, Tensor], *, source: str, allow_missing: bool = False
                   ) -> dict[str, list[str]]:
        """Load another composition's weights: the parts this detector has, shapes checked.

        Tensors of a part this detector lacks (``rpn.*`` with given proposals, ``roi_heads.*`` for
        the RPN alone) are skipped; so Faster R-CNN weights serve the RPN alone or Fast R-CNN.
        Tensors this detector has and ``state_dict`` lacks are an error unless ``allow_missing``
        (initialising a training run: they keep their fresh initialisation).

        Returns the top-level parts loaded, skipped (absent here) and kept fresh (absent there).
        """
        own = self.state_dict()
        present = {name for name, child in self.named_children() if child is not None}
        foreign = [k for k in state_dict if k not in own]
        skipped = sorted({k.split(".")[0] for k in foreign if k.split(".")[0] not in present})
        unknown = [k for k in foreign if k.split(".")[0] in present]
        if unknown:
            raise CheckpointError(f"{source}: tensor {unknown[0]!r} has no place in this model "
                             f"({len(unknown)} such; a checkpoint of another architecture?)")
        for key, value in state_dict.items():
            if key in own and own[key].shape != value.shape:
                raise CheckpointError(f"{source}: {key} has shape {tuple(value.shape)}, the model expects "
                                 f"{tuple(own[key].shape)}")
        # BatchNorm's step counter is no weight (it only matters with momentum=None): never "missing"
        missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
        if missing and not allow_missing:
            raise CheckpointError(f"{source}: no tensor for {missing[0]!r} ({len(missing)} missing)")
        self.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False)
        return {"loaded": sorted({k.split(".")[0] for k in state_dict if k in own}), "skipped": skipped,
                "fresh": sorted({k.split(".")[0] for k in missing})}

    def features(self, images: Tensor) -> dict[str, Tensor]:
        """(N, 3, H, W) preprocessed batch -> the pyramid {"p2": ..., "p6": ...}."""
        if self.training:
            if self.training_paths.channels_last:
                images = images.contiguous(memory_format=self.memory_format)
            return self.neck(self.backbone(images))
        if not self.fast_inference:
            return self.neck(self.backbone(images))
        backbone = self.inference_backbone.of(self.backbone, compile=self.compile_inference,
                                               channels_last=self.memory_format == torch.channels_last)
        return self.neck(backbone(images.contiguous(memory_format=self.memory_format)))

    def forward(
        self,
        images: list[Tensor],
        targets: list[dict[str, Tensor]] | None = None,
        *,
        proposals: list[Tensor] | None = None,
        return_proposals: bool = False,
        paste_masks: bool = True,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses (training) or detections (eval).

        Args:
            images: 3 x H x W float tensors in [0, 1], RGB, of any sizes.
            targets: per image ``boxes`` (G, 4) xyxy in the image's pixels, ``labels`` (G,) in
                1..K, optionally ``crowd_boxes`` (M, 4); with ``model.proposals=given`` also
                ``proposals`` (P, 4). Training only.
            proposals: with ``model.proposals=given``, in eval mode: (P, 4) boxes per image in
                the image's pixels.
            return_proposals: also return the ``proposals`` and their ``objectness`` per image.
            paste_masks: segment proposals in eval mode: paste the masks into the image
                (``masks``, ``boxes``); False returns only their compact form, which costs
                K·M² numbers per image instead of K·H·W.
        Returns:
            training: the losses of the parts present: {"loss_rpn_objectness", "loss_rpn_box"}
            from the RPN, {"loss_cls", "loss_box"} from the box head.
            eval: per image {"boxes" (D, 4), "scores" (D,), "labels" (D,)} in original pixels, and
            "levels" (D,), the k of the P_k each detection's RoI was pooled from (Eq. 1);
            the RPN alone gives {"proposals" (P, 4), "objectness" (P,)} instead. With
            ``model.input.test_scales`` set, eval mode runs on that image pyramid and merges the
            scales (``fpn.model.image_pyramid``). Segment proposals (``model.proposals=segments``):
            training {"loss_segment_score", "loss_segment_mask"}; eval per image {"scores" (K,),
            "mask_probs" (K, M, M), "mask_regions" (K, 4), "masks" (K, H, W) bool, "boxes" (K, 4)}
            (``fpn.model.segment_proposals``); their targets also carry ``masks`` (G, H, W).
        """
        if self.training and targets is None:
            raise ValueError("targets are required in training mode")
        if not self.training and self.test_scales:
            return detect_on_image_pyramid(self, images, self.test_scales,
                                           return_proposals=return_proposals, proposals=proposals)
        batch, targets = self.preprocess(images, targets, proposals=proposals)
        if self.segment_proposals is not None:  # docs/paper.md §5: the pyramid and the mask MLPs only
            return self.segment_proposals(self.features(batch.tensor), batch.image_sizes,
                                          batch.original_sizes, targets, paste=paste_masks)
        return self.heads(self.features(batch.tensor), batch, targets, return_proposals=return_proposals)

    def heads(
        self,
        features: dict[str, Tensor],
        batch: ImageBatch,
        targets: list[dict[str, Tensor]] | None = None,
        *,
        return_proposals: bool = False,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Everything after the pyramid: proposals, the box head, and boxes in original pixels."""
        losses: dict[str, Tensor] = {}
        if self.rpn is not None:
            alone_in_training = self.training and self.roi_heads is None  # Table 1: only the losses
            proposals, objectness, rpn_losses = self.rpn(features, batch.image_sizes, batch.padded_hw,
                                                         targets, select=not alone_in_training)
            losses.update(rpn_losses)
        else:
            proposals = batch.proposals if targets is None else [t["proposals"] for t in targets]
            if proposals is None:
                raise ValueError("model.proposals=given: pass proposals=[(P, 4) boxes per image]")
            objectness = [torch.ones(len(p), device=p.device) for p in proposals]
        if self.roi_heads is not None:
            detections, roi_losses = self.roi_heads(features, proposals, batch.image_sizes, targets)
            losses.update(roi_losses)
        else:
            detections = [{} for _ in proposals]
            return_proposals = True
        if self.training:
            return losses
        for i, (det, resized_hw, original_hw) in enumerate(
            zip(detections, batch.image_sizes, batch.original_sizes, strict=True)
        ):
            if "boxes" in det:
                det["boxes"] = rescale_boxes(det["boxes"], resized_hw, original_hw)
            if return_proposals:
                det["proposals"] = rescale_boxes(proposals[i], resized_hw, original_hw)
                det["objectness"] = objectness[i]
        return detections

    def num_anchors(self, image_hw: tuple[int, int]) -> int:
        """The RPN's anchors on an image of ``image_hw`` at test time, alone in its batch (Table 1)."""
        if self.rpn is None:
            return 0
        settings = self.preprocess.settings
        scale = resize_scale(image_hw, settings.min_size_test, settings.max_size)
        resized = (int(image_hw[0] * scale), int(image_hw[1] * scale))  # as interpolate rounds
        divisor = settings.size_divisibility
        return self.rpn.num_anchors((padded_size(resized[0], divisor), padded_size(resized[1], divisor)))


def _check_levels(name: str, wanted: list[str], available: list[str]) -> None:
    missing = [level for level in wanted if level not in available]
    if missing:
        raise ConfigError(f"{name}: level(s) {missing} are not produced by the neck (it gives {available})")


def _check_neck(neck: nn.Module) -> None:
    missing = [fact for fact in NECK_FACTS if not hasattr(neck, fact)]
    if missing:
        raise TypeError(f"neck {type(neck).__name__} does not state {missing} (fpn.model.neck.Neck)")


def _levels_read_by_neck(cfg: ModelConfig) -> list[str]:
    """The bottom-up maps the config's neck reads, asked of a copy built on the meta device (no
    memory, no random draws): the real one is built after the bottom-up pathway, so a seed gives
    the weights it always gave."""
    with torch.device("meta"):
        return build_neck(cfg.neck, stage_channels(cfg.backbone)).in_levels


def _shared_channels(levels_read: dict[str, list[str]], neck: nn.Module) -> int:
    """The one channel count of the neck's levels the heads built from the config read."""
    for name, levels in levels_read.items():
        _check_levels(name, levels, neck.levels)
    channels = {neck.out_channels[level] for levels in levels_read.values() for level in levels}
    if len(channels) != 1:
        raise ConfigError("the shared heads need the same channel count on every level")
    return channels.pop()
