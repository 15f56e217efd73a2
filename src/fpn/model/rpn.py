"""Region Proposal Network on the pyramid (docs/paper.md §2).

One head, shared by every level: a 3x3 conv + ReLU, then sibling 1x1 convs for A objectness
logits and 4A box deltas per location. Anchors carry the scale (one size per level), so ground
truth is never assigned to levels explicitly.

Shape shorthand: N images, L levels, A anchors per cell, Hi x Wi the size of level i,
R = sum_i Hi·Wi·A anchors per image, P proposals per image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fpn.box_format import clip_boxes
from fpn.config.read_only import frozen
from fpn.config.schema import RPNConfig
from fpn.errors import ConfigError
from fpn.model import boxes as box_ops
from fpn.model.anchors import AnchorGenerator
from fpn.model.loss_normalizer import loss_normalizer
from fpn.model.precision import full_precision

# Keeps the RPN's random sampling stream of an image apart from the RoI heads' (salt 1).
SAMPLING_SALT = 0


class RPNHead(nn.Module):
    """The head shared across levels: 3x3 conv + ReLU, objectness (A) and deltas (4A)."""

    def __init__(self, in_channels: int, num_anchors: int, conv_channels: int | None = None):
        super().__init__()
        hidden = conv_channels or in_channels
        self.conv = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.objectness_logits = nn.Conv2d(hidden, num_anchors, 1)
        self.anchor_deltas = nn.Conv2d(hidden, num_anchors * 4, 1)
        for conv in (self.conv, self.objectness_logits, self.anchor_deltas):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """L x (N, C, Hi, Wi) -> L x (N, A, Hi, Wi) logits and L x (N, 4A, Hi, Wi) deltas."""
        logits_per_level, deltas_per_level = [], []
        for x in features:
            hidden = F.relu(self.conv(x), inplace=True)
            logits_per_level.append(self.objectness_logits(hidden))
            deltas_per_level.append(self.anchor_deltas(hidden))
        return logits_per_level, deltas_per_level


def flatten_predictions(logits_per_level: list[Tensor], deltas_per_level: list[Tensor]
                        ) -> tuple[Tensor, Tensor]:
    """Lay predictions out in anchor order (level, y, x, anchor): (N, R) logits, (N, R, 4) deltas."""
    logits, deltas = [], []
    for level_logits, level_deltas in zip(logits_per_level, deltas_per_level, strict=True):
        n, a, h, w = level_logits.shape
        logits.append(level_logits.permute(0, 2, 3, 1).reshape(n, -1))  # (N, A, H, W) -> (N, HWA)
        # (N, A*4, H, W) -> (N, A, 4, H, W) -> (N, H, W, A, 4) -> (N, HWA, 4)
        level_deltas = level_deltas.view(n, a, 4, h, w).permute(0, 3, 4, 1, 2)
        deltas.append(level_deltas.reshape(n, -1, 4))
    return torch.cat(logits, dim=1), torch.cat(deltas, dim=1)


class RegionProposalNetwork(nn.Module):
    """Anchors, head, proposal selection and (in training) losses.

    Args:
        settings: ``model.rpn``: anchors, thresholds, sampling and top-k (kept read-only).
        in_channels: channels of the levels it reads (the same on every level).
        strides: declared stride of each level it reads.
    """

    def __init__(self, settings: RPNConfig, in_channels: int, strides: dict[str, int]):
        super().__init__()
        self.settings = cfg = frozen(settings)
        self.levels = list(cfg.levels)
        missing = [level for level in self.levels if level not in cfg.anchors.sizes]
        if missing:
            raise ConfigError(f"model.rpn.anchors.sizes has no sizes for level(s) {missing}")
        self.anchor_generator = AnchorGenerator(
            {level: cfg.anchors.sizes[level] for level in self.levels},
            strides,
            cfg.anchors.aspect_ratios,
            round_cell_anchors=cfg.anchors.round_cell_anchors,
            stride_from_feature_size=cfg.anchors.stride_from_feature_size,
        )
        counts = {self.anchor_generator.num_anchors_per_cell(level) for level in self.levels}
        if len(counts) != 1:
            raise ConfigError("model.rpn.anchors: the shared RPN head needs the same number of anchors on "
                              "every level")
        self.head = RPNHead(in_channels, counts.pop(), cfg.conv_channels)

    def num_anchors(self, padded_hw: tuple[int, int]) -> int:
        """Anchors on an input of ``padded_hw`` (a multiple of the coarsest stride's divisor).

        The count Table 1 reports per image: sum over levels of ceil(H / stride) x ceil(W / stride) x A.
        """
        height, width = padded_hw
        return sum(math.ceil(height / self.anchor_generator.strides[level])
                   * math.ceil(width / self.anchor_generator.strides[level])
                   * self.anchor_generator.num_anchors_per_cell(level) for level in self.levels)

    def forward(
        self,
        features: dict[str, Tensor],
        image_sizes: list[tuple[int, int]],
        padded_hw: tuple[int, int],
        targets: list[dict[str, Tensor]] | None = None,
        generator: torch.Generator | None = None,
        *,
        select: bool = True,
    ) -> tuple[list[Tensor], list[Tensor], dict[str, Tensor]]:
        """Proposals (P, 4) and their objectness probabilities (P,) per image, and losses.

        Args:
            features: the pyramid; the levels in ``settings.levels`` are read.
            image_sizes: (h, w) of each resized image before padding (boxes are clipped to it).
            padded_hw: (H, W) of the padded batch.
            targets: per image ``boxes`` (G, 4) and optionally ``crowd_boxes``; training only.
            select: False skips proposal selection (empty lists come back): an RPN trained alone
                (Table 1) needs only its losses, and top-k + NMS over every image is not free.
        """
        level_maps = [features[level] for level in self.levels]
        logits_per_level, deltas_per_level = self.head(level_maps)
        anchors_per_level = self.anchor_generator(
            {lvl: tuple(x.shape[-2:]) for lvl, x in zip(self.levels, level_maps, strict=True)},
            padded_hw,
            level_maps[0].device,
        )
        logits, deltas = flatten_predictions(logits_per_level, deltas_per_level)
        # fp32 from here whatever the convs ran in (bf16 autocast, fpn.model.precision): decoding,
        # clipping, NMS and the losses never see low precision
        logits, deltas = full_precision(logits, deltas)
        num_per_level = [a.shape[0] for a in anchors_per_level]
        anchors = torch.cat(anchors_per_level, dim=0)  # (R, 4)
        proposals, scores = [], []
        if select:
            proposals, scores = self.select_proposals(
                anchors, logits.detach(), deltas.detach(), num_per_level, image_sizes
            )
        losses: dict[str, Tensor] = {}
        if self.training:
            if targets is None:
                raise ValueError("the RPN needs targets in training mode")
            losses = self.losses(anchors, logits, deltas, targets, generator)
        return proposals, scores, losses

    def select_proposals(
        self,
        anchors: Tensor,
        logits: Tensor,
        deltas: Tensor,
        num_per_level: list[int],
        image_sizes: list[tuple[int, int]],
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Per level top-k, decode, clip, drop tiny, NMS per level, top-N per image (docs/paper.md §2)."""
        pre_nms = self.settings.pre_nms_top_n_train if self.training else self.settings.pre_nms_top_n_test
        post_nms = self.settings.post_nms_top_n_train if self.training else self.settings.post_nms_top_n_test
        top_idx, level_ids, offset = [], [], 0
        for level_index, level_logits in enumerate(logits.split(num_per_level, dim=1)):
            k = torch.sym_min(pre_nms, level_logits.shape[1])  # sym_min: no branch on a traced size
            top_idx.append(level_logits.topk(k, dim=1).indices + offset)  # (N, k)
            level_ids.append(torch.full((k,), level_index, device=logits.device))
            offset += level_logits.shape[1]
        top_idx = torch.cat(top_idx, dim=1)  # (N, sum_k)
        levels = torch.cat(level_ids)
        proposals, scores = [], []
        per_image = zip(logits, deltas, top_idx, image_sizes, strict=True)
        for image_logits, image_deltas, idx, image_hw in per_image:
            boxes = box_ops.decode_boxes(image_deltas[idx], anchors[idx], self.settings.box_weights,
                                         clamp_shrink=self.settings.clamp_box_shrink)[:, 0]
            boxes = clip_boxes(boxes, image_hw)
            prob = torch.sigmoid(image_logits[idx])
            keep = box_ops.nonempty_mask(boxes, self.settings.min_box_size)
            boxes, prob, lvl = boxes[keep], prob[keep], levels[keep]
            keep = box_ops.batched_nms(boxes, prob, lvl, self.settings.nms_thresh)[:post_nms]
            proposals.append(boxes[keep])
            scores.append(prob[keep])
        return proposals, scores

    def losses(
        self,
        anchors: Tensor,
        logits: Tensor,
        deltas: Tensor,
        targets: list[dict[str, Tensor]],
        generator: torch.Generator | None,
    ) -> dict[str, Tensor]:
        """Binary cross-entropy on sampled anchors, smooth-L1 on the positives (docs/paper.md §2)."""
        cfg = self.settings
        sampled_logits, sampled_labels, pos_deltas, pos_targets = [], [], [], []
        for image_logits, image_deltas, target in zip(logits, deltas, targets, strict=True):
            gt_boxes = target["boxes"]
            matches = box_ops.match_anchors(gt_boxes, anchors, high=cfg.fg_iou_thresh, low=cfg.bg_iou_thresh,
                                            allow_low_quality=True)
            labels = torch.where(matches >= 0, 1, torch.where(matches == box_ops.BELOW_LOW, 0, -1))
            pos, neg = box_ops.sample_for_training(
                labels, anchors, target, batch_size=cfg.batch_size_per_image,
                positive_fraction=cfg.positive_fraction, crowd_ioa_thresh=cfg.crowd_ioa_thresh,
                salt=SAMPLING_SALT, generator=generator,
            )
            sampled = torch.cat([pos, neg])
            sampled_logits.append(image_logits[sampled])
            sampled_labels.append((labels[sampled] > 0).to(image_logits.dtype))
            pos_deltas.append(image_deltas[pos])
            pos_targets.append(box_ops.encode_boxes(gt_boxes[matches[pos]], anchors[pos], cfg.box_weights))
        normalizer = loss_normalizer(sum(x.numel() for x in sampled_logits), logits.device)
        loss_objectness = F.binary_cross_entropy_with_logits(
            torch.cat(sampled_logits), torch.cat(sampled_labels), reduction="sum"
        ) / normalizer
        loss_box = F.smooth_l1_loss(
            torch.cat(pos_deltas), torch.cat(pos_targets), beta=cfg.smooth_l1_beta, reduction="sum"
        ) / normalizer
        return {"loss_rpn_objectness": loss_objectness, "loss_rpn_box": loss_box}
