"""Fast R-CNN on the pyramid (docs/paper.md §3): level mapper, multi-level RoI pooling, the 2fc head
(or the conv5 head of the C4 baseline), class-specific box regression, losses, post-processing.

Shape shorthand: N images, R RoIs in the batch, C channels, S x S pooled size, K object classes
(the classifier has K + 1 outputs, 0 = background).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align, roi_pool

from fpn.box_format import clip_boxes
from fpn.config.read_only import frozen
from fpn.config.schema import BackboneConfig, RoIHeadConfig
from fpn.model import boxes as box_ops
from fpn.model.backbone import make_norm_factory, make_stage, stage_channels
from fpn.model.loss_normalizer import loss_normalizer
from fpn.model.precision import full_precision
from fpn.model.roi_align import roi_align_for_training

# Keeps the RoI heads' random sampling stream of an image apart from the RPN's (salt 0).
SAMPLING_SALT = 1


def map_rois_to_levels(
    boxes_xyxy: Tensor,
    min_level: int,
    max_level: int,
    *,
    canonical_scale: float = 224.0,
    canonical_level: int = 4,
    eps: float = 1e-6,
) -> Tensor:
    """(R,) pyramid level k = floor(k0 + log2(sqrt(wh) / 224)), clamped to [min, max].

    Eq. 1 of the paper (docs/paper.md §3).

    A 224x224 RoI (ImageNet's size) goes to k0 = 4; each halving of the side moves one level
    finer. ``eps`` keeps exact powers of two (112 -> 3) from rounding down a level.
    """
    widths = boxes_xyxy[:, 2] - boxes_xyxy[:, 0]
    heights = boxes_xyxy[:, 3] - boxes_xyxy[:, 1]
    scale = torch.sqrt(widths * heights)
    levels = torch.floor(canonical_level + torch.log2(scale / canonical_scale) + eps)
    return levels.clamp(min=min_level, max=max_level).to(torch.int64)


RoIAlignFn = Callable[[Tensor, Tensor, int, float, int, bool], Tensor]


class MultiLevelRoIPooler(nn.Module):
    """Pool each RoI from the level the level mapper picks (RoIAlign, or RoIPool for ablation).

    Args:
        strides: the levels to pool from and their strides, e.g. ``{"p2": 4, ..., "p5": 32}``.
        training_roi_align: the RoIAlign implementation of training mode, called as torchvision's
            ``roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned)``. The
            default, ``fpn.model.roi_align.roi_align_for_training``, is the sparse matrix product on a
            CPU (the same numbers to float rounding, and a backward pass many times faster than
            torchvision's serial CPU one); eval mode always runs torchvision's ``roi_align``.
    """

    def __init__(self, strides: dict[str, int], *, output_size: int = 7, sampling_ratio: int = 2,
                 aligned: bool = False, kind: str = "roi_align", canonical_scale: float = 224.0,
                 canonical_level: int = 4, training_roi_align: RoIAlignFn = roi_align_for_training):
        super().__init__()
        self.strides = dict(strides)
        self.level_of = {int(name[1:]): name for name in strides}
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.kind = kind
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level
        self.training_roi_align = training_roi_align

    def forward(self, features: dict[str, Tensor], boxes_per_image: list[Tensor]) -> Tensor:
        """N x (Ri, 4) boxes -> (R, C, S, S) pooled features, in the order of the boxes."""
        boxes = torch.cat(boxes_per_image)
        batch_index = torch.cat([
            torch.full((b.shape[0], 1), i, dtype=boxes.dtype, device=boxes.device)
            for i, b in enumerate(boxes_per_image)
        ])
        rois = torch.cat([batch_index, boxes], dim=1)  # (R, 5): image index, x1, y1, x2, y2
        levels = self.levels(boxes)
        first = features[next(iter(self.strides))]
        size = self.output_size
        pooled = first.new_zeros((rois.shape[0], first.shape[1], size, size))
        for k, name in self.level_of.items():  # no branch on a level's RoI count: export traces this
            idx = torch.nonzero(levels == k).squeeze(1)
            pooled[idx] = self._pool(features[name], rois[idx], 1.0 / self.strides[name])
        return pooled

    def levels(self, boxes_xyxy: Tensor) -> Tensor:
        """(R,) the k of the P_k each (R, 4) box is pooled from (Eq. 1, clamped to the pooler's levels)."""
        return map_rois_to_levels(boxes_xyxy, min(self.level_of), max(self.level_of),
                                  canonical_scale=self.canonical_scale, canonical_level=self.canonical_level)

    def _pool(self, feature: Tensor, rois: Tensor, spatial_scale: float) -> Tensor:
        if self.kind == "roi_pool":
            return roi_pool(feature, rois, (self.output_size, self.output_size), spatial_scale)
        align = self.training_roi_align if self.training else roi_align
        return align(feature, rois, self.output_size, spatial_scale, self.sampling_ratio, self.aligned)


class TwoFCHead(nn.Module):
    """Two hidden 1024-d fully-connected layers with ReLU, shared across levels (docs/paper.md §3)."""

    def __init__(self, in_channels: int, resolution: int, fc_dim: int = 1024):
        super().__init__()
        self.fc6 = nn.Linear(in_channels * resolution * resolution, fc_dim)
        self.fc7 = nn.Linear(fc_dim, fc_dim)
        self.out_features = fc_dim

    def forward(self, pooled: Tensor) -> Tensor:
        """(R, C, S, S) -> (R, fc_dim)."""
        return F.relu(self.fc7(F.relu(self.fc6(pooled.flatten(1)), inplace=True)), inplace=True)


class Res5Head(nn.Module):
    """The conv5 head of He et al. on C4 RoIs (ablation a): res5 (stride 2), then average pool."""

    def __init__(self, backbone_cfg: BackboneConfig, in_channels: int):
        super().__init__()
        self.res5 = make_stage(backbone_cfg, 5, in_channels, make_norm_factory(backbone_cfg), first_stride=2)
        self.out_features = stage_channels(backbone_cfg)["c5"]

    def forward(self, pooled: Tensor) -> Tensor:
        """(R, C4, 14, 14) -> (R, C5)."""
        return self.res5(pooled).mean(dim=(2, 3))


class BoxPredictor(nn.Module):
    """Classifier over K + 1 classes and class-specific box deltas (K + 1) x 4."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        self.bbox_pred = nn.Linear(in_features, (num_classes + 1) * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(R, F) -> (R, K + 1) class logits, (R, 4(K + 1)) deltas."""
        return self.cls_score(x), self.bbox_pred(x)


class RoIHeads(nn.Module):
    """Sampling, pooling, head, predictor, losses and detections for Fast R-CNN on the pyramid.

    Args:
        settings: ``model.roi_heads`` (kept read-only).
        in_channels: channels of the levels it pools from.
        strides: the levels it pools from and their declared strides.
        backbone_cfg: needed only by the ``res5`` head, which is built like the backbone's res5.

    The training speed paths of the res5 head's ConvNorms and of the pooler are set after building,
    on the whole detector (``fpn.model.speed_paths``).
    """

    def __init__(self, settings: RoIHeadConfig, in_channels: int, strides: dict[str, int],
                 backbone_cfg: BackboneConfig | None = None):
        super().__init__()
        self.settings = cfg = frozen(settings)
        self.pooler = MultiLevelRoIPooler(
            {level: strides[level] for level in cfg.levels}, output_size=cfg.pooler_resolution,
            sampling_ratio=cfg.sampling_ratio, aligned=cfg.aligned, kind=cfg.pooler,
            canonical_scale=cfg.canonical_scale, canonical_level=cfg.canonical_level,
        )
        match cfg.head:
            case "2fc":
                self.box_head = TwoFCHead(in_channels, cfg.pooler_resolution, cfg.fc_dim)
            case "res5":
                self.box_head = Res5Head(backbone_cfg or BackboneConfig(), in_channels)
            case _:
                raise ValueError(f"unknown RoI head {cfg.head!r}")
        self.box_predictor = BoxPredictor(self.box_head.out_features, cfg.num_classes)

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Detections per image (eval) or losses (training)."""
        if self.training:
            if targets is None:
                raise ValueError("the RoI heads need targets in training mode")
            proposals, labels, regression_targets = self.sample_proposals(proposals, targets, generator)
        class_logits, box_deltas = self.box_predictor(self.box_head(self.pooler(features, proposals)))
        # fp32 from here whatever the fc layers ran in (bf16 autocast, fpn.model.precision)
        class_logits, box_deltas = full_precision(class_logits, box_deltas)
        if self.training:
            return [], self.losses(class_logits, box_deltas, labels, regression_targets)
        return self.detections(class_logits, box_deltas, proposals, image_sizes), {}

    def sample_proposals(
        self, proposals: list[Tensor], targets: list[dict[str, Tensor]], generator: torch.Generator | None
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        """Add the ground truth to the proposals, label them by IoU and sample 512 per image.

        Returns the sampled boxes per image, their labels (R,) (0 = background) and the
        regression targets (R, 4) (meaningful for the foreground only).
        """
        cfg = self.settings
        sampled_boxes, sampled_labels, sampled_targets = [], [], []
        for image_proposals, target in zip(proposals, targets, strict=True):
            gt_boxes, gt_labels = target["boxes"], target["labels"]
            candidates = torch.cat([image_proposals, gt_boxes.to(image_proposals.dtype)])
            matches = box_ops.match_anchors(gt_boxes, candidates, high=cfg.fg_iou_thresh,
                                            low=cfg.bg_iou_thresh, allow_low_quality=False)
            if len(gt_boxes):
                labels = gt_labels[matches.clamp(min=0)].clone()
                matched_gt = gt_boxes[matches.clamp(min=0)]
            else:  # an image of background only
                labels = torch.zeros_like(matches)
                matched_gt = candidates
            labels[matches == box_ops.BELOW_LOW] = 0
            labels[matches == box_ops.BETWEEN] = -1
            pos, neg = box_ops.sample_for_training(
                labels, candidates, target, batch_size=cfg.batch_size_per_image,
                positive_fraction=cfg.positive_fraction, crowd_ioa_thresh=cfg.crowd_ioa_thresh,
                salt=SAMPLING_SALT, generator=generator,
            )
            keep = torch.cat([pos, neg])
            boxes = candidates[keep]
            sampled_targets.append(box_ops.encode_boxes(matched_gt[keep], boxes, cfg.box_weights))
            sampled_boxes.append(boxes)
            sampled_labels.append(labels[keep])
        return sampled_boxes, torch.cat(sampled_labels), torch.cat(sampled_targets)

    def losses(self, class_logits: Tensor, box_deltas: Tensor, labels: Tensor,
               regression_targets: Tensor) -> dict[str, Tensor]:
        """Cross-entropy over K + 1 classes; smooth-L1 on the true class's deltas of foreground RoIs.

        Both are sums over the sampled RoIs divided by their count (over all processes under
        DDP: ``loss_normalizer``), so that a step does not depend on how images are spread.
        """
        normalizer = loss_normalizer(labels.numel(), labels.device)
        loss_cls = F.cross_entropy(class_logits, labels, reduction="sum") / normalizer
        fg = torch.nonzero(labels > 0).squeeze(1)
        deltas = box_deltas.reshape(box_deltas.shape[0], -1, 4)[fg, labels[fg]]  # (R_fg, 4)
        loss_box = F.smooth_l1_loss(
            deltas, regression_targets[fg], beta=self.settings.smooth_l1_beta, reduction="sum"
        ) / normalizer
        return {"loss_cls": loss_cls, "loss_box": loss_box}

    def detections(self, class_logits: Tensor, box_deltas: Tensor, proposals: list[Tensor],
                   image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Decode, clip, drop background and low scores, per-class NMS, keep the best 100.

        Besides ``boxes``, ``scores``, ``labels``, each detection carries ``levels``: the k of the
        P_k its RoI (the proposal it was regressed from) was pooled from (Eq. 1, docs/paper.md §3).
        """
        cfg = self.settings
        num_classes = class_logits.shape[1]
        boxes_all = box_ops.decode_boxes(box_deltas, torch.cat(proposals), cfg.box_weights,
                                         clamp_shrink=cfg.clamp_box_shrink)  # (R, K+1, 4)
        scores_all = F.softmax(class_logits, dim=1)
        counts = [p.shape[0] for p in proposals]
        results = []
        for boxes, scores, rois, image_hw in zip(boxes_all.split(counts), scores_all.split(counts), proposals,
                                                 image_sizes, strict=True):
            boxes = clip_boxes(boxes, image_hw)[:, 1:].reshape(-1, 4)  # drop background
            labels = torch.arange(1, num_classes, device=scores.device).repeat(scores.shape[0])
            # (Ri,) -> (Ri*K,): the RoI level of every (RoI, class) pair, in the order of ``boxes``
            levels = self.pooler.levels(rois).repeat_interleave(num_classes - 1)
            scores = scores[:, 1:].reshape(-1)
            keep = torch.nonzero(scores > cfg.score_thresh).squeeze(1)
            boxes, scores, labels, levels = boxes[keep], scores[keep], labels[keep], levels[keep]
            keep = box_ops.nonempty_mask(boxes, cfg.min_box_size)
            boxes, scores, labels, levels = boxes[keep], scores[keep], labels[keep], levels[keep]
            keep = box_ops.batched_nms(boxes, scores, labels, cfg.nms_thresh)[: cfg.detections_per_image]
            results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep],
                            "levels": levels[keep]})
        return results
