"""Comparing two detectors' outputs (per image ``boxes`` xyxy, ``scores``, ``labels``).

Used wherever two implementations of the same function meet: torchvision against fpn, ONNX
Runtime against PyTorch, int8 against fp32.
"""

from __future__ import annotations


def output_difference(reference: list[dict], ours: list[dict], match_px: float = 1.0
                      ) -> tuple[float, float, int]:
    """(largest box difference in px, largest score difference, unmatched count) over images.

    A reference detection is matched to our nearest one of the same label within ``match_px``.
    Unmatched ones are reported by count: with near-equal scores, float re-association can swap
    which detection makes the top-100 cut, and such a swap says nothing about box accuracy.
    """
    box_diff = score_diff = 0.0
    unmatched = 0
    for ref, got in zip(reference, ours, strict=True):
        for box, score, label in zip(ref["boxes"], ref["scores"], ref["labels"], strict=True):
            dist = (got["boxes"] - box).abs().amax(dim=1)
            dist[got["labels"] != label] = float("inf")
            best = int(dist.argmin()) if len(dist) else -1
            if best < 0 or float(dist[best]) > match_px:
                unmatched += 1
                continue
            box_diff = max(box_diff, float(dist[best]))
            score_diff = max(score_diff, float((got["scores"][best] - score).abs()))
    return box_diff, score_diff, unmatched


def confident_matches(reference: list[dict], other: list[dict], *, min_score: float = 0.5,
                      min_iou: float = 0.9) -> tuple[int, int]:
    """(matched, total): of ``reference``'s detections scored above ``min_score``, how many have a
    detection in ``other`` (at any score) of the same label overlapping it by IoU >= ``min_iou``.

    The accuracy gate of a lower precision against fp32 (``fpn.model.precision``): it asks whether
    the detections a user would keep survive, not whether every low-scored box moved by a pixel.
    """
    from torchvision.ops import box_iou

    matched = total = 0
    for ref, got in zip(reference, other, strict=True):
        keep = ref["scores"] > min_score
        boxes, labels = ref["boxes"][keep].float(), ref["labels"][keep]
        total += len(boxes)
        if not len(boxes) or not len(got["boxes"]):
            continue
        iou = box_iou(boxes, got["boxes"].float())  # (confident reference, other)
        iou[labels[:, None] != got["labels"][None, :]] = 0.0
        matched += int((iou.amax(dim=1) >= min_iou).sum())
    return matched, total
