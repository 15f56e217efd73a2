"""The pictures ``fpn eval`` writes beside ``metrics.json``: where a detector goes wrong.

- ``pr_curves.png``: precision against recall per class (pycocotools' curves, ``fpn.evaluation.plots``);
- ``confusion_matrix.png``: which class each object was taken for, background included
  (``fpn.evaluation.confusion``);
- ``worst/``: the images with the most false positives plus misses, each drawn as the detections
  (those the confusion matrix counts) beside the ground truth.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from fpn.box_format import xywh_to_xyxy
from fpn.data.dataset import AnnotatedImage, DetectionDataset
from fpn.data.images import read_image
from fpn.errors import DatasetError
from fpn.evaluation.plots import plot_confusion_matrix, plot_pr_curves
from fpn.evaluation.result import EvalResult
from fpn.visualize import draw_detections, label_font, to_pil

log = logging.getLogger(__name__)

NUM_WORST = 8
GAP = 8  # pixels between the two halves of a picture
MIN_SIDE = 320  # smaller images are enlarged by a whole factor (nearest pixel) before drawing


def write_eval_pictures(result: EvalResult, dataset: DetectionDataset, out_dir: Path, *,
                        label_to_category_id: dict[int, int], num_worst: int = NUM_WORST) -> list[str]:
    """The PR curves, the confusion matrix and the ``num_worst`` worst images in ``out_dir``; the
    files written, relative to it (no charts without matplotlib; nothing for a model without boxes)."""
    written = []
    if result.curves is not None and plot_pr_curves(result.curves, out_dir / "pr_curves.png"):
        written.append("pr_curves.png")
    if result.confusion is not None:
        if plot_confusion_matrix(result.confusion, out_dir / "confusion_matrix.png"):
            written.append("confusion_matrix.png")
        written += draw_worst_images(result, dataset, out_dir / "worst", num_images=num_worst,
                                     label_to_category_id=label_to_category_id)
    return written


def draw_worst_images(result: EvalResult, dataset: DetectionDataset, out_dir: Path, *,
                      label_to_category_id: dict[int, int], num_images: int) -> list[str]:
    """The images with the most errors (false positives + misses, ties by image order), drawn as
    ``worst/NN_<image>.png``: the detections scored at least the confusion matrix's threshold on the
    left, the ground truth on the right; images under ``MIN_SIDE`` pixels enlarged first."""
    ranked = sorted((e for e in result.image_errors if e.total), key=lambda e: -e.total)[:num_images]
    if not ranked:
        return []
    by_id = {record.image_id: record for record in dataset.images}
    category_to_label = {cat: label for label, cat in label_to_category_id.items()}
    names = result.confusion.class_names
    thresh = result.confusion.score_thresh
    written = []
    for rank, errors in enumerate(ranked, start=1):
        item = by_id.get(errors.image_id)
        if item is None:
            continue
        try:
            image = to_pil(read_image(item.file, item.recorded_hw))
        except DatasetError as err:
            log.warning("not drawn: %s", err)
            continue
        scale = max(1, math.ceil(MIN_SIDE / min(image.size)))
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
        found, truth = _detections_of(result, errors.image_id, category_to_label), _truth(item)
        found["boxes"], truth["boxes"] = found["boxes"] * scale, truth["boxes"] * scale
        left = draw_detections(image, found, names, thresh)
        right = draw_detections(image, truth, names)
        captions = (f"detections >= {thresh:g}: {errors.false_positives} false positive(s)",
                    f"ground truth: {errors.misses} missed")
        out = out_dir / f"{rank:02d}_{item.file.stem}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        side_by_side(left, right, captions).save(out)
        written.append(str(out.relative_to(out_dir.parent)))
    return written


def _detections_of(result: EvalResult, image_id: int, category_to_label: dict[int, int]) -> dict:
    records = [r for r in result.coco_results if r["image_id"] == image_id]
    boxes = torch.tensor([r["bbox"] for r in records], dtype=torch.float64).reshape(-1, 4)
    return {"boxes": xywh_to_xyxy(boxes), "scores": torch.tensor([r["score"] for r in records]),
            "labels": torch.tensor([category_to_label[r["category_id"]] for r in records], dtype=torch.int64)}


def _truth(item: AnnotatedImage) -> dict:
    """The objects (crowd regions and difficult objects left out, as the confusion matrix counts)."""
    keep = item.objects(with_difficult=False)
    return {"boxes": torch.from_numpy(item.boxes_xyxy[keep]), "labels": torch.from_numpy(item.labels[keep])}


def side_by_side(left: Image.Image, right: Image.Image, captions: tuple[str, str]) -> Image.Image:
    """Two pictures of one size next to each other, ``GAP`` white pixels apart, each under its caption."""
    font = label_font(left.size)
    band = ImageDraw.Draw(left).textbbox((0, 0), "Ag", font=font)[3] + 6
    width, height = left.size
    canvas = Image.new("RGB", (2 * width + GAP, height + band), "white")
    draw = ImageDraw.Draw(canvas)
    for x, picture, caption in ((0, left, captions[0]), (width + GAP, right, captions[1])):
        canvas.paste(picture, (x, band))
        draw.text((x + 2, 2), caption, fill="black", font=font)
    return canvas
