"""What an evaluation measured (``EvalResult``), how it is printed, and how it is saved.

Every number is a float under a fixed name (``fpn.evaluation.coco``: ``AP``, ``AR@100``,
``mask_AR@10``...; ``mAP_voc07``; ``seconds_per_image``, ``anchors_per_image``), so callers
read ``result.metrics[name]`` and never sort numbers from lists and strings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fpn.errors import output_dir
from fpn.evaluation.coco import AR_KEYS, BOX_KEYS, MASK_AR_KEYS, RESULT_KEYS
from fpn.evaluation.confusion import ConfusionMatrix, ImageErrors
from fpn.evaluation.per_class import PrecisionRecall

# Numbers a table shows as they are, not as percentages.
PLAIN_FORMATS = {"anchors_per_image": "{:.0f}", "seconds_per_image": "{:.3f}"}


@dataclass
class EvalResult:
    """The outcome of an evaluation, merged from its evaluators (``fpn.evaluation.evaluators``).

    Attributes:
        metrics: every number by name, fractions in [0, 1] for AP and AR.
        per_class: per metric family (``"voc"``, ...), class name -> its numbers (``None`` where
            a class has nothing to measure, e.g. no positives).
        tables: heading -> a text table printed after the headline numbers.
        coco_results: the detections (or masks) in COCO's results format.
        image_ids: the images scored (the readable ones); ``skipped_images``: messages naming the
            unreadable ones.
        curves: the precision-recall curve of every class (pycocotools'), for box AP.
        confusion: the confusion matrix with a background row and column; ``image_errors``: the
            false positives and misses of each image (``fpn.evaluation.confusion``), for box AP.
    """

    metrics: dict[str, float] = field(default_factory=dict)
    per_class: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    tables: dict[str, str] = field(default_factory=dict)
    coco_results: list[dict[str, Any]] = field(default_factory=list)
    image_ids: list[int] = field(default_factory=list)
    skipped_images: list[str] = field(default_factory=list)
    curves: PrecisionRecall | None = None
    confusion: ConfusionMatrix | None = None
    image_errors: list[ImageErrors] = field(default_factory=list)
    pictures: list[str] = field(default_factory=list)  # drawn from it by fpn eval, relative to its folder

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    def merge(self, other: EvalResult) -> EvalResult:
        """Add another evaluator's numbers, tables and results to this one (in place)."""
        self.metrics.update(other.metrics)
        self.per_class.update(other.per_class)
        self.tables.update(other.tables)
        self.coco_results += other.coco_results
        self.curves = other.curves or self.curves
        self.confusion = other.confusion or self.confusion
        self.image_errors += other.image_errors
        return self

    def numbers(self) -> dict[str, float]:
        """The metrics and the number of images scored."""
        return {**self.metrics, "num_images": self.num_images}

    def to_json(self) -> dict[str, Any]:
        """What ``metrics.json`` holds: the numbers, the skipped images, ``<family>_per_class``
        (``coco_per_class``: AP, AP50, ... per class; ``voc_per_class``) and ``confusion_matrix``."""
        per_class = {f"{family}_per_class": table for family, table in self.per_class.items()}
        confusion = {"confusion_matrix": self.confusion.to_json()} if self.confusion is not None else {}
        return {**self.numbers(), "skipped_images": self.skipped_images, **per_class, **confusion}

    def skipped_note(self) -> str:
        """One line saying which images the metrics leave out, or '' when none were skipped."""
        if not self.skipped_images:
            return ""
        return (f"note: {len(self.skipped_images)} unreadable image(s) skipped, metrics over the "
                f"{self.num_images} readable ones; first: {self.skipped_images[0]}")

    def summary(self) -> str:
        """The headline table, then every titled table, then the skipped-images note."""
        parts = [format_table(self.metrics)]
        parts += [f"{heading}:\n{table}" for heading, table in self.tables.items()]
        return "\n".join([*parts, *([self.skipped_note()] if self.skipped_images else [])])


def format_table(metrics: dict[str, float]) -> str:
    """The paper's columns, as percentages with one decimal (anchors per image as a count, the
    model's time per image in seconds)."""
    keys = [k for k in [*BOX_KEYS, *AR_KEYS, *MASK_AR_KEYS, *PLAIN_FORMATS] if k in metrics]
    if not keys:
        return "(no metrics)"
    cells = [PLAIN_FORMATS[k].format(metrics[k]) if k in PLAIN_FORMATS else f"{100 * metrics[k]:.1f}"
             for k in keys]
    widths = [max(7, len(k), len(c)) for k, c in zip(keys, cells, strict=True)]
    header = " ".join(k.rjust(w) for k, w in zip(keys, widths, strict=True))
    values = " ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))
    return f"{header}\n{values}"


def save_metrics(result: EvalResult, out_dir: str | Path) -> Path:
    """``metrics.json`` (``EvalResult.to_json``) and ``coco_results.json`` (the detections, in COCO's
    results format: image_id, category_id, bbox, score, and segmentation for mask results)."""
    out_dir = output_dir(out_dir, what="metrics folder")
    (out_dir / "metrics.json").write_text(json.dumps(result.to_json(), indent=1))
    records = [_result_record(r) for r in result.coco_results]
    (out_dir / "coco_results.json").write_text(json.dumps(records))
    return out_dir


def _result_record(record: dict[str, Any]) -> dict[str, Any]:
    """The standard keys only; ``segmentation`` only as a mask (RLE), never loadRes' box polygon."""
    out = {k: record[k] for k in RESULT_KEYS if k in record}
    if isinstance(record.get("segmentation"), dict):
        out["segmentation"] = record["segmentation"]
    return out
