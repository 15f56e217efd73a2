"""Pascal VOC's own detection metric: per-class AP at IoU 0.5, with difficult objects ignored.

This follows the official devkit (``VOCevaldet.m`` and ``VOCap`` in VOCdevkit 2012), in numpy:

- Detections of a class are ranked by score, highest first; equal scores keep their input order
  (a stable sort, like MATLAB's ``sort``; the images' order, then each image's own order).
- Each detection is compared with every ground-truth object of its class in its image and goes to
  the one with the highest IoU (the first such object on a tie), whether or not that object is
  already taken. If that IoU is >= 0.5: a difficult object makes the detection neither TP nor FP;
  an object not yet detected makes it a TP (and takes the object); an object already taken makes
  it an FP (a duplicate). Below 0.5, or with no object of its class in the image: an FP. (So, as in
  the devkit and unlike COCO, a duplicate is not passed on to a second, less-overlapping object.)
- Only non-difficult objects count as positives: recall = TP / #non-difficult.
- ``voc07``: the VOC2007 11-point interpolated AP, the mean over t in {0, 0.1, ..., 1} of the
  highest precision at recall >= t (0 where recall never reaches t).
- ``voc12``: the area under the monotone (right-to-left running maximum) precision envelope of the
  precision/recall curve, the devkit's ``VOCap``, used from VOC2010 on (named after VOC2012, the
  last and most cited edition).

Box convention. The devkit's boxes are 1-based inclusive pixel indices and it measures a width as
``x2 - x1 + 1``. fpn's VOC loader (``fpn.data.voc``) turns them into 0-based pixel edges by
subtracting 1 from xmin and ymin only, so on fpn's boxes ``x2 - x1`` is exactly the devkit's
``x2 - x1 + 1``, and the intersection's width likewise: the IoU of two boxes in fpn's convention,
computed without ``+ 1``, equals the devkit's IoU of the same boxes in its own convention (this is
how detectron2 evaluates too: it adds 1 to xmin and ymin of its detections before the devkit's
formula). Model outputs are in the same edge convention as the loader's boxes, so ``voc_map``
uses ``x2 - x1`` by default. ``inclusive=True`` is for boxes in the devkit's own convention
(numbers read straight from the XML and a devkit results file): widths become ``x2 - x1 + 1``.

The 11-point thresholds. The devkit loops over MATLAB's ``0:0.1:1``, whose elements are the
doubles nearest to k/10 except the fourth, 3 * 0.1 = 0.30000000000000004 (MATLAB builds the first
half of a range as a + k*d, the second as b - (n-k)*d). So a recall of exactly 3/10 does not reach
t = 0.3 in the devkit. This module compares in integers, ``10 * TP >= k * #positives``, and strictly
``>`` at k = 3, which reproduces the devkit's comparisons exactly on any machine (a recall
TP / #positives cannot fall between 0.3 and 0.30000000000000004 for any realistic count). The
Python ports' ``np.arange(0, 1.1, 0.1)`` also has 0.6000000000000001 and 0.7000000000000001, so
they differ from the devkit at recall exactly 6/10 and 7/10 as well; all of these need a number of
positives that is a multiple of 10 / gcd, and move an AP by at most 1/11 of one precision value.

Other choices:

- The Python ports (py-faster-rcnn's ``voc_eval.py`` and those derived from it) take an IoU
  strictly above 0.5 and rank with an unstable sort; this module follows the devkit (``>= 0.5``,
  stable).
- A class without a single non-difficult object has no recall (0 / 0): the devkit would give NaN
  (it never meets one on VOC's own test sets). Here its AP is NaN and it is left out of the mean;
  if no class has positives, the mAP is NaN too.
- Detections for an image that has no ground-truth record raise ``ValueError`` (the devkit stops
  on an unrecognised image id too), and so do labels outside 1..K.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

IOU_THRESHOLD = 0.5


def _array(values: Any, dtype, shape_tail: tuple[int, ...] = ()) -> np.ndarray:
    """A list, numpy array or (any-device) torch tensor as a numpy array of shape (-1, *shape_tail)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=dtype).reshape(-1, *shape_tail)


def _iou(box: np.ndarray, others: np.ndarray, inclusive: bool) -> np.ndarray:
    """IoU of one xyxy box with each of ``others``, as the devkit computes it."""
    one = 1.0 if inclusive else 0.0
    iw = np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]) + one
    ih = np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]) + one
    inter = iw * ih
    union = ((box[2] - box[0] + one) * (box[3] - box[1] + one)
             + (others[:, 2] - others[:, 0] + one) * (others[:, 3] - others[:, 1] + one) - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    return np.where((iw > 0) & (ih > 0), iou, 0.0)  # the devkit skips objects without overlap


def ap_11_point(tp: np.ndarray, fp: np.ndarray, num_positives: int) -> float:
    """VOC2007's 11-point interpolated AP of a ranked list of TP / FP flags (ignored ones removed)."""
    if num_positives == 0:
        return math.nan
    tp_cum, fp_cum = np.cumsum(tp), np.cumsum(fp)
    precision = tp_cum / np.maximum(tp_cum + fp_cum, 1)
    total = 0.0
    for k in range(11):
        # recall >= k / 10, in integers; the devkit's t = 0.3 is 0.30000000000000004 (see above)
        reached = 10 * tp_cum > 3 * num_positives if k == 3 else 10 * tp_cum >= k * num_positives
        total += float(precision[reached].max()) if reached.any() else 0.0
    return total / 11


def ap_area(tp: np.ndarray, fp: np.ndarray, num_positives: int) -> float:
    """VOC2010+'s AP: area under the monotone precision envelope (the devkit's ``VOCap``)."""
    if num_positives == 0:
        return math.nan
    tp_cum, fp_cum = np.cumsum(tp), np.cumsum(fp)
    recall = np.concatenate([[0.0], tp_cum / num_positives, [1.0]])
    precision = np.concatenate([[0.0], tp_cum / np.maximum(tp_cum + fp_cum, 1), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))


def match_class(detections: Sequence[tuple[Any, float, np.ndarray]],
                ground_truth: dict[Any, tuple[np.ndarray, np.ndarray]], inclusive: bool = False
                ) -> tuple[np.ndarray, np.ndarray]:
    """TP and FP flags (0/1, best score first) of one class's ``(image_id, score, box)`` detections.

    ``ground_truth`` maps image id -> (boxes (G, 4), difficult (G,)) of this class. A detection that
    hits a difficult object has 0 in both arrays.
    """
    order = np.argsort(-np.asarray([d[1] for d in detections], dtype=np.float64), kind="stable")
    tp, fp = np.zeros(len(detections)), np.zeros(len(detections))
    taken = {image_id: np.zeros(len(boxes), dtype=bool) for image_id, (boxes, _) in ground_truth.items()}
    for rank, index in enumerate(order):
        image_id, _, box = detections[index]
        gt_boxes, difficult = ground_truth.get(image_id, (np.zeros((0, 4)), np.zeros(0, dtype=bool)))
        if len(gt_boxes) == 0:
            fp[rank] = 1
            continue
        overlaps = _iou(box, gt_boxes, inclusive)
        best = int(np.argmax(overlaps))  # the first of equal maxima, like the devkit's strict ">"
        if overlaps[best] < IOU_THRESHOLD:
            fp[rank] = 1
        elif difficult[best]:
            pass  # neither a TP nor an FP
        elif not taken[image_id][best]:
            tp[rank] = 1
            taken[image_id][best] = True
        else:
            fp[rank] = 1  # a second detection of an object already found
    return tp, fp


def voc_map(detections: Iterable[dict[str, Any]], ground_truth: Iterable[dict[str, Any]],
            class_names: Sequence[str], *, inclusive: bool = False) -> dict[str, Any]:
    """Pascal VOC mAP at IoU 0.5, in both the VOC2007 (11-point) and VOC2010+ (area) forms.

    ``detections``: per image ``{"image_id", "boxes" (D, 4) xyxy, "scores" (D,), "labels" (D,)}``
    with labels 1..K (K = ``len(class_names)``); torch tensors, numpy arrays or lists.
    ``ground_truth``: per image ``{"image_id", "boxes" (G, 4), "labels" (G,), "difficult" (G,)}``
    (``difficult`` may be left out: none is). Every evaluated image needs a ground-truth record,
    also an image without objects, e.g. from ``VOCDetection.ground_truth()``.
    ``inclusive``: boxes in the devkit's 1-based inclusive pixels (widths ``x2 - x1 + 1``) rather
    than fpn's 0-based edges (see the module's docstring).

    Returns ``mAP_voc07`` and ``mAP_voc12`` (fractions in [0, 1], means over the classes that have
    non-difficult objects), per-class ``AP_voc07`` and ``AP_voc12`` (name -> AP, NaN for a class
    without positives), ``num_positives`` (name -> non-difficult objects), ``num_detections``
    (name -> detections) and ``num_images``.
    """
    num_classes = len(class_names)
    gt_by_class, num_positives, known_images = _ground_truth_by_class(ground_truth, num_classes)
    dets_by_class = _detections_by_class(detections, num_classes, known_images)

    ap07, ap12 = {}, {}
    for c, name in enumerate(class_names):
        tp, fp = match_class(dets_by_class[c], gt_by_class[c], inclusive)
        ap07[name] = ap_11_point(tp, fp, num_positives[c])
        ap12[name] = ap_area(tp, fp, num_positives[c])

    def mean(values: dict[str, float]) -> float:
        present = [v for v in values.values() if not math.isnan(v)]
        return float(np.mean(present)) if present else math.nan

    return {"mAP_voc07": mean(ap07), "mAP_voc12": mean(ap12), "AP_voc07": ap07, "AP_voc12": ap12,
            "num_positives": dict(zip(class_names, num_positives, strict=True)),
            "num_detections": {name: len(dets_by_class[c]) for c, name in enumerate(class_names)},
            "num_images": len(known_images)}


GroundTruthByClass = list[dict[Any, tuple[np.ndarray, np.ndarray]]]


def _ground_truth_by_class(ground_truth: Iterable[dict[str, Any]], num_classes: int
                           ) -> tuple[GroundTruthByClass, list[int], set]:
    """Per class: image id -> (boxes, difficult) of that class (every image, also without one); the
    number of non-difficult objects of each class; the image ids."""
    gt_by_class: GroundTruthByClass = [{} for _ in range(num_classes)]
    num_positives = [0] * num_classes
    known_images = set()
    for record in ground_truth:
        image_id = record["image_id"]
        if image_id in known_images:
            raise ValueError(f"image_id {image_id!r} has two ground-truth records")
        known_images.add(image_id)
        boxes = _array(record["boxes"], np.float64, (4,))
        labels = _array(record["labels"], np.int64)
        difficult = (_array(record["difficult"], bool) if record.get("difficult") is not None
                     else np.zeros(len(labels), dtype=bool))
        if not len(boxes) == len(labels) == len(difficult):
            raise ValueError(f"image_id {image_id!r}: boxes, labels and difficult differ in length")
        if labels.size and (labels.min() < 1 or labels.max() > num_classes):
            raise ValueError(f"image_id {image_id!r}: ground-truth labels must be in 1..{num_classes}")
        for c in range(num_classes):
            mine = labels == c + 1
            gt_by_class[c][image_id] = (boxes[mine], difficult[mine])
            num_positives[c] += int((~difficult[mine]).sum())
    return gt_by_class, num_positives, known_images


def _detections_by_class(detections: Iterable[dict[str, Any]], num_classes: int, known_images: set
                         ) -> list[list[tuple[Any, float, np.ndarray]]]:
    """Per class: the (image id, score, box) of each detection, in input order."""
    dets_by_class: list[list[tuple[Any, float, np.ndarray]]] = [[] for _ in range(num_classes)]
    for record in detections:
        image_id = record["image_id"]
        if image_id not in known_images:
            raise ValueError(f"detections for image_id {image_id!r}, which has no ground-truth record")
        boxes = _array(record["boxes"], np.float64, (4,))
        scores = _array(record["scores"], np.float64)
        labels = _array(record["labels"], np.int64)
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(f"image_id {image_id!r}: boxes, scores and labels differ in length")
        if labels.size and (labels.min() < 1 or labels.max() > num_classes):
            raise ValueError(f"image_id {image_id!r}: detection labels must be in 1..{num_classes}")
        for box, score, label in zip(boxes, scores, labels, strict=True):
            dets_by_class[label - 1].append((image_id, float(score), box))
    return dets_by_class


def format_voc_table(metrics: dict[str, Any]) -> str:
    """Per-class AP (percent, one decimal) in both forms, positives and detections, then the mean."""
    names = list(metrics["AP_voc07"])
    width = max(8, *(len(n) for n in names)) if names else 8

    def pct(value: float) -> str:
        return "n/a" if math.isnan(value) else f"{100 * value:.1f}"

    lines = [f"{'class'.ljust(width)} {'AP07':>6} {'AP12':>6} {'#gt':>6} {'#det':>7}"]
    for name in names:
        lines.append(f"{name.ljust(width)} {pct(metrics['AP_voc07'][name]):>6} "
                     f"{pct(metrics['AP_voc12'][name]):>6} {metrics['num_positives'][name]:>6} "
                     f"{metrics['num_detections'][name]:>7}")
    lines.append(f"{'mAP'.ljust(width)} {pct(metrics['mAP_voc07']):>6} {pct(metrics['mAP_voc12']):>6} "
                 f"{sum(metrics['num_positives'].values()):>6} {sum(metrics['num_detections'].values()):>7}")
    return "\n".join(lines)
