"""Box arithmetic shared by the RPN and the RoI heads (docs/paper.md §2, §3): pure tensor functions.

Boxes are ``(x1, y1, x2, y2)`` float tensors in input-image pixels. Widths are ``x2 - x1``
(no +1), as in torchvision and detectron2.

Shape shorthand: G ground-truth boxes, A anchors (or proposals), K object classes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.ops import batched_nms as _torchvision_batched_nms
from torchvision.ops import nms

__all__ = ["encode_boxes", "decode_boxes", "batched_nms", "nonempty_mask",
           "intersection_over_area", "match_anchors", "sample_balanced", "sample_for_training"]

# exp(dw) is clamped so that a box can grow at most 1000/16 times (docs/interop.md §4).
DELTA_CLAMP = math.log(1000.0 / 16)

# Match codes in the output of ``match_anchors``: >= 0 is the matched ground-truth index.
BELOW_LOW = -1  # background
BETWEEN = -2  # ignored: neither foreground nor background


def encode_boxes(target_boxes: Tensor, reference_boxes: Tensor, weights: list[float]) -> Tensor:
    """Deltas ``(dx, dy, dw, dh)`` that turn ``reference_boxes`` into ``target_boxes``.

    Args:
        target_boxes: (A, 4) boxes to reach.
        reference_boxes: (A, 4) anchors or proposals.
        weights: (wx, wy, ww, wh), (1, 1, 1, 1) for the RPN, (10, 10, 5, 5) for Fast R-CNN.
    Returns:
        (A, 4) deltas.
    """
    wx, wy, ww, wh = weights
    ref_w = reference_boxes[:, 2] - reference_boxes[:, 0]
    ref_h = reference_boxes[:, 3] - reference_boxes[:, 1]
    ref_cx = reference_boxes[:, 0] + 0.5 * ref_w
    ref_cy = reference_boxes[:, 1] + 0.5 * ref_h
    tgt_w = target_boxes[:, 2] - target_boxes[:, 0]
    tgt_h = target_boxes[:, 3] - target_boxes[:, 1]
    tgt_cx = target_boxes[:, 0] + 0.5 * tgt_w
    tgt_cy = target_boxes[:, 1] + 0.5 * tgt_h
    dx = wx * (tgt_cx - ref_cx) / ref_w
    dy = wy * (tgt_cy - ref_cy) / ref_h
    dw = ww * torch.log(tgt_w / ref_w)
    dh = wh * torch.log(tgt_h / ref_h)
    return torch.stack((dx, dy, dw, dh), dim=1)


def decode_boxes(deltas: Tensor, reference_boxes: Tensor, weights: list[float], *,
                 clamp_shrink: bool = False) -> Tensor:
    """Apply ``deltas`` to ``reference_boxes``; the inverse of ``encode_boxes``.

    Args:
        deltas: (A, 4 * C) deltas, C >= 1 boxes per reference (class-specific regression).
        reference_boxes: (A, 4).
        clamp_shrink: also clamp dw, dh from below at -DELTA_CLAMP, as mmdetection does
            (docs/interop.md §4); by default only growth is clamped, as in torchvision.
    Returns:
        (A, C, 4) decoded boxes.
    """
    wx, wy, ww, wh = weights
    deltas = deltas.reshape(deltas.shape[0], -1, 4)  # (A, 4C) -> (A, C, 4)
    reference_boxes = reference_boxes.to(deltas.dtype)
    widths = (reference_boxes[:, 2] - reference_boxes[:, 0])[:, None]
    heights = (reference_boxes[:, 3] - reference_boxes[:, 1])[:, None]
    ctr_x = reference_boxes[:, 0, None] + 0.5 * widths
    ctr_y = reference_boxes[:, 1, None] + 0.5 * heights
    dx = deltas[..., 0] / wx
    dy = deltas[..., 1] / wy
    low = -DELTA_CLAMP if clamp_shrink else None
    dw = torch.clamp(deltas[..., 2] / ww, min=low, max=DELTA_CLAMP)
    dh = torch.clamp(deltas[..., 3] / wh, min=low, max=DELTA_CLAMP)
    pred_ctr_x = dx * widths + ctr_x
    pred_ctr_y = dy * heights + ctr_y
    half_w = 0.5 * torch.exp(dw) * widths
    half_h = 0.5 * torch.exp(dh) * heights
    return torch.stack(
        (pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h), dim=2
    )


def batched_nms(boxes_xyxy: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """Indices kept by NMS run within each group, by decreasing score (torchvision's batched_nms).

    Under ``torch.export`` (``fpn export``) it always takes the coordinate-offset form, which
    torchvision itself uses for large inputs: boxes of different groups are shifted apart and one
    NMS runs; torchvision's choice between its two forms depends on the box count, which a
    traced graph does not know.
    """
    if torch.compiler.is_exporting():
        offsets = groups.to(boxes_xyxy.dtype) * (boxes_xyxy.max() + 1)
        return nms(boxes_xyxy + offsets[:, None], scores, iou_threshold)
    return _torchvision_batched_nms(boxes_xyxy, scores, groups, iou_threshold)


def box_iou(boxes_xyxy: Tensor, others_xyxy: Tensor) -> Tensor:
    """(G, A) IoU of every pair: torchvision's ``box_iou``, the same operations in the same order.

    torchvision works on (G, A, 2) corner pairs, whose innermost size of 2 makes every element-wise
    kernel a strided one; here each coordinate is a contiguous row of ``others_xyxy``, so each
    operation runs over (G, A) contiguous values. The result is bit-identical (tested); matching
    a demo batch's 4 x 16k anchors to 8 boxes each took about half the time, measured alone.
    """
    area = (boxes_xyxy[:, 2] - boxes_xyxy[:, 0]) * (boxes_xyxy[:, 3] - boxes_xyxy[:, 1])
    others = others_xyxy.t().contiguous()  # (4, A)
    other_area = (others[2] - others[0]) * (others[3] - others[1])
    x1, y1, x2, y2 = (boxes_xyxy[:, i, None] for i in range(4))  # (G, 1) each
    width = torch.minimum(x2, others[2]) - torch.maximum(x1, others[0])  # (G, A)
    height = torch.minimum(y2, others[3]) - torch.maximum(y1, others[1])
    inter = width.clamp_(min=0) * height.clamp_(min=0)
    return inter / (area[:, None] + other_area - inter)


def nonempty_mask(boxes_xyxy: Tensor, min_size: float) -> Tensor:
    """(A,) bool: boxes whose width and height are both at least ``min_size``."""
    widths = boxes_xyxy[:, 2] - boxes_xyxy[:, 0]
    heights = boxes_xyxy[:, 3] - boxes_xyxy[:, 1]
    return (widths >= min_size) & (heights >= min_size)


def intersection_over_area(boxes_xyxy: Tensor, regions_xyxy: Tensor) -> Tensor:
    """(A, R): the fraction of each box's area that lies inside each region (crowd handling)."""
    top_left = torch.max(boxes_xyxy[:, None, :2], regions_xyxy[None, :, :2])
    bottom_right = torch.min(boxes_xyxy[:, None, 2:], regions_xyxy[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    area = (boxes_xyxy[:, 2:] - boxes_xyxy[:, :2]).clamp(min=0).prod(dim=1)
    return inter / area.clamp(min=1e-6)[:, None]


def match_anchors(
    gt_boxes: Tensor,
    anchors: Tensor,
    *,
    high: float,
    low: float,
    allow_low_quality: bool,
    chunk_size: int = 1 << 22,
) -> Tensor:
    """Assign each anchor (or proposal) to a ground-truth box by IoU (docs/paper.md §2, §3).

    An anchor is foreground when its best IoU is >= ``high``, background when < ``low``,
    ignored in between. With ``allow_low_quality`` every ground-truth box also claims the
    anchors that overlap it best (all of them on ties), even below ``high``: the highest-IoU
    rule of Faster R-CNN's RPN.

    The IoU matrix is built ``chunk_size`` elements at a time, so an image with thousands of
    boxes does not need a (G, A) matrix in memory at once.

    Returns:
        (A,) int64: the matched box index, or ``BELOW_LOW`` / ``BETWEEN``.
    """
    num_anchors = anchors.shape[0]
    if gt_boxes.numel() == 0:
        return torch.full((num_anchors,), BELOW_LOW, dtype=torch.int64, device=anchors.device)
    best_iou = anchors.new_empty(num_anchors)
    best_gt = torch.empty(num_anchors, dtype=torch.int64, device=anchors.device)
    best_iou_per_gt = anchors.new_zeros(gt_boxes.shape[0])
    step = max(1, chunk_size // gt_boxes.shape[0])
    chunks = range(0, num_anchors, step)
    for start in chunks:
        iou = box_iou(gt_boxes, anchors[start : start + step])  # (G, chunk)
        best_iou[start : start + step], best_gt[start : start + step] = iou.max(dim=0)
        best_iou_per_gt = torch.maximum(best_iou_per_gt, iou.max(dim=1).values)

    matches = best_gt.clone()
    matches[best_iou < low] = BELOW_LOW
    matches[(best_iou >= low) & (best_iou < high)] = BETWEEN
    if allow_low_quality:
        for start in chunks:
            if len(chunks) > 1:  # one chunk: the matrix of the first pass is still at hand
                iou = box_iou(gt_boxes, anchors[start : start + step])  # (G, chunk)
            # A box that overlaps no anchor at all claims none (rather than every anchor).
            is_best = ((iou == best_iou_per_gt[:, None]) & (iou > 0)).any(dim=0)  # (chunk,)
            idx = torch.nonzero(is_best).squeeze(1) + start
            matches[idx] = best_gt[idx]
    return matches


def sampling_generator(target: dict, salt: int, default: torch.Generator | None) -> torch.Generator | None:
    """The random stream for one image's sampling.

    A target carrying ``sample_seed`` gets its own stream, so the sampled anchors and RoIs of an
    image do not depend on which other images share its batch or its process (distributed
    training gives the same samples as one process).
    """
    seed = target.get("sample_seed")
    if seed is None:
        return default
    return torch.Generator().manual_seed(int(seed) * 2 + salt)


def sample_balanced(
    labels: Tensor, batch_size: int, positive_fraction: float, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Draw at most ``batch_size`` examples, at most ``positive_fraction`` of them positive.

    Args:
        labels: (A,) int64, > 0 foreground, 0 background, < 0 ignored.
    Returns:
        indices of the sampled positives and of the sampled negatives.
    """
    positive = torch.nonzero(labels > 0).squeeze(1)
    negative = torch.nonzero(labels == 0).squeeze(1)
    num_pos = min(positive.numel(), int(batch_size * positive_fraction))
    num_neg = min(negative.numel(), batch_size - num_pos)
    device = labels.device
    perm_pos = torch.randperm(positive.numel(), generator=generator, device="cpu")[:num_pos]
    perm_neg = torch.randperm(negative.numel(), generator=generator, device="cpu")[:num_neg]
    return positive[perm_pos.to(device)], negative[perm_neg.to(device)]


def sample_for_training(
    labels: Tensor,
    boxes_xyxy: Tensor,
    target: dict,
    *,
    batch_size: int,
    positive_fraction: float,
    crowd_ioa_thresh: float,
    salt: int,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """The training sample of one image, for the RPN's anchors and the RoI heads' proposals alike.

    Background boxes lying mostly inside a crowd region (``target["crowd_boxes"]``, more than
    ``crowd_ioa_thresh`` of their area) are ignored rather than used as negatives; then at most
    ``batch_size`` boxes are drawn, at most ``positive_fraction`` of them positive, from the
    image's own random stream (``salt`` keeps the RPN's and the RoI heads' streams apart).

    Args:
        labels: (A,) int64, > 0 foreground, 0 background, < 0 ignored; updated in place for crowds.
        boxes_xyxy: (A, 4) the anchors or proposals the labels belong to.
    Returns:
        indices of the sampled positives and of the sampled negatives.
    """
    crowd = target.get("crowd_boxes")
    if crowd is not None and crowd.numel():
        in_crowd = intersection_over_area(boxes_xyxy, crowd.to(boxes_xyxy.dtype)).amax(dim=1)
        labels[(in_crowd > crowd_ioa_thresh) & (labels == 0)] = -1
    return sample_balanced(labels, batch_size, positive_fraction, sampling_generator(target, salt, generator))
