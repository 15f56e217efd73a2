"""Detections for image files and folders: ``predictions.json`` and copies with the boxes drawn
(segment proposals: the masks as COCO RLE, and the best masks drawn as coloured overlays)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from pycocotools import mask as mask_utils
from tqdm import tqdm

from fpn.api import Detector, load_image
from fpn.box_format import xyxy_to_xywh
from fpn.data import DatasetError
from fpn.engine.evaluate import encode_mask_proposals
from fpn.errors import PathNotFoundError, output_dir
from fpn.model.segment_proposals import paste_masks
from fpn.visualize import save_drawn, save_masks_drawn, to_pil

log = logging.getLogger(__name__)

DRAWN_PROPOSALS = 20  # a run of the RPN alone: its best proposals are drawn (score = objectness)
DRAWN_MASKS = 10  # segment proposals: the best masks drawn as overlays (those above --score-thresh)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


class NothingPredictedError(DatasetError):
    """None of the inputs could be read."""


def expand_inputs(inputs: list[str | Path]) -> list[Path]:
    """Image files, and the images found (recursively) in folders, in a stable order."""
    paths = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.exists():
            paths.append(item)
        else:
            raise PathNotFoundError(f"{item}: no such file or folder")
    if not paths:
        raise PathNotFoundError(f"no images found in {[str(i) for i in inputs]}")
    return paths


def run_predict(checkpoint: str | Path, inputs: list[str | Path], out_dir: str | Path, *,
                score_thresh: float = 0.3, device: str = "auto", progress: bool = True,
                overrides: list[str] | None = None) -> Path:
    """Detections for images and folders -> ``predictions.json`` (COCO style) and drawn copies.

    Unreadable images are reported and skipped; if none could be read, ``NothingPredictedError``.
    ``overrides`` (``model.*=value``) change the loaded model's config (``Detector.from_checkpoint``).
    """
    detector = Detector.from_checkpoint(checkpoint, device, overrides)
    paths = expand_inputs(inputs)
    out_dir = output_dir(out_dir)
    records, failed = [], []
    for path in tqdm(paths, desc="predict", disable=not progress):
        try:
            image = load_image(path)
        except DatasetError as err:
            log.warning("skipped: %s", err)
            failed.append(str(path))
            continue
        if detector.model.segment_proposals is not None:
            records += _segment_records(detector, path, image, out_dir / "drawn" / f"{Path(path).stem}.png",
                                        score_thresh)
            continue
        det = detector(image)
        records += _records(detector, path, det)
        save_drawn(to_pil(image), _drawable(det), out_dir / "drawn" / f"{Path(path).stem}.png",
                   detector.class_names, score_thresh)
    if len(failed) == len(paths):
        raise NothingPredictedError(f"none of the {len(paths)} input image(s) could be read "
                                    f"(first: {failed[0]}); nothing was written")
    (out_dir / "predictions.json").write_text(json.dumps(records, indent=1))
    if failed:
        log.warning("%d of %d images could not be read: %s", len(failed), len(paths), failed[:5])
    return out_dir


def _segment_records(detector: Detector, path: Path, image: torch.Tensor, drawn_path: Path,
                     score_thresh: float) -> list[dict]:
    """Segment proposals of one image (docs/paper.md §5): every mask as COCO RLE with its box and
    score in ``predictions.json``; the ``DRAWN_MASKS`` best above ``score_thresh`` drawn as overlays."""
    det = detector(image, paste_masks=False)  # compact: K x M x M, pasted below one at a time
    image_hw = tuple(image.shape[-2:])
    threshold = detector.model.cfg.segment_proposals.mask_threshold
    rles = encode_mask_proposals(det["mask_probs"], det["mask_regions"], image_hw, threshold=threshold)
    boxes = mask_utils.toBbox(rles).tolist() if rles else []
    top = slice(0, DRAWN_MASKS)
    masks = paste_masks(det["mask_probs"][top], det["mask_regions"][top], image_hw, threshold=threshold)
    save_masks_drawn(to_pil(image), masks, det["scores"][top], drawn_path, score_thresh)
    return [{"file_name": str(path), "segmentation": rle, "bbox": [round(v, 2) for v in box], "score": score}
            for rle, box, score in zip(rles, boxes, det["scores"].tolist(), strict=True)]


def _drawable(det: dict) -> dict:
    """What to draw: the detections, or for the RPN alone its best ``DRAWN_PROPOSALS`` proposals."""
    if "boxes" in det:
        return det
    top = slice(0, DRAWN_PROPOSALS)
    return {"boxes": det["proposals"][top], "scores": det["objectness"][top],
            "labels": torch.zeros(len(det["proposals"][top]), dtype=torch.int64)}


def _records(detector: Detector, path: Path, det: dict) -> list[dict]:
    """COCO-style records of one image's detections (``bbox`` xywh), with the category names and the
    pyramid level of each detection's RoI (``level``, the k of P_k; Eq. 1)."""
    if "boxes" not in det:  # the RPN alone: proposals, class-agnostic
        return [{"file_name": str(path), "bbox": box, "score": score}
                for box, score in zip(xyxy_to_xywh(det["proposals"]).tolist(), det["objectness"].tolist(),
                                      strict=True)]
    category_ids = detector.model.cfg.category_ids
    levels = det["levels"].tolist() if "levels" in det else [None] * len(det["boxes"])
    return [{"file_name": str(path), "bbox": box, "score": score,
             "category_id": category_ids[label - 1] if category_ids else label,
             "category_name": detector.label_name(label), "level": level}
            for box, score, label, level in zip(xyxy_to_xywh(det["boxes"]).tolist(), det["scores"].tolist(),
                                                det["labels"].tolist(), levels, strict=True)]
