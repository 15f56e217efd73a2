"""Scores through pycocotools, as the paper's Tables 1-3 report them (docs/paper.md §4).

- Box AP: AP (IoU .5:.95), AP50, AP75, AP_s, AP_m, AP_l.
- Proposal AR: class-agnostic recall of the RPN's proposals, averaged over IoU .5:.95, at 100
  and 1000 proposals per image, and by object size at 1000.
- Mask AR of segment proposals (docs/paper.md §5, Table 6): the same recall with mask IoU
  (pycocotools' segm protocol), at 10, 100 and 1000 proposals, and by object size at 1000.

Plain functions of ground truth and results; the evaluators (``fpn.evaluation.evaluators``) collect
a model's outputs and call them.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from fpn.box_format import xyxy_to_xywh
from fpn.model.segment_proposals import mask_windows

BOX_KEYS = ["AP", "AP50", "AP75", "AP_s", "AP_m", "AP_l"]
AR_KEYS = ["AR@100", "AR@1000", "AR_s@1000", "AR_m@1000", "AR_l@1000"]
# Proposals per image at which proposal_ar also reports recall (AR against the number of proposals).
PROPOSAL_COUNTS = (10, 20, 50, 100, 200, 500, 1000)
MASK_AR_KEYS = ["mask_AR@10", "mask_AR@100", "mask_AR@1000", "mask_AR_s@1000", "mask_AR_m@1000",
                "mask_AR_l@1000"]
MASK_AR_MAX_DETS = [10, 100, 1000]
RESULT_KEYS = ["image_id", "category_id", "bbox", "score"]  # COCO's results format for boxes


def as_coco(coco_gt: COCO | str | Path | dict) -> COCO:
    """A pycocotools COCO object from an object, a JSON path or a dict (quietly)."""
    if isinstance(coco_gt, COCO):
        return coco_gt
    with contextlib.redirect_stdout(io.StringIO()):
        if isinstance(coco_gt, dict):
            coco = COCO()
            coco.dataset = copy.deepcopy(coco_gt)
            coco.dataset.setdefault("info", {})
            coco.createIndex()
            return coco
        return COCO(str(coco_gt))


def detections_to_coco_results(outputs: Iterable[dict[str, torch.Tensor]], image_ids: Iterable[int],
                               label_to_category_id: dict[int, int]) -> list[dict[str, Any]]:
    """Per-image ``boxes`` (xyxy), ``scores``, ``labels`` (1..K) -> COCO result records (xywh)."""
    results = []
    for out, image_id in zip(outputs, image_ids, strict=True):
        xywh = xyxy_to_xywh(out["boxes"].detach().cpu().to(torch.float64)).tolist()
        for box, score, label in zip(xywh, out["scores"].tolist(), out["labels"].tolist(), strict=True):
            results.append({"image_id": int(image_id),
                            "category_id": int(label_to_category_id[int(label)]),
                            "bbox": [round(v, 3) for v in box], "score": round(float(score), 5)})
    return results


def _run_cocoeval(coco: COCO, results: list[dict], use_cats: bool, max_dets: list[int],
                  verbose: bool, image_ids: list[int] | None = None, iou_type: str = "bbox") -> COCOeval:
    """COCOeval on ``results``; over ``image_ids`` only when given (e.g. the readable images)."""
    sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with sink:
        coco_dt = coco.loadRes([dict(r) for r in results])  # loadRes adds keys to the dicts it gets
        evaluator = COCOeval(coco, coco_dt, iou_type)
        evaluator.params.useCats = int(use_cats)
        evaluator.params.maxDets = max_dets
        if image_ids is not None:
            evaluator.params.imgIds = sorted(set(image_ids))
        evaluator.evaluate()
        evaluator.accumulate()
    return evaluator


def box_cocoeval(coco_gt: COCO | str | Path | dict, results: list[dict], verbose: bool = False,
                 image_ids: list[int] | None = None) -> COCOeval:
    """pycocotools' box evaluation of COCO-format results, accumulated and summarised.

    Its ``eval["precision"]`` (T IoUs, R recalls, K classes, A areas, M maxDets) holds the
    precision-recall curve of every class; ``stats[:6]`` the six numbers of ``BOX_KEYS``.
    """
    evaluator = _run_cocoeval(as_coco(coco_gt), results, True, [1, 10, 100], verbose, image_ids)
    with contextlib.redirect_stdout(io.StringIO()) if not verbose else contextlib.nullcontext():
        evaluator.summarize()
    return evaluator


def coco_box_ap(coco_gt: COCO | str | Path | dict, results: list[dict], verbose: bool = False,
                image_ids: list[int] | None = None) -> dict[str, float]:
    """AP, AP50, AP75, AP_s, AP_m, AP_l (fractions in [0, 1]) of COCO-format results.

    ``image_ids``: score over these images only (default: every image of the ground truth).
    """
    if not results:
        return dict.fromkeys(BOX_KEYS, 0.0)
    evaluator = box_cocoeval(coco_gt, results, verbose, image_ids)
    return {k: max(0.0, float(v)) for k, v in zip(BOX_KEYS, evaluator.stats[:6], strict=True)}


def proposal_ar(coco_gt: COCO | str | Path | dict, proposals_per_image: list[torch.Tensor],
                image_ids: list[int], scores_per_image: list[torch.Tensor] | None = None,
                verbose: bool = False) -> dict[str, float]:
    """Class-agnostic average recall of proposals (xyxy, best first): AR@100, AR@1000 and
    AR_s/m/l@1000 (Table 1), and AR@N for every N of PROPOSAL_COUNTS (the recall curve)."""
    coco = as_coco(coco_gt)
    any_category = coco.getCatIds()[0] if coco.getCatIds() else 1
    results = []
    for i, (boxes, image_id) in enumerate(zip(proposals_per_image, image_ids, strict=True)):
        boxes = boxes.detach().cpu().to(torch.float64)
        count = len(boxes)
        scores = (scores_per_image[i].tolist() if scores_per_image is not None
                  else torch.linspace(1.0, 0.0, count + 2)[1:-1].tolist())
        for box, score in zip(xyxy_to_xywh(boxes).tolist(), scores, strict=True):
            results.append({"image_id": int(image_id), "category_id": any_category, "bbox": box,
                            "score": float(score)})
    curve_keys = [f"AR@{n}" for n in PROPOSAL_COUNTS]
    if not results:
        return dict.fromkeys([*AR_KEYS, *curve_keys], 0.0)
    evaluator = _run_cocoeval(coco, results, False, list(PROPOSAL_COUNTS), verbose, list(image_ids))
    mean_recall = _mean_recall(evaluator)
    at_1000 = PROPOSAL_COUNTS.index(1000)
    return {**{key: mean_recall(0, i) for i, key in enumerate(curve_keys)},
            "AR_s@1000": mean_recall(1, at_1000), "AR_m@1000": mean_recall(2, at_1000),
            "AR_l@1000": mean_recall(3, at_1000)}


def _mean_recall(evaluator: COCOeval) -> Callable[[int, int], float]:
    """recall(area index [all, s, m, l], maxDets index) averaged over the IoUs .5:.95."""
    recall = evaluator.eval["recall"]  # (T IoUs, K=1, A areas [all, s, m, l], M maxDets)

    def mean_recall(area: int, max_det: int) -> float:
        values = recall[:, :, area, max_det]
        values = values[values > -1]
        return float(np.mean(values)) if values.size else 0.0

    return mean_recall


def encode_mask_proposals(mask_probs: torch.Tensor, regions_xyxy: torch.Tensor, image_hw: tuple[int, int], *,
                          threshold: float) -> list[dict[str, Any]]:
    """Compact segment proposals -> COCO RLE in the image's pixels, one mask at a time.

    Each mask is pasted over its own square only (``mask_windows``) into one reused image-sized
    buffer, encoded, and cleared, so memory stays at one image whatever the number of masks.

    Args:
        mask_probs: (K, M, M) mask probabilities; regions_xyxy: (K, 4) the squares they cover.
    Returns:
        K RLE dicts {"size": [H, W], "counts": str}, in the order of the masks.
    """
    from pycocotools import mask as mask_utils

    buffer = np.zeros(image_hw, dtype=np.uint8, order="F")  # pycocotools reads column-major
    empty = mask_utils.encode(buffer)
    rles = [{"size": [int(v) for v in empty["size"]], "counts": empty["counts"].decode("ascii")}
            for _ in range(len(mask_probs))]
    for k, rows, columns, window in mask_windows(mask_probs, regions_xyxy, image_hw, threshold=threshold):
        buffer[rows, columns] = window.cpu().numpy()
        rle = mask_utils.encode(buffer)
        rles[k]["counts"] = rle["counts"].decode("ascii")
        buffer[rows, columns] = 0
    return rles


def mask_proposal_ar(coco_gt: COCO | str | Path | dict, masks_rle_per_image: list[list[dict[str, Any]]],
                     scores_per_image: list[torch.Tensor], image_ids: list[int], verbose: bool = False
                     ) -> dict[str, float]:
    """Class-agnostic mask AR of segment proposals (docs/paper.md §5, Table 6).

    pycocotools' segm evaluation with ``useCats=0`` and ``maxDets=[10, 100, 1000]``; crowd
    regions are ignored as COCOeval ignores them. Returns mask_AR@10, @100, @1000 and
    mask_AR_s/m/l@1000 (fractions in [0, 1]).
    """
    coco = as_coco(coco_gt)
    results = mask_results(masks_rle_per_image, scores_per_image, image_ids,
                           coco.getCatIds()[0] if coco.getCatIds() else 1)
    if not results:
        return dict.fromkeys(MASK_AR_KEYS, 0.0)
    evaluator = _run_cocoeval(coco, results, False, MASK_AR_MAX_DETS, verbose, list(image_ids),
                              iou_type="segm")
    mean_recall = _mean_recall(evaluator)
    return {"mask_AR@10": mean_recall(0, 0), "mask_AR@100": mean_recall(0, 1),
            "mask_AR@1000": mean_recall(0, 2), "mask_AR_s@1000": mean_recall(1, 2),
            "mask_AR_m@1000": mean_recall(2, 2), "mask_AR_l@1000": mean_recall(3, 2)}


def mask_results(masks_rle_per_image: list[list[dict[str, Any]]], scores_per_image: list[torch.Tensor],
                 image_ids: list[int], category_id: int) -> list[dict[str, Any]]:
    """COCO result records (image_id, category_id, segmentation, score) of class-agnostic masks."""
    results = []
    for rles, scores, image_id in zip(masks_rle_per_image, scores_per_image, image_ids, strict=True):
        for rle, score in zip(rles, scores.tolist(), strict=True):
            results.append({"image_id": int(image_id), "category_id": category_id, "segmentation": rle,
                            "score": float(score)})
    return results
