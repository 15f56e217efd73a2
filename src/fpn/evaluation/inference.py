"""The evaluation loop: a model over a data loader, its outputs handed to evaluators, one result.

``inference_on_dataset`` runs the model once per batch and feeds every evaluator
(``fpn.evaluation.evaluators``); ``evaluate_detector`` does so with the evaluators a detector's
parts call for (box AP, proposal AR, mask AR). The scoring itself is pycocotools'
(``fpn.evaluation.coco``, docs/paper.md §4) and the VOC devkit's (``fpn.evaluation.voc``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from pycocotools.coco import COCO
from tqdm import tqdm

from fpn import distributed
from fpn.data.unreadable import BadSampleCounter
from fpn.evaluation.coco import as_coco
from fpn.evaluation.evaluators import BoxEvaluator, Evaluator, MaskProposalEvaluator, ProposalEvaluator
from fpn.evaluation.result import EvalResult


def _model_kwargs(evaluators: Sequence[Evaluator]) -> dict[str, Any]:
    return {key: value for evaluator in evaluators for key, value in evaluator.model_kwargs.items()}


@torch.inference_mode()
def inference_on_dataset(model: Callable, data_loader: Iterable, evaluators: Sequence[Evaluator], *,
                         device: str | torch.device = "cpu", progress: bool = True,
                         max_bad_samples: int = 100) -> EvalResult:
    """Run ``model`` over a loader of (images, targets[, skipped]) and score it with ``evaluators``.

    The model is called as ``model(images, **kwargs)`` with the keyword arguments the evaluators
    ask for, plus ``proposals=`` when every target carries fixed proposals (Fast R-CNN on given
    proposals). ``seconds_per_image`` is the model's own time per image (the forward passes, no
    data loading or scoring). Under torchrun, give each rank its own shard of the images: the
    evaluators gather them before scoring.

    A loader of ``fpn.jobs.datasets.val_loader`` also yields the messages of the unreadable
    images it skipped: they are counted (at most ``max_bad_samples``, else
    ``TooManyBadSamplesError``), listed in ``skipped_images``, and the scores cover the readable
    images only.
    """
    for evaluator in evaluators:
        evaluator.reset()
    kwargs = _model_kwargs(evaluators)
    image_ids, forward_seconds = [], 0.0
    skipped = BadSampleCounter(max_bad_samples)  # the same limit as training (train.max_bad_samples)
    bar = progress and getattr(sys.stderr, "isatty", lambda: False)()  # no bar redrawn into a log file
    for images, targets, *bad in tqdm(data_loader, desc="eval", disable=not bar, dynamic_ncols=True):
        skipped.add(bad[0] if bad else [])
        if not images:
            continue
        images = [img.to(device) for img in images]
        given = {}  # Fast R-CNN on fixed proposals: they travel with the targets
        if targets and all("proposals" in t for t in targets):
            given["proposals"] = [t["proposals"].to(device) for t in targets]
        start = time.perf_counter()
        outputs = model(images, **kwargs, **given)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        forward_seconds += time.perf_counter() - start
        batch_ids = [int(t["image_id"]) for t in targets]
        for evaluator in evaluators:
            evaluator.process(batch_ids, images, outputs)
        image_ids += batch_ids
    seconds_per_image = forward_seconds / max(1, len(image_ids))  # this process's images
    shards = distributed.gather_objects((image_ids, skipped.messages))  # each rank saw a shard
    result = EvalResult(image_ids=[i for ids, _ in shards for i in ids],
                        skipped_images=[m for _, messages in shards for m in messages])
    for evaluator in evaluators:
        result.merge(evaluator.evaluate())
    result.metrics["seconds_per_image"] = seconds_per_image
    return result


def detector_evaluators(model: Any, coco_gt: COCO, label_to_category_id: dict[int, int], *,
                        with_proposals: bool = True) -> list[Evaluator]:
    """The evaluators a detector's parts call for: mask AR for segment proposals; otherwise box AP
    and (with ``with_proposals``, or for the RPN alone) proposal AR."""
    segment_head = getattr(model, "segment_proposals", None)
    if segment_head is not None:
        return [MaskProposalEvaluator(coco_gt, mask_threshold=segment_head.settings.mask_threshold)]
    return [BoxEvaluator(coco_gt, label_to_category_id), ProposalEvaluator(coco_gt, request=with_proposals)]


def evaluate_detector(model: Callable, data_loader: Iterable, coco_gt: COCO | str | Path | dict,
                      label_to_category_id: dict[int, int], *, with_proposals: bool = True,
                      device: str | torch.device = "cpu", progress: bool = True,
                      max_bad_samples: int = 100) -> EvalResult:
    """``inference_on_dataset`` with ``detector_evaluators``: box AP and proposal AR (COCO), or the
    mask AR of segment proposals (docs/paper.md §4-5)."""
    coco = as_coco(coco_gt)
    evaluators = detector_evaluators(model, coco, label_to_category_id, with_proposals=with_proposals)
    return inference_on_dataset(model, data_loader, evaluators, device=device, progress=progress,
                                max_bad_samples=max_bad_samples)
