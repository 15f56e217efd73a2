"""Per-class results read from an accumulated ``COCOeval``: the precision-recall curves of every
class and the per-class AP table (AP, AP50, AP75, AP_s, AP_m, AP_l), as pycocotools' ``summarize``
reads its precision array for all classes at once (docs/paper.md §4 reports the means)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pycocotools.cocoeval import COCOeval

# Per class: (IoU threshold or None for the mean over .5:.95, area range index [all, s, m, l]).
PER_CLASS_AP = {"AP": (None, 0), "AP50": (0.5, 0), "AP75": (0.75, 0), "AP_s": (None, 1), "AP_m": (None, 2),
                "AP_l": (None, 3)}


@dataclass
class PrecisionRecall:
    """pycocotools' precision-recall curve of every class (all areas, at most 100 detections an
    image): ``precision[t, r, k]`` is the interpolated precision of class ``class_names[k]`` at IoU
    ``iou_thresholds[t]`` and recall ``recall[r]``; -1 for a class without ground truth."""

    class_names: list[str]
    iou_thresholds: np.ndarray  # (T,)
    recall: np.ndarray  # (R,) pycocotools' 101 recall points 0, 0.01, ..., 1
    precision: np.ndarray  # (T, R, K)

    @classmethod
    def of(cls, evaluator: COCOeval) -> PrecisionRecall:
        """The curves an accumulated ``COCOeval`` holds (its ``eval["precision"]``, no recomputation)."""
        params = evaluator.params
        names = [evaluator.cocoGt.cats[cat_id]["name"] for cat_id in params.catIds]
        return cls(names, np.asarray(params.iouThrs), np.asarray(params.recThrs),
                   np.asarray(evaluator.eval["precision"][:, :, :, 0, -1]))


def per_class_box_ap(evaluator: COCOeval) -> dict[str, dict[str, float | int | None]]:
    """Class name -> AP, AP50, AP75, AP_s, AP_m, AP_l (``PER_CLASS_AP``, fractions) and
    ``objects`` (non-crowd ground truth over the images scored), read from an accumulated
    ``COCOeval``'s precision array as ``summarize`` reads it for one class; ``None`` where the class
    has no ground truth (of that size)."""
    params, precision = evaluator.params, evaluator.eval["precision"]  # (T, R, K, A, M)
    table = {}
    for k, cat_id in enumerate(params.catIds):
        row: dict[str, float | int | None] = {}
        for key, (iou, area) in PER_CLASS_AP.items():
            values = precision[:, :, k, area, -1]
            if iou is not None:
                values = values[np.isclose(params.iouThrs, iou)]
            values = values[values > -1]
            row[key] = float(np.mean(values)) if values.size else None
        row["objects"] = len(evaluator.cocoGt.getAnnIds(imgIds=params.imgIds, catIds=[cat_id], iscrowd=False))
        table[evaluator.cocoGt.cats[cat_id]["name"]] = row
    return table


def format_per_class_table(table: dict[str, dict[str, float | int | None]]) -> str:
    """The per-class AP of ``per_class_box_ap`` as text: percentages with one decimal, '-' for none."""
    width = max([len(name) for name in table] + [5])
    keys = list(PER_CLASS_AP)
    lines = [f"{'class':<{width}} " + " ".join(f"{k:>6}" for k in keys) + f" {'objects':>8}"]
    for name, row in table.items():
        cells = ["     -" if row[k] is None else f"{100 * row[k]:6.1f}" for k in keys]
        lines.append(f"{name:<{width}} " + " ".join(cells) + f" {row['objects']:>8}")
    return "\n".join(lines)
