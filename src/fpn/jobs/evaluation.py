"""Box AP and proposal AR of a model on the validation set a config names (pycocotools), and Pascal
VOC's mAP on VOC data: the evaluators a run calls for (``fpn.evaluation.evaluators``), over its val set."""

from __future__ import annotations

import logging
from pathlib import Path

from pycocotools.coco import COCO
from torch import nn
from torch.utils.data import Dataset

from fpn.api import Detector
from fpn.config.files import load_config
from fpn.config.overrides import merge, parse_overrides
from fpn.config.schema import Config
from fpn.engine.checkpoint import find_checkpoint
from fpn.evaluation.coco import as_coco
from fpn.evaluation.evaluators import Evaluator, VOCEvaluator
from fpn.evaluation.inference import detector_evaluators, inference_on_dataset
from fpn.evaluation.result import EvalResult, save_metrics
from fpn.jobs.datasets import coco_ground_truth, dataset_for, label_to_category_id, val_loader
from fpn.jobs.eval_pictures import write_eval_pictures

log = logging.getLogger(__name__)


def evaluators_for(model: nn.Module, dataset: Dataset, cfg: Config, coco: COCO) -> list[Evaluator]:
    """The model's evaluators (box AP and proposal AR, or mask AR), and Pascal VOC's own metric
    when the dataset is VOC and the model has a box head."""
    evaluators = detector_evaluators(model, coco, label_to_category_id(cfg), with_proposals=True)
    if dataset.voc_metric and model.roi_heads is not None:
        evaluators.append(VOCEvaluator(dataset.ground_truth(), list(cfg.model.class_names)))
    return evaluators


def evaluate_model(model: nn.Module, dataset: Dataset, cfg: Config, *, progress: bool = True,
                   network: nn.Module | None = None) -> EvalResult:
    """Box AP and proposal AR of ``model`` on ``dataset``; unreadable images are skipped and counted.

    At most ``train.max_bad_samples`` images may be unreadable, as in training. ``network`` runs
    the images instead of ``model`` when given: ``model`` at another precision (``Detector.network``).
    """
    was_training = model.training
    model.eval()
    coco = as_coco(coco_ground_truth(dataset))  # read once: scoring and the anchor count use it
    result = inference_on_dataset(network or model, val_loader(dataset, workers=min(2, cfg.data.num_workers)),
                                  evaluators_for(model, dataset, cfg, coco), device=model.device,
                                  progress=progress, max_bad_samples=cfg.train.max_bad_samples)
    model.train(was_training)
    if model.rpn is not None:  # Table 1 reports the anchors an image costs
        result.metrics["anchors_per_image"] = mean_anchors_per_image(model, coco)
    if result.skipped_images:
        log.warning("%d unreadable validation image(s) skipped; the metrics cover the %d readable ones: %s",
                    len(result.skipped_images), result.num_images, result.skipped_images[:5])
    return result


def mean_anchors_per_image(model: nn.Module, coco) -> float:
    """The RPN's anchors per image at test time, averaged over the images of a COCO ground truth
    (those whose size is known: an unreadable image has none)."""
    sizes = [(int(img["height"]), int(img["width"])) for img in coco.dataset["images"] if "height" in img]
    return sum(model.num_anchors(hw) for hw in sizes) / max(1, len(sizes))


def open_run(checkpoint: str | Path, overrides: list[str] | None = None, *, precision: str = "fp32",
             calibration: list[str | Path] | None = None, backend: str = "pytorch"
             ) -> tuple[Config, Detector, Path]:
    """A run's saved config with ``overrides`` applied, its detector, and the config file's path.

    The ``model.*`` overrides (e.g. ``model.input.test_scales``) apply to the loaded model too.
    ``precision``, ``calibration`` and ``backend`` as for ``Detector``.
    """
    _, config_file = find_checkpoint(checkpoint)
    cfg = merge(load_config(config_file), parse_overrides(overrides or []), "overrides")
    model_overrides = [o for o in overrides or [] if o.strip().startswith("model.")]
    detector = Detector(checkpoint, cfg.train.device, overrides=model_overrides, precision=precision,
                        calibration=calibration, backend=backend)
    return cfg, detector, config_file


def run_eval(checkpoint: str | Path, overrides: list[str] | None = None, *, output: str | Path | None = None,
             progress: bool = True, precision: str = "fp32", calibration: list[str | Path] | None = None,
             backend: str = "pytorch") -> tuple[EvalResult, Path]:
    """Evaluate a run, checkpoint directory or weights file; metrics saved beside it (or in ``output``),
    with the PR curves, the confusion matrix and the worst images (``fpn.jobs.eval_pictures``).

    ``precision`` defaults to fp32, so that a run's AP is the same number on every host; the
    log says which precision ran (``auto`` measures what ``fpn predict`` would run). ``backend``
    openvino evaluates the OpenVINO model (``fpn.export_openvino``: boxes only, no proposal AR).
    """
    cfg, detector, config_file = open_run(checkpoint, overrides, precision=precision, calibration=calibration,
                                          backend=backend)
    dataset = dataset_for(cfg, "val")
    result = evaluate_model(detector.model, dataset, cfg, progress=progress, network=detector.network)
    log.info("evaluated at precision %s (%s)", detector.precision, backend)
    out = Path(output) if output else config_file.parent / "eval"
    save_metrics(result, out)
    result.pictures = write_eval_pictures(result, dataset, out,
                                          label_to_category_id=label_to_category_id(cfg))
    return result, out


def describe_outputs(result: EvalResult, out: Path) -> str:
    """The line ``fpn eval`` prints after the metrics: where they are, with the charts and the worst
    images drawn beside them (``result.pictures``: charts at the top, worst images in ``worst/``)."""
    charts = [p for p in result.pictures if "/" not in p]
    worst = len(result.pictures) - len(charts)
    return f"metrics in {out}" + (f", with {', '.join(charts) or 'no charts (pip install matplotlib)'} and "
                                  f"{worst} worst image(s) in worst/" if result.pictures else "")
