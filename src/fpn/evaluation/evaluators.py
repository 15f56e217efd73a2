"""Evaluators: one per metric family, each fed batch by batch and asked for its numbers at the end.

As detectron2's ``DatasetEvaluator``: the evaluation loop (``fpn.evaluation.inference``) calls
``reset()``, then ``process(image_ids, images, outputs)`` for every batch, then ``evaluate()``,
which gathers what every rank collected (under torchrun) and returns an ``EvalResult`` holding
only its own numbers; the loop merges them. ``model_kwargs`` says what the evaluator needs the
model to return (``return_proposals=True``, ``paste_masks=False``). An evaluator ignores outputs
that lack what it measures (a box evaluator on the RPN alone contributes nothing), so one list
serves every composition of the detector.

- ``BoxEvaluator``: COCO box AP (Table 3); keeps pycocotools' ``COCOeval`` as ``cocoeval``;
- ``ProposalEvaluator``: class-agnostic proposal AR (Table 1);
- ``MaskProposalEvaluator``: mask AR of segment proposals (Table 6, docs/paper.md §5);
- ``VOCEvaluator``: Pascal VOC's mAP at IoU 0.5, per class (``fpn.evaluation.voc``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools.coco import COCO
from torch import Tensor

from fpn import distributed
from fpn.evaluation.coco import (
    BOX_KEYS,
    box_cocoeval,
    detections_to_coco_results,
    encode_mask_proposals,
    mask_proposal_ar,
    mask_results,
    proposal_ar,
)
from fpn.evaluation.confusion import confusion_of
from fpn.evaluation.per_class import PrecisionRecall, format_per_class_table, per_class_box_ap
from fpn.evaluation.result import EvalResult
from fpn.evaluation.voc import format_voc_table, voc_map

VOC_TABLE_HEADING = "Pascal VOC AP at IoU 0.5 (difficult objects ignored)"
COCO_TABLE_HEADING = "COCO box AP per class (pycocotools)"
CONFUSION_SCORE_THRESH = 0.5  # detections counted in the confusion matrix: those drawn (fpn.visualize)


class Evaluator:
    """Collects outputs batch by batch (``process``) and scores them at the end (``evaluate``)."""

    model_kwargs: dict[str, Any] = {}  # keyword arguments the model is called with for this evaluator

    def reset(self) -> None:
        """Forget what an earlier evaluation collected."""

    def process(self, image_ids: list[int], images: list[Tensor], outputs: list[dict[str, Tensor]]) -> None:
        """One batch: the images' ids, the images (3 x H x W, original pixels) and the model's outputs."""

    def evaluate(self) -> EvalResult:
        """The numbers of everything processed since ``reset``, over every rank."""
        return EvalResult()


def _gathered(items: list) -> list:
    """Every rank's ``items``, concatenated in rank order."""
    return [item for shard in distributed.gather_objects(items) for item in shard]


class BoxEvaluator(Evaluator):
    """COCO box AP of the detections (``boxes``, ``scores``, ``labels`` 1..K), over the images processed:
    the headline numbers, AP per class (``per_class["coco"]`` and a table), the precision-recall
    curves (``curves``) and, at ``score_thresh``, the confusion matrix and each image's errors
    (``fpn.evaluation.confusion``).

    A model whose outputs have no ``boxes`` (the RPN alone) gets no box numbers.
    """

    def __init__(self, coco_gt: COCO, label_to_category_id: dict[int, int], *,
                 score_thresh: float = CONFUSION_SCORE_THRESH):
        self.coco_gt, self.label_to_category_id = coco_gt, label_to_category_id
        self.score_thresh = score_thresh
        self.cocoeval = None  # pycocotools' evaluation of the last ``evaluate``, once it ran
        self.reset()

    def reset(self) -> None:
        self.detections: list[tuple[int, dict[str, Tensor]]] = []
        self.without_boxes = 0

    def process(self, image_ids, images, outputs) -> None:
        for image_id, out in zip(image_ids, outputs, strict=True):
            if "boxes" not in out:
                self.without_boxes += 1
                continue
            self.detections.append((image_id, {k: out[k].cpu() for k in ("boxes", "scores", "labels")}))

    def evaluate(self) -> EvalResult:
        if sum(distributed.gather_objects(self.without_boxes)):
            return EvalResult()
        detections = _gathered(self.detections)
        image_ids = [image_id for image_id, _ in detections]
        results = detections_to_coco_results([d for _, d in detections], image_ids, self.label_to_category_id)
        confusion, errors = confusion_of(self._with_ground_truth(detections), self.class_names(),
                                         score_thresh=self.score_thresh)
        if not results:
            return EvalResult(metrics=dict.fromkeys(BOX_KEYS, 0.0), confusion=confusion, image_errors=errors)
        self.cocoeval = box_cocoeval(self.coco_gt, results, image_ids=image_ids)
        metrics = {k: max(0.0, float(v)) for k, v in zip(BOX_KEYS, self.cocoeval.stats[:6], strict=True)}
        per_class = per_class_box_ap(self.cocoeval)
        return EvalResult(metrics=metrics, coco_results=results, per_class={"coco": per_class},
                          tables={COCO_TABLE_HEADING: format_per_class_table(per_class)},
                          curves=PrecisionRecall.of(self.cocoeval), confusion=confusion, image_errors=errors)

    def class_names(self) -> list[str]:
        """The names of labels 1..K (the ground truth's category names)."""
        return [self.coco_gt.cats[self.label_to_category_id[label]]["name"]
                for label in sorted(self.label_to_category_id)]

    def _with_ground_truth(self, detections: list[tuple[int, dict[str, Tensor]]]) -> list[dict[str, Any]]:
        """Each image's detections beside its ground truth (xyxy, labels 1..K, crowd regions)."""
        label_of = {cat: label for label, cat in self.label_to_category_id.items()}
        images = []
        for image_id, out in detections:
            anns = [a for a in self.coco_gt.imgToAnns.get(image_id, []) if a["category_id"] in label_of]
            xyxy = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)],
                            dtype=np.float64).reshape(-1, 4)
            crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
            labels = np.array([label_of[a["category_id"]] for a in anns], dtype=np.int64)
            images.append({"image_id": image_id, "gt_boxes": xyxy[~crowd], "gt_labels": labels[~crowd],
                           "crowd_boxes": xyxy[crowd], **{k: v.numpy() for k, v in out.items()}})
        return images


class ProposalEvaluator(Evaluator):
    """Class-agnostic AR of the ``proposals`` ranked by ``objectness``: AR@N for N in
    ``PROPOSAL_COUNTS`` and AR_s/m/l@1000. ``request``: ask a detector with a box head for its
    proposals (the RPN alone always returns them)."""

    def __init__(self, coco_gt: COCO, *, request: bool = True):
        self.coco_gt, self.request = coco_gt, request
        self.model_kwargs = {"return_proposals": True} if request else {}
        self.reset()

    def reset(self) -> None:
        self.proposals: list[tuple[int, Tensor, Tensor]] = []

    def process(self, image_ids, images, outputs) -> None:
        for image_id, out in zip(image_ids, outputs, strict=True):
            if "proposals" in out:
                self.proposals.append((image_id, out["proposals"].cpu(), out["objectness"].cpu()))

    def evaluate(self) -> EvalResult:
        proposals = _gathered(self.proposals)
        if not proposals and not self.request:
            return EvalResult()
        image_ids = [image_id for image_id, _, _ in proposals]
        return EvalResult(metrics=proposal_ar(self.coco_gt, [p for _, p, _ in proposals], image_ids,
                                              [s for _, _, s in proposals]))


class MaskProposalEvaluator(Evaluator):
    """Mask AR of segment proposals; each image's masks are encoded as RLE when processed (1000 full
    masks an image would not fit in memory), at ``mask_threshold``."""

    model_kwargs = {"paste_masks": False}

    def __init__(self, coco_gt: COCO, *, mask_threshold: float):
        self.coco_gt, self.mask_threshold = coco_gt, mask_threshold
        self.reset()

    def reset(self) -> None:
        self.masks: list[tuple[int, list[dict[str, Any]], Tensor]] = []

    def process(self, image_ids, images, outputs) -> None:
        for image_id, image, out in zip(image_ids, images, outputs, strict=True):
            rles = encode_mask_proposals(out["mask_probs"].cpu(), out["mask_regions"].cpu(),
                                         tuple(image.shape[-2:]), threshold=self.mask_threshold)
            self.masks.append((image_id, rles, out["scores"].cpu()))

    def evaluate(self) -> EvalResult:
        masks = _gathered(self.masks)
        image_ids, rles, scores = [m[0] for m in masks], [m[1] for m in masks], [m[2] for m in masks]
        category_id = self.coco_gt.getCatIds()[0] if self.coco_gt.getCatIds() else 1
        return EvalResult(metrics=mask_proposal_ar(self.coco_gt, rles, scores, image_ids),
                          coco_results=mask_results(rles, scores, image_ids, category_id))


class VOCEvaluator(Evaluator):
    """Pascal VOC mAP at IoU 0.5 in its VOC2007 (11-point) and VOC2010+ (area) forms, difficult
    objects ignored, per class; over the images processed (the readable ones).

    Args:
        ground_truth: per image ``{"image_id", "boxes", "labels", "difficult"}``
            (``VOCDetection.ground_truth()``); class_names: the names of labels 1..K.
    """

    def __init__(self, ground_truth: list[dict[str, Any]], class_names: list[str]):
        self.ground_truth, self.class_names = ground_truth, list(class_names)
        self.reset()

    def reset(self) -> None:
        self.detections: list[dict[str, Any]] = []
        self.image_ids: list[int] = []

    def process(self, image_ids, images, outputs) -> None:
        self.image_ids += image_ids
        for image_id, out in zip(image_ids, outputs, strict=True):
            if "boxes" in out:
                self.detections.append({"image_id": image_id, **{k: out[k].cpu() for k in
                                                                 ("boxes", "scores", "labels")}})

    def evaluate(self) -> EvalResult:
        evaluated, detections = set(_gathered(self.image_ids)), _gathered(self.detections)
        ground_truth = [gt for gt in self.ground_truth if gt["image_id"] in evaluated]
        result = voc_map(detections, ground_truth, self.class_names)
        per_class = {name: {"AP_voc07": _finite(result["AP_voc07"][name]),
                            "AP_voc12": _finite(result["AP_voc12"][name]),
                            "positives": result["num_positives"][name],
                            "detections": result["num_detections"][name]} for name in self.class_names}
        return EvalResult(metrics={"mAP_voc07": result["mAP_voc07"], "mAP_voc12": result["mAP_voc12"]},
                          per_class={"voc": per_class}, tables={VOC_TABLE_HEADING: format_voc_table(result)})


def _finite(value: float) -> float | None:
    """NaN (a class without positives) as None, so that ``metrics.json`` stays standard JSON."""
    return None if value != value else value


__all__ = ["Evaluator", "BoxEvaluator", "ProposalEvaluator", "MaskProposalEvaluator", "VOCEvaluator"]
