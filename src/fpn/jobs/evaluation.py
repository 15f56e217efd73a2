"""Box AP and proposal AR of a model on the validation set a config names (pycocotools)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from fpn.api import Detector, find_checkpoint
from fpn.box_format import xywh_to_xyxy
from fpn.config import Config, load_config, merge, parse_overrides
from fpn.engine import evaluate as ev
from fpn.engine.voc_eval import format_voc_table, voc_map
from fpn.jobs.datasets import coco_ground_truth, dataset_for, label_to_category_id, val_loader

log = logging.getLogger(__name__)


def evaluate_model(model: nn.Module, dataset: Dataset, cfg: Config, *, progress: bool = True,
                   network: nn.Module | None = None) -> dict[str, Any]:
    """Box AP and proposal AR of ``model`` on ``dataset``; unreadable images are skipped and counted.

    At most ``train.max_bad_samples`` images may be unreadable, as in training. ``network`` runs
    the images instead of ``model`` when given: ``model`` at another precision (``Detector.network``).
    """
    was_training = model.training
    model.eval()
    coco = ev.as_coco(coco_ground_truth(dataset))  # read once: scoring and the anchor count use it
    metrics = ev.evaluate_detector(
        network or model, val_loader(dataset, workers=min(2, cfg.data.num_workers)), coco,
        label_to_category_id(cfg), with_proposals=True, device=model.device, progress=progress,
        max_bad_samples=cfg.train.max_bad_samples,
    )
    model.train(was_training)
    if hasattr(dataset, "ground_truth") and model.roi_heads is not None:  # Pascal VOC's own metric
        metrics.update(voc_metrics(metrics["coco_results"], metrics["evaluated_image_ids"], dataset, cfg))
    if model.rpn is not None:  # Table 1 reports the anchors an image costs
        metrics["anchors_per_image"] = mean_anchors_per_image(model, coco)
    if metrics["skipped_images"]:
        log.warning("%d unreadable validation image(s) skipped; the metrics cover the %d readable ones: %s",
                    len(metrics["skipped_images"]), metrics["num_images"], metrics["skipped_images"][:5])
    return metrics


def voc_metrics(coco_results: list[dict[str, Any]], image_ids: list[int], dataset, cfg: Config
                ) -> dict[str, Any]:
    """VOC mAP@0.5 (VOC2007 11-point and VOC2010+ area forms, difficult objects ignored), per class.

    Scored over the images that were evaluated (unreadable ones skipped); NaN (a class without
    positives) is stored as None so that ``metrics.json`` stays standard JSON.
    """
    category_to_label = {cid: label for label, cid in label_to_category_id(cfg).items()}
    per_image: dict[int, list[dict[str, Any]]] = {}
    for record in coco_results:
        per_image.setdefault(record["image_id"], []).append(record)
    evaluated = set(image_ids)
    ground_truth = [gt for gt in dataset.ground_truth() if gt["image_id"] in evaluated]
    detections = []
    for image_id, records in per_image.items():
        xywh = torch.tensor([r["bbox"] for r in records], dtype=torch.float64).reshape(-1, 4)
        detections.append({"image_id": image_id, "boxes": xywh_to_xyxy(xywh),
                           "scores": [r["score"] for r in records],
                           "labels": [category_to_label[r["category_id"]] for r in records]})
    result = voc_map(detections, ground_truth, list(cfg.model.class_names))
    voc = {"mAP_voc07": result["mAP_voc07"], "mAP_voc12": result["mAP_voc12"]}
    voc["voc_per_class"] = {name: {"AP_voc07": _finite(result["AP_voc07"][name]),
                                   "AP_voc12": _finite(result["AP_voc12"][name]),
                                   "positives": result["num_positives"][name],
                                   "detections": result["num_detections"][name]}
                            for name in cfg.model.class_names}
    voc["voc_table"] = format_voc_table(result)
    return voc


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value


def mean_anchors_per_image(model: nn.Module, coco) -> float:
    """The RPN's anchors per image at test time, averaged over the images of a COCO ground truth."""
    sizes = [(int(img["height"]), int(img["width"])) for img in coco.dataset["images"]]
    return sum(model.num_anchors(hw) for hw in sizes) / max(1, len(sizes))


def open_run(checkpoint: str | Path, overrides: list[str] | None = None, *, precision: str = "fp32",
             calibration: list[Path] | None = None) -> tuple[Config, Detector, Path]:
    """A run's saved config with ``overrides`` applied, its detector, and the config file's path.

    The ``model.*`` overrides (e.g. ``model.input.test_scales``) apply to the loaded model too.
    ``precision`` and ``calibration`` as for ``Detector``.
    """
    _, config_file = find_checkpoint(checkpoint)
    cfg = merge(load_config(config_file), parse_overrides(overrides or []), "overrides")
    model_overrides = [o for o in overrides or [] if o.strip().startswith("model.")]
    detector = Detector.from_checkpoint(checkpoint, cfg.train.device, model_overrides, precision=precision,
                                        calibration=calibration)
    return cfg, detector, config_file


def run_eval(checkpoint: str | Path, overrides: list[str] | None = None, *, output: str | Path | None = None,
             progress: bool = True, precision: str = "fp32", calibration: list[Path] | None = None
             ) -> tuple[dict[str, Any], Path]:
    """Evaluate a run, checkpoint directory or weights file; metrics saved beside it (or in ``output``).

    ``precision`` defaults to fp32, so that a run's AP is the same number on every host; the
    log says which precision ran (``auto`` measures what ``fpn predict`` would run).
    """
    cfg, detector, config_file = open_run(checkpoint, overrides, precision=precision, calibration=calibration)
    metrics = evaluate_model(detector.model, dataset_for(cfg, "val"), cfg, progress=progress,
                             network=detector.network)
    log.info("evaluated at precision %s", detector.precision)
    out = Path(output) if output else config_file.parent / "eval"
    ev.save_metrics(metrics, out)
    return metrics, out


def skipped_note(metrics: dict[str, Any]) -> str:
    """One line saying which images the metrics leave out, or '' when none were skipped."""
    skipped = metrics.get("skipped_images") or []
    if not skipped:
        return ""
    return (f"note: {len(skipped)} unreadable image(s) skipped, metrics over the {metrics['num_images']} "
            f"readable ones; first: {skipped[0]}")
