"""Segment proposals on the pyramid (docs/paper.md §5; the paper's §6 and Appendix A).

DeepMask-style mask proposals, run fully convolutionally on the feature pyramid: at every
position of every level P2..P6 a small MLP (a window x window conv to ``hidden_channels`` + ReLU,
then sibling 1x1 convs) predicts an M x M mask and one score. The 5x5 MLP proposes objects of
scale (max(w, h)) 32, 64, ..., 512 px on P2..P6, the 7x7 MLP the half-octave scales in between;
other scales go to the nearest in log space. A position's mask covers a square of 1.25 times its
object scale centred on the position. At test time the best-scoring positions over all levels
and MLPs are kept (no NMS) and their masks are pasted into the image (bilinear, threshold 0.5).

A *slot* is one (MLP, level) pair: its object scale, its stride and the side of the square its
masks cover. Positions are laid out slot by slot, row-major within a slot.

Coordinates: continuous pixel coordinates, pixel (u, v) covers [u, u + 1) x [v, v + 1); the
position (x, y) of a level of stride s sits at the centre of its cell, ((x + ½)·s, (y + ½)·s).

Shape shorthand: N images, T slots, R positions per image (sum over slots of Hk·Wk), G objects,
C hidden channels, M mask side (``mask_size``), K kept or sampled positions, H x W an image.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from fpn.config.read_only import frozen
from fpn.config.schema import SegmentProposalConfig
from fpn.errors import ConfigError
from fpn.model.boxes import sample_balanced, sampling_generator
from fpn.model.loss_normalizer import loss_normalizer
from fpn.model.preprocess import rescale_boxes

# The window of each MLP and which MLPs each ``mlps`` setting builds.
MLP_WINDOWS = {"5x5": 5, "7x7": 7}
ENABLED_MLPS = {"5x5": ["5x5"], "7x7": ["7x7"], "dual": ["5x5", "7x7"]}
# Keeps this head's sampling stream of an image apart from the RPN's (0) and the RoI heads' (1).
SAMPLING_SALT = 2
# Codes of ``match_positions`` besides a matched object's index (>= 0).
NEGATIVE = -1
IGNORED = -2  # a centre in the padding or inside a crowd region: neither positive nor negative


@dataclass(frozen=True)
class Slot:
    """One MLP on one level: what it proposes and where its masks lie."""

    mlp: str  # "5x5" or "7x7"
    level: str  # "p2".."p6"
    stride: int  # px between positions
    object_scale: float  # max(w, h) of the objects it proposes, px
    region_side: float  # side of the square its masks cover, px


def build_slots(cfg: SegmentProposalConfig, strides: dict[str, int]) -> list[Slot]:
    """The slots of a config: every enabled MLP on every level (docs/paper.md §5, Scales)."""
    missing = [level for level in cfg.levels if level not in cfg.object_scales]
    if missing:
        raise ConfigError(f"model.segment_proposals.object_scales has no scale for level(s) {missing}")
    slots = []
    for mlp in ENABLED_MLPS[cfg.mlps]:
        factor = cfg.half_octave_factor if mlp == "7x7" else 1.0
        for level in cfg.levels:
            scale = float(cfg.object_scales[level]) * factor
            slots.append(Slot(mlp, level, strides[level], scale, scale * (1 + cfg.context_padding)))
    return slots


def assign_slots(object_scales: Tensor, slot_scales: Tensor) -> Tensor:
    """(G,) object scales (px) -> (G,) index of the slot whose scale is nearest in log space.

    Objects smaller or larger than every slot go to the smallest or largest; an object exactly
    between two scales goes to the smaller one.
    """
    order = torch.argsort(slot_scales, stable=True)
    log_gap = (object_scales.clamp(min=1e-6).log()[:, None] - slot_scales[order].log()[None, :]).abs()
    return order[log_gap.argmin(dim=1)]  # argmin takes the first of equal gaps: the smaller scale


@dataclass
class Positions:
    """Every position of every slot for one padded input size."""

    centres_xy: Tensor  # (R, 2) cell centres, resized-image pixels
    slot_index: Tensor  # (R,) int64
    stride: Tensor  # (R,) float, px
    region_side: Tensor  # (R,) float, px
    starts: list[int]  # index of each slot's first position
    feature_hw: list[tuple[int, int]]  # (Hk, Wk) of each slot

    def regions(self, index: Tensor) -> Tensor:
        """(K, 4) xyxy squares the masks of positions ``index`` cover, resized-image pixels."""
        half = self.region_side[index, None] / 2
        centre = self.centres_xy[index]
        return torch.cat([centre - half, centre + half], dim=1)


def position_table(slots: list[Slot], feature_hw: list[tuple[int, int]], device: torch.device) -> Positions:
    """The positions of feature maps of sizes ``feature_hw`` (one per slot)."""
    centres, slot_index, strides, sides, starts, start = [], [], [], [], [], 0
    for t, (slot, (height, width)) in enumerate(zip(slots, feature_hw, strict=True)):
        ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=torch.float32),
                                torch.arange(width, device=device, dtype=torch.float32), indexing="ij")
        centres_xy = torch.stack([(xs + 0.5) * slot.stride, (ys + 0.5) * slot.stride], dim=-1)
        centres.append(centres_xy.reshape(-1, 2))
        count = height * width
        slot_index.append(torch.full((count,), t, dtype=torch.int64, device=device))
        strides.append(torch.full((count,), float(slot.stride), device=device))
        sides.append(torch.full((count,), slot.region_side, device=device))
        starts.append(start)
        start += count
    return Positions(torch.cat(centres), torch.cat(slot_index), torch.cat(strides), torch.cat(sides), starts,
                     list(feature_hw))


def match_positions(positions: Positions, gt_boxes: Tensor, slot_scales: Tensor, *, positive_radius: float,
                    image_hw: tuple[int, int], crowd_boxes: Tensor | None = None) -> Tensor:
    """Positive and negative positions of one image (docs/paper.md §5, Per position).

    A position is positive for an object whose scale (max side of ``gt_boxes``) is assigned to
    the position's slot and whose box centre is at most ``positive_radius`` cells away in x and
    in y; of several such objects, the nearest (max-norm) wins. Every other position is negative,
    except those whose centre lies in the padding or inside a crowd region: ignored.

    Args:
        gt_boxes: (G, 4) xyxy, resized-image pixels (the objects' tight boxes).
        slot_scales: (T,) object scale of each slot.
        image_hw: the resized image's size (the padding starts after it).
    Returns:
        (R,) int64: the matched object's index, ``NEGATIVE`` or ``IGNORED``.
    """
    num_positions = positions.slot_index.numel()
    matched = torch.full((num_positions,), NEGATIVE, dtype=torch.int64, device=positions.centres_xy.device)
    if gt_boxes.numel():
        gt_centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
        gt_slots = assign_slots((gt_boxes[:, 2:] - gt_boxes[:, :2]).amax(dim=1), slot_scales)
        ends = [*positions.starts[1:], num_positions]
        for t in gt_slots.unique().tolist():
            objects = torch.nonzero(gt_slots == t).squeeze(1)
            start, end = positions.starts[t], ends[t]
            # max-norm distance of every position of the slot to every object of its scale
            gap = (positions.centres_xy[start:end, None, :] - gt_centres[None, objects, :]).abs().amax(dim=2)
            gap = gap.masked_fill(gap > positive_radius * positions.stride[start:end, None], float("inf"))
            nearest, which = gap.min(dim=1)
            hit = torch.isfinite(nearest)
            matched[start:end][hit] = objects[which[hit]]
    height, width = image_hw
    centre_x, centre_y = positions.centres_xy[:, 0], positions.centres_xy[:, 1]
    outside = (centre_x >= width) | (centre_y >= height)
    matched[outside & (matched == NEGATIVE)] = IGNORED
    if crowd_boxes is not None and crowd_boxes.numel():
        crowd = crowd_boxes.to(positions.centres_xy)
        in_x = (centre_x[:, None] >= crowd[None, :, 0]) & (centre_x[:, None] < crowd[None, :, 2])
        in_y = (centre_y[:, None] >= crowd[None, :, 1]) & (centre_y[:, None] < crowd[None, :, 3])
        in_crowd = (in_x & in_y).any(dim=1)
        matched[in_crowd & (matched == NEGATIVE)] = IGNORED
    return matched


def crop_mask_targets(masks: Tensor, object_index: Tensor, regions_xyxy: Tensor, mask_size: int) -> Tensor:
    """The mask targets of positive positions: each object's mask over its position's square.

    Every target cell holds the fraction of its area that the object covers (RoIAlign with
    about one sample per mask pixel, ``sampling_ratio=0``), so the edge of an object survives
    the M x M grid to well within one pixel (``paste_masks`` reads it back).

    Args:
        masks: (G, H, W) uint8 or bool instance masks.
        object_index: (K,) the object of each positive position.
        regions_xyxy: (K, 4) the squares, in the masks' pixels.
    Returns:
        (K, M, M) float in [0, 1].
    """
    used, inverse = torch.unique(object_index, return_inverse=True)
    source = masks[used][:, None].to(torch.float32)  # (U, 1, H, W): only the matched objects
    rois = torch.cat([inverse[:, None].to(torch.float32), regions_xyxy.to(torch.float32)], dim=1)
    return roi_align(source, rois, (mask_size, mask_size), spatial_scale=1.0, sampling_ratio=0,
                     aligned=True)[:, 0]


def _bilinear_weights(start: float, end: float, first: int, stop: int, mask_size: int,
                      device: torch.device) -> Tensor:
    """(stop - first, M): how much mask cell m weighs in image pixel i, for i in [first, stop).

    Pixel i's centre i + ½ maps to mask coordinate (i + ½ - start) / (end - start) · M - ½,
    clamped to the mask's first and last cell centres (as ``grid_sample`` with border padding);
    pixels whose centre is outside [start, end) get no weight.
    """
    centres = torch.arange(first, stop, device=device, dtype=torch.float32) + 0.5
    coordinate = ((centres - start) / (end - start) * mask_size - 0.5).clamp(0, mask_size - 1)
    inside = (centres >= start) & (centres < end)
    cells = torch.arange(mask_size, device=device, dtype=torch.float32)
    weights = (1 - (coordinate[:, None] - cells).abs()).clamp(min=0)
    return weights * inside[:, None]


def mask_windows(mask_probs: Tensor, regions_xyxy: Tensor, image_hw: tuple[int, int], *, threshold: float
                 ) -> Iterator[tuple[int, slice, slice, Tensor]]:
    """Each M x M mask pasted into the image over its square (docs/paper.md §5, Inference).

    A mask is upsampled bilinearly onto the pixels whose centres lie in its square and
    thresholded; every other pixel is 0. Bilinear interpolation is separable, so the pasted
    window is rows (h, M) @ mask (M, M) @ columns (M, w): only the square's own pixels are
    computed, never the whole image.

    Args:
        mask_probs: (K, M, M) in [0, 1].
        regions_xyxy: (K, 4) squares in the image's pixels (may extend past it).
        image_hw: (H, W) of the image.
    Yields:
        (k, rows, columns, (h, w) bool window) for every mask whose square meets the image.
    """
    height, width = image_hw
    mask_size = mask_probs.shape[-1]
    for k, (x1, y1, x2, y2) in enumerate(regions_xyxy.tolist()):
        top, bottom = max(0, math.floor(y1)), min(height, math.ceil(y2))
        left, right = max(0, math.floor(x1)), min(width, math.ceil(x2))
        if top >= bottom or left >= right:
            continue
        rows = _bilinear_weights(y1, y2, top, bottom, mask_size, mask_probs.device)  # (h, M)
        columns = _bilinear_weights(x1, x2, left, right, mask_size, mask_probs.device)  # (w, M)
        window = rows @ mask_probs[k].to(torch.float32) @ columns.T  # (h, w)
        yield k, slice(top, bottom), slice(left, right), window >= threshold


def paste_masks(mask_probs: Tensor, regions_xyxy: Tensor, image_hw: tuple[int, int], *, threshold: float
                ) -> Tensor:
    """M x M mask probabilities -> (K, H, W) bool masks over the image (``mask_windows``)."""
    masks = torch.zeros((mask_probs.shape[0], *image_hw), dtype=torch.bool, device=mask_probs.device)
    for k, rows, columns, window in mask_windows(mask_probs, regions_xyxy, image_hw, threshold=threshold):
        masks[k, rows, columns] = window
    return masks


def mask_boxes(masks: Tensor) -> Tensor:
    """(K, H, W) bool -> (K, 4) xyxy tight boxes of the masks (pixel edges); zeros for empty ones."""
    count, height, width = masks.shape
    boxes = torch.zeros((count, 4), dtype=torch.float32, device=masks.device)
    for axis, (low, high), length in ((2, (1, 3), height), (1, (0, 2), width)):
        present = masks.any(dim=axis)  # (K, length)
        index = torch.arange(length, device=masks.device)
        boxes[:, low] = torch.where(present, index, length).amin(dim=1).to(torch.float32)
        boxes[:, high] = torch.where(present, index + 1, 0).amax(dim=1).to(torch.float32)
    return boxes * masks.flatten(1).any(dim=1, keepdim=True)


class MaskMLP(nn.Module):
    """One mask MLP, shared by every level: a window x window conv + ReLU, then 1x1 convs to
    M² mask logits and 1 score logit per position (docs/paper.md §5, MLP)."""

    def __init__(self, in_channels: int, *, window: int, hidden_channels: int, mask_size: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, hidden_channels, window, padding=window // 2)
        self.mask_logits = nn.Conv2d(hidden_channels, mask_size * mask_size, 1)
        self.score_logits = nn.Conv2d(hidden_channels, 1, 1)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        for conv in (self.mask_logits, self.score_logits):
            nn.init.normal_(conv.weight, std=0.01)
        for conv in (self.conv, self.mask_logits, self.score_logits):
            nn.init.zeros_(conv.bias)

    def hidden(self, features: Tensor) -> Tensor:
        """(N, d, Hk, Wk) -> (N, C, Hk, Wk)."""
        return F.relu(self.conv(features))

    def masks_from_hidden(self, hidden_vectors: Tensor) -> Tensor:
        """(K, C) hidden vectors of chosen positions -> (K, M²) mask logits (the 1x1 conv there only)."""
        return F.linear(hidden_vectors, self.mask_logits.weight.flatten(1), self.mask_logits.bias)


class SegmentProposalHead(nn.Module):
    """The mask MLPs on every level, their training targets and losses, and test-time selection.

    Args:
        settings: ``model.segment_proposals`` (kept read-only).
        in_channels: d, the pyramid's channels (the same on every level read).
        strides: stride of each pyramid level.
    """

    def __init__(self, settings: SegmentProposalConfig, in_channels: int, strides: dict[str, int]):
        super().__init__()
        self.settings = cfg = frozen(settings)
        self.slots = build_slots(cfg, strides)
        self.mlps = nn.ModuleDict({
            name: MaskMLP(in_channels, window=MLP_WINDOWS[name], hidden_channels=cfg.hidden_channels,
                          mask_size=cfg.mask_size)
            for name in ENABLED_MLPS[cfg.mlps]})
        self.register_buffer("slot_scales", torch.tensor([s.object_scale for s in self.slots]),
                             persistent=False)

    def forward(self, features: dict[str, Tensor], image_sizes: list[tuple[int, int]],
                original_sizes: list[tuple[int, int]], targets: list[dict[str, Tensor]] | None = None, *,
                paste: bool = True) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses (training) or segment proposals per image (eval).

        Args:
            features: the pyramid; the levels in ``settings.levels`` are read.
            image_sizes: (h, w) of each resized image inside the padding.
            original_sizes: (h, w) of each input image.
            targets: per image ``boxes`` (G, 4) in resized pixels, ``masks`` (G, H, W) in the
                original image's pixels (the masks are never resized: the regions are mapped
                back instead), optionally ``crowd_boxes``. Training only.
            paste: eval mode: also paste the masks into the image (``masks``, ``boxes``).
        Returns:
            training: {"loss_segment_score", "loss_segment_mask"} (the mask term weighted by
            ``mask_loss_weight``).
            eval: per image, best first, in original pixels: ``scores`` (K,) probabilities,
            ``mask_probs`` (K, M, M), ``mask_regions`` (K, 4) the squares the masks cover, and
            with ``paste``: ``masks`` (K, H, W) bool and ``boxes`` (K, 4) the masks' boxes.
        """
        # T x (N, C, Hk, Wk): one forward pass of each MLP's hidden conv per level
        hidden = [self.mlps[slot.mlp].hidden(features[slot.level]) for slot in self.slots]
        score_logits = torch.cat([self.mlps[slot.mlp].score_logits(h).flatten(1)
                                  for slot, h in zip(self.slots, hidden, strict=True)], dim=1)  # (N, R)
        positions = position_table(self.slots, [tuple(h.shape[-2:]) for h in hidden], score_logits.device)
        if self.training:
            if targets is None:
                raise ValueError("the segment-proposal head needs targets in training mode")
            return self.losses(hidden, score_logits, positions, image_sizes, original_sizes, targets)
        return self.select(hidden, score_logits, positions, image_sizes, original_sizes, paste=paste)

    def mask_logits_at(self, hidden: list[Tensor], image: int, index: Tensor, positions: Positions) -> Tensor:
        """(K,) position indices of image ``image`` -> (K, M²) mask logits, computed there only."""
        pieces, order = [], []
        for t, slot in enumerate(self.slots):
            start = positions.starts[t]
            height, width = positions.feature_hw[t]
            chosen = torch.nonzero((index >= start) & (index < start + height * width)).squeeze(1)
            if chosen.numel() == 0:
                continue
            local = index[chosen] - start
            vectors = hidden[t][image, :, local // width, local % width].T  # (k, C)
            pieces.append(self.mlps[slot.mlp].masks_from_hidden(vectors))
            order.append(chosen)
        if not pieces:
            return hidden[0].new_zeros((0, self.settings.mask_size**2))
        return torch.cat(pieces)[torch.argsort(torch.cat(order))]

    def losses(self, hidden: list[Tensor], score_logits: Tensor, positions: Positions,
               image_sizes: list[tuple[int, int]], original_sizes: list[tuple[int, int]],
               targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Score loss on 1:3 sampled positions, mask loss on the sampled positives (docs/paper.md §5)."""
        cfg = self.settings
        sampled_logits, sampled_labels, mask_logits, mask_targets = [], [], [], []
        for i, target in enumerate(targets):
            if "masks" not in target:
                raise ValueError("model.proposals=segments trains on instance masks: targets need 'masks' "
                                 "(G, H, W) (COCO segmentations; VOC has none)")
            if len(target["masks"]) != len(target["boxes"]):
                raise ValueError(f"{len(target['masks'])} masks for {len(target['boxes'])} boxes in a target")
            matched = match_positions(positions, target["boxes"], self.slot_scales,
                                      positive_radius=cfg.positive_radius, image_hw=image_sizes[i],
                                      crowd_boxes=target.get("crowd_boxes"))
            labels = torch.where(matched >= 0, 1, torch.where(matched == NEGATIVE, 0, -1))
            positive, negative = sample_balanced(labels, cfg.samples_per_image, cfg.positive_fraction,
                                                 sampling_generator(target, SAMPLING_SALT, None))
            sampled = torch.cat([positive, negative])
            sampled_logits.append(score_logits[i, sampled])
            sampled_labels.append((labels[sampled] > 0).to(score_logits.dtype))
            if positive.numel():
                mask_logits.append(self.mask_logits_at(hidden, i, positive, positions))
                regions = rescale_boxes(positions.regions(positive), image_sizes[i], original_sizes[i])
                mask_targets.append(crop_mask_targets(target["masks"], matched[positive], regions,
                                                      cfg.mask_size).flatten(1))
        device = score_logits.device
        loss_score = F.binary_cross_entropy_with_logits(
            torch.cat(sampled_logits), torch.cat(sampled_labels), reduction="sum"
        ) / loss_normalizer(sum(x.numel() for x in sampled_logits), device)
        num_positive = sum(len(x) for x in mask_logits)
        positive_normalizer = loss_normalizer(num_positive, device) * cfg.mask_size**2  # every rank calls it
        # Every mask predictor takes part in the graph, also when a batch has no positive for it.
        loss_mask = sum(mlp.mask_logits.weight.sum() * 0.0 + mlp.mask_logits.bias.sum() * 0.0
                        for mlp in self.mlps.values())
        if num_positive:
            loss_mask = loss_mask + F.binary_cross_entropy_with_logits(
                torch.cat(mask_logits), torch.cat(mask_targets), reduction="sum") / positive_normalizer
        return {"loss_segment_score": loss_score, "loss_segment_mask": cfg.mask_loss_weight * loss_mask}

    def select(self, hidden: list[Tensor], score_logits: Tensor, positions: Positions,
               image_sizes: list[tuple[int, int]], original_sizes: list[tuple[int, int]], *, paste: bool
               ) -> list[dict[str, Tensor]]:
        """The ``detections_per_image`` best positions of each image, no NMS (docs/paper.md §5, Inference).

        Positions whose centre lies in the padding are never chosen.
        """
        cfg = self.settings
        results = []
        for i, (resized_hw, original_hw) in enumerate(zip(image_sizes, original_sizes, strict=True)):
            centres = positions.centres_xy
            inside = (centres[:, 0] < resized_hw[1]) & (centres[:, 1] < resized_hw[0])
            logits = score_logits[i].masked_fill(~inside, float("-inf"))
            count = min(cfg.detections_per_image, int(inside.sum()))
            top_logits, top = logits.topk(count)
            mask_probs = torch.sigmoid(self.mask_logits_at(hidden, i, top, positions)).view(
                count, cfg.mask_size, cfg.mask_size)
            regions = rescale_boxes(positions.regions(top), resized_hw, original_hw)
            out = {"scores": torch.sigmoid(top_logits), "mask_probs": mask_probs, "mask_regions": regions}
            if paste:
                out["masks"] = paste_masks(mask_probs, regions, original_hw, threshold=cfg.mask_threshold)
                out["boxes"] = mask_boxes(out["masks"])
            results.append(out)
        return results
