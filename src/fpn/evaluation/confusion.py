"""Which class a detector took each object for: a confusion matrix with a background row and column,
and the images it got most wrong.

On every image, the detections scored at least ``score_thresh`` are matched to the ground truth
whatever their class, best score first, each to the still-unmatched object it overlaps most with an
IoU of at least ``iou_thresh`` (COCO's order of matching, without its per-class split, so that a
square taken for a circle shows up as that and not as one miss and one false positive):

- a matched pair adds one to ``counts[object's class, detection's class]`` (the diagonal when right);
- an unmatched detection adds one to ``counts[background, detection's class]`` (a false positive
  on nothing), unless it lies on a crowd region (intersection over its own area at least
  ``iou_thresh``, as COCO ignores it), where it is not counted;
- an object nothing matched adds one to ``counts[object's class, background]`` (a miss).

Rows are the ground truth, columns the detections; classes are labels 1..K at indices 0..K-1,
the background is index K. Per image, ``false_positives`` counts the detections that did not find
an object of their own class and ``misses`` the objects no detection of their class found (a wrong
class is one of each).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class ConfusionMatrix:
    """``counts[i, j]``: objects of class i (K: background) detected as class j (K: not detected)."""

    class_names: list[str]
    counts: np.ndarray  # (K + 1, K + 1) int64
    score_thresh: float
    iou_thresh: float

    @property
    def labels(self) -> list[str]:
        """The names of the rows and columns, the background last."""
        return [*self.class_names, "background"]

    def to_json(self) -> dict[str, Any]:
        return {"rows": "ground truth", "columns": "detections", "labels": self.labels,
                "score_thresh": self.score_thresh, "iou_thresh": self.iou_thresh,
                "counts": self.counts.tolist()}


@dataclass
class ImageErrors:
    """One image's detections that found no object of their class, and objects left unfound."""

    image_id: int
    false_positives: int
    misses: int

    @property
    def total(self) -> int:
        return self.false_positives + self.misses


def iou_matrix(a_xyxy: np.ndarray, b_xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(A, B) IoU of every pair, and (A, B) intersection over the area of each ``a`` box."""
    lt = np.maximum(a_xyxy[:, None, :2], b_xyxy[None, :, :2])
    rb = np.minimum(a_xyxy[:, None, 2:], b_xyxy[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = (a_xyxy[:, 2] - a_xyxy[:, 0]) * (a_xyxy[:, 3] - a_xyxy[:, 1])
    area_b = (b_xyxy[:, 2] - b_xyxy[:, 0]) * (b_xyxy[:, 3] - b_xyxy[:, 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.nan_to_num(inter / (area_a[:, None] + area_b[None, :] - inter))
        over_a = np.nan_to_num(inter / area_a[:, None])
    return iou, over_a


def match_image(gt_boxes_xyxy: np.ndarray, gt_labels: np.ndarray, det_boxes_xyxy: np.ndarray,
                det_scores: np.ndarray, det_labels: np.ndarray, num_classes: int, *, score_thresh: float,
                iou_thresh: float, crowd_boxes_xyxy: np.ndarray | None = None) -> np.ndarray:
    """One image's (K + 1, K + 1) counts (module docstring); labels in 1..K."""
    counts = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    background = num_classes
    kept = np.flatnonzero(det_scores >= score_thresh)
    order = kept[np.argsort(-det_scores[kept], kind="stable")]
    iou, _ = iou_matrix(det_boxes_xyxy[order].reshape(-1, 4), gt_boxes_xyxy.reshape(-1, 4))
    crowd = crowd_boxes_xyxy if crowd_boxes_xyxy is not None else np.zeros((0, 4))
    _, on_crowd = iou_matrix(det_boxes_xyxy[order].reshape(-1, 4), crowd.reshape(-1, 4))
    taken = np.zeros(len(gt_labels), dtype=bool)
    for row, d in enumerate(order):
        candidates = np.where(taken, -1.0, iou[row])
        g = int(np.argmax(candidates)) if candidates.size else -1
        if g >= 0 and candidates[g] >= iou_thresh:
            taken[g] = True
            counts[gt_labels[g] - 1, det_labels[d] - 1] += 1
        elif not (on_crowd.shape[1] and on_crowd[row].max() >= iou_thresh):
            counts[background, det_labels[d] - 1] += 1
    for g in np.flatnonzero(~taken):
        counts[gt_labels[g] - 1, background] += 1
    return counts


def image_errors(image_id: int, counts: np.ndarray) -> ImageErrors:
    """The false positives and misses of one image's counts."""
    right = int(np.trace(counts[:-1, :-1]))
    return ImageErrors(image_id, false_positives=int(counts[:, :-1].sum()) - right,
                       misses=int(counts[:-1, :].sum()) - right)


def confusion_of(images: list[dict[str, Any]], class_names: list[str], *, score_thresh: float,
                 iou_thresh: float = 0.5) -> tuple[ConfusionMatrix, list[ImageErrors]]:
    """The confusion matrix over ``images`` and the errors of each.

    Args:
        images: per image ``image_id``, ``gt_boxes`` (G, 4) xyxy, ``gt_labels`` (G,) 1..K,
            ``crowd_boxes`` (C, 4), ``boxes`` (D, 4) xyxy, ``scores`` (D,), ``labels`` (D,) 1..K.
    """
    num_classes = len(class_names)
    total = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    errors = []
    for image in images:
        counts = match_image(np.asarray(image["gt_boxes"], dtype=np.float64).reshape(-1, 4),
                             np.asarray(image["gt_labels"], dtype=np.int64).reshape(-1),
                             np.asarray(image["boxes"], dtype=np.float64).reshape(-1, 4),
                             np.asarray(image["scores"], dtype=np.float64).reshape(-1),
                             np.asarray(image["labels"], dtype=np.int64).reshape(-1), num_classes,
                             score_thresh=score_thresh, iou_thresh=iou_thresh,
                             crowd_boxes_xyxy=np.asarray(image.get("crowd_boxes", np.zeros((0, 4))),
                                                         dtype=np.float64).reshape(-1, 4))
        total += counts
        errors.append(image_errors(int(image["image_id"]), counts))
    return ConfusionMatrix(list(class_names), total, score_thresh, iou_thresh), errors
