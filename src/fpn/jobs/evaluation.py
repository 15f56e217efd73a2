"""Box AP and proposal AR of a model on the validation set a config names (pycocotools)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from fpn.api import Detector, find_checkpoint
from fpn.config import Config, load_config, merge, parse_overrides
from fpn.engine import evaluate as ev
from fpn.jobs.datasets import coco_ground_truth, dataset_for, label_to_category_id, val_loader

log = logging.getLogger(__name__)


def evaluate_model(model: nn.Module, dataset: Dataset, cfg: Config, *, progress: bool = True
                   ) -> dict[str, Any]:
    """Box AP and proposal AR of ``model`` on ``dataset``; unreadable images are skipped and counted.

    At most ``train.max_bad_samples`` images may be unreadable, as in training.
    """
    was_training = model.training
    model.eval()
    metrics = ev.evaluate_detector(
        model, val_loader(dataset, workers=min(2, cfg.data.num_workers)), coco_ground_truth(dataset),
        label_to_category_id(cfg), with_proposals=True, device=model.device, progress=progress,
        max_bad_samples=cfg.train.max_bad_samples,
    )
    model.train(was_training)
    if model.rpn is not None:  # Table 1 reports the anchors an image costs
        metrics["anchors_per_image"] = mean_anchors_per_image(model, ev.as_coco(coco_ground_truth(dataset)))
    if metrics["skipped_images"]:
        log.warning("%d unreadable validation image(s) skipped; the metrics cover the %d readable ones: %s",
                    len(metrics["skipped_images"]), metrics["num_images"], metrics["skipped_images"][:5])
    return metrics


def mean_anchors_per_image(model: nn.Module, coco) -> float:
    """The RPN's anchors per image at test time, averaged over the images of a COCO ground truth."""
    sizes = [(int(img["height"]), int(img["width"])) for img in coco.dataset["images"]]
    return sum(model.num_anchors(hw) for hw in sizes) / max(1, len(sizes))


def run_eval(checkpoint: str | Path, overrides: list[str] | None = None, *, output: str | Path | None = None,
             progress: bool = True) -> tuple[dict[str, Any], Path]:
    """Evaluate a run, checkpoint directory or weights file; metrics saved beside it (or in ``output``)."""
    _, config_file = find_checkpoint(checkpoint)
    cfg = merge(load_config(config_file), parse_overrides(overrides or []), "overrides")
    # the model.* overrides (e.g. model.input.test_scales) apply to the loaded model as well
    model_overrides = [o for o in overrides or [] if o.strip().startswith("model.")]
    detector = Detector.from_checkpoint(checkpoint, cfg.train.device, model_overrides)
    metrics = evaluate_model(detector.model, dataset_for(cfg, "val"), cfg, progress=progress)
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
