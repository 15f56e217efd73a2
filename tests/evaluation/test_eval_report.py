"""What ``fpn eval`` shows besides the headline numbers: AP per class, the confusion matrix, the
precision-recall curves and the worst images, each checked against pycocotools or hand counts."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.cocoeval import COCOeval

from fpn.evaluation.coco import as_coco
from fpn.evaluation.confusion import confusion_of
from fpn.evaluation.evaluators import BoxEvaluator
from fpn.evaluation.per_class import PER_CLASS_AP

pytest.importorskip("matplotlib")

# Three classes on 200 x 200 images; boxes xywh with small (< 32²), medium and large areas.
CATEGORIES = [{"id": 7, "name": "circle"}, {"id": 8, "name": "square"}, {"id": 9, "name": "triangle"}]
GT = [  # image_id, category_id, bbox
    (1, 7, [10, 10, 20, 20]), (1, 7, [100, 100, 60, 60]), (1, 8, [50, 10, 40, 40]),
    (2, 8, [10, 100, 120, 90]), (2, 8, [150, 20, 25, 25]), (2, 7, [40, 40, 50, 50]),
    (3, 8, [0, 0, 15, 15]), (3, 7, [120, 120, 70, 70]),
]
LABEL_TO_CATEGORY = {1: 7, 2: 8, 3: 9}
DETECTIONS = {  # image_id -> (xywh, score, label); circles all right and ranked first: a perfect class
    1: [([10, 10, 20, 20], 0.95, 1), ([101, 99, 60, 60], 0.9, 1), ([52, 12, 40, 40], 0.6, 2),
        ([150, 150, 30, 30], 0.7, 2), ([0, 100, 30, 30], 0.4, 3)],
    2: [([12, 100, 118, 90], 0.8, 2), ([40, 42, 50, 48], 0.93, 1), ([60, 60, 40, 40], 0.55, 2)],
    3: [([121, 119, 70, 70], 0.91, 1), ([0, 0, 15, 15], 0.3, 2), ([100, 0, 30, 30], 0.65, 3)],
}


def ground_truth() -> dict:
    return {"images": [{"id": i, "width": 200, "height": 200, "file_name": f"{i}.png"} for i in (1, 2, 3)],
            "annotations": [{"id": n + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3],
                             "iscrowd": 0} for n, (i, c, b) in enumerate(GT)],
            "categories": CATEGORIES}


def evaluated() -> BoxEvaluator:
    evaluator = BoxEvaluator(as_coco(ground_truth()), LABEL_TO_CATEGORY)
    for image_id, dets in DETECTIONS.items():
        xywh = torch.tensor([d[0] for d in dets], dtype=torch.float32)
        boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        evaluator.process([image_id], [torch.zeros(3, 200, 200)],
                          [{"boxes": boxes, "scores": torch.tensor([d[1] for d in dets]),
                            "labels": torch.tensor([d[2] for d in dets])}])
    return evaluator


def pycocotools_for_one_class(category_id: int) -> list[float]:
    """pycocotools' own summary of one category, evaluated on its own (params.catIds = [c])."""
    coco = as_coco(ground_truth())
    results = [{"image_id": i, "category_id": LABEL_TO_CATEGORY[label], "bbox": xywh, "score": score}
               for i, dets in DETECTIONS.items() for xywh, score, label in dets]
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes(results), "bbox")
        ev.params.catIds = [category_id]
        ev.params.maxDets = [1, 10, 100]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats[:6]]


def test_per_class_ap_equals_pycocotools_on_each_class_alone():
    result = evaluated().evaluate()
    table = result.per_class["coco"]
    assert list(table) == ["circle", "square", "triangle"]
    for category in CATEGORIES:
        want = pycocotools_for_one_class(category["id"])
        got = table[category["name"]]
        for key, value in zip(PER_CLASS_AP, want, strict=True):
            if value == -1:  # pycocotools' "nothing to measure"
                assert got[key] is None, (category["name"], key)
            else:
                assert got[key] == pytest.approx(value, abs=1e-12), (category["name"], key)
    assert table["circle"]["AP50"] == 1.0 and table["circle"]["objects"] == 4  # perfect at IoU 0.5
    assert table["triangle"]["AP"] is None and table["triangle"]["objects"] == 0
    # printed and saved
    text = result.summary()
    assert "COCO box AP per class" in text and "circle" in text
    saved = result.to_json()
    assert saved["coco_per_class"]["square"]["AP50"] == table["square"]["AP50"]
    json.dumps(saved)  # standard JSON (None, not NaN)


def test_confusion_matrix_against_hand_counts():
    images = [
        {"image_id": 1, "gt_boxes": [[0, 0, 10, 10], [20, 20, 40, 40]], "gt_labels": [1, 2],
         "crowd_boxes": np.zeros((0, 4)),
         "boxes": [[0, 0, 10, 10],      # circle on the circle, 0.9: right
                   [20, 20, 40, 40],    # triangle on the square, 0.8: square taken for a triangle
                   [60, 60, 70, 70],    # circle on nothing, 0.7: background
                   [1, 0, 10, 10],      # circle again on the (taken) circle, 0.6: background
                   [20, 20, 40, 40],    # square on the square, 0.3: below the threshold, not counted
                   [0, 0, 10, 15]],     # circle with IoU 10/15 < ... = 0.667 on the circle, 0.55: taken -> bg
         "scores": [0.9, 0.8, 0.7, 0.6, 0.3, 0.55], "labels": [1, 3, 1, 1, 2, 1]},
        {"image_id": 2, "gt_boxes": [[0, 0, 20, 20], [50, 50, 60, 60]], "gt_labels": [3, 2],
         "crowd_boxes": [[100, 100, 200, 200]],
         "boxes": [[110, 110, 130, 130],  # square inside a crowd region: ignored
                   [50, 50, 60, 70]],     # square with IoU 0.5 exactly on the square: right
         "scores": [0.9, 0.6], "labels": [2, 2]},
    ]
    matrix, errors = confusion_of(images, ["circle", "square", "triangle"], score_thresh=0.5, iou_thresh=0.5)
    want = np.zeros((4, 4), dtype=int)  # rows ground truth, columns detections; index 3 the background
    want[0, 0] = 1  # circle found
    want[1, 2] = 1  # square taken for a triangle
    want[3, 0] = 3  # circles on nothing or on a taken object
    want[2, 3] = 1  # triangle of image 2 missed
    want[1, 1] = 1  # square of image 2 found
    np.testing.assert_array_equal(matrix.counts, want)
    assert [(e.image_id, e.false_positives, e.misses) for e in errors] == [(1, 4, 1), (2, 0, 1)]
    assert matrix.to_json()["labels"] == ["circle", "square", "triangle", "background"]


def _near(picture: np.ndarray, xy: tuple[int, int], colour, tolerance: int = 40, reach: int = 2) -> bool:
    """Whether a pixel within ``reach`` of (column, row) has ``colour`` (RGB 0-255) within ``tolerance``."""
    x, y = xy
    patch = picture[y - reach:y + reach + 1, x - reach:x + reach + 1, :3].astype(int)
    return bool((np.abs(patch - np.array(colour)).max(axis=2) <= tolerance).any())


def test_pr_curves_png_draws_the_perfect_class_at_precision_one(tmp_path):
    from fpn.evaluation.plots import plot_pr_curves
    from fpn.visualize import colour_of

    result = evaluated().evaluate()
    assert result.curves.class_names == ["circle", "square", "triangle"]
    # the array is pycocotools' own: the circle's precision at IoU 0.5 is 1 at every recall point
    assert (result.curves.precision[0, :, 0] == 1).all()
    panels = plot_pr_curves(result.curves, tmp_path / "pr_curves.png")
    picture = np.asarray(Image.open(tmp_path / "pr_curves.png").convert("RGB"))
    circle, square = colour_of(1), colour_of(2)
    # IoU 0.5: the circle's line at precision 1 across recall (from 0.3 on, where no other line is at 1)
    assert all(_near(picture, panels["iou50"].pixel(r, 1.0), circle) for r in np.linspace(0.3, 0.95, 12))
    assert not any(_near(picture, panels["iou50"].pixel(r, 1.0), square, reach=1) for r in (0.8, 0.9))
    # IoU .5:.95: the circle's line where pycocotools' precision, averaged over the IoUs, puts it
    mean = result.curves.precision[:, :, 0].mean(axis=0)
    for r in np.linspace(0.3, 0.95, 12):
        y = mean[int(np.searchsorted(result.curves.recall, r))]
        assert _near(picture, panels["iou50_95"].pixel(r, y), circle), (r, y)


def test_confusion_matrix_png_colours_the_cells_that_hold_objects(tmp_path):
    from fpn.evaluation.plots import plot_confusion_matrix

    result = evaluated().evaluate()
    counts = result.confusion.counts
    # by hand from DETECTIONS at score >= 0.5: 4 circles found; 2 squares found; squares on nothing
    # (image 1's 0.7, image 2's 0.55); image 3's triangle on nothing; image 2's small square and
    # image 3's (found at 0.3 only) missed
    assert counts[0, 0] == 4 and counts[1, 1] == 2 and counts[3, 1] == 2 and counts[3, 2] == 1
    assert counts[1, 3] == 2 and counts.sum() == 4 + 2 + 2 + 1 + 2
    panels = plot_confusion_matrix(result.confusion, tmp_path / "confusion_matrix.png")
    picture = np.asarray(Image.open(tmp_path / "confusion_matrix.png").convert("RGB")).astype(int)
    matrix = panels["matrix"]
    for i in range(4):
        for j in range(4):
            x, y = matrix.pixel(j - 0.3, i - 0.3)  # off the centre, where the count is written
            r, g, b = picture[y, x]
            if counts[i, j]:
                assert b - r > 30, (i, j, (r, g, b))  # a shade of blue
            else:
                assert min(r, g, b) > 240, (i, j, (r, g, b))  # white


@pytest.mark.slow
def test_fpn_eval_prints_per_class_ap_and_writes_the_pictures(tmp_path, tiny_synth, capsys):
    from fpn.cli import main
    from fpn.data.synthetic import CLASSES
    from fpn.visualize import colour_of
    from tests.conftest import data_overrides, make_untrained_run

    classes = [f"model.roi_heads.num_classes={len(CLASSES)}", f"model.class_names=[{', '.join(CLASSES)}]",
               f"model.category_ids={list(range(1, len(CLASSES) + 1))}"]
    run = make_untrained_run(tmp_path / "run", extra=classes)
    out = tmp_path / "eval"
    assert main(["eval", str(run), "--output", str(out), *data_overrides(tiny_synth)]) == 0
    printed = capsys.readouterr().out
    assert "COCO box AP per class" in printed and all(name in printed for name in CLASSES)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["coco_per_class"]) == set(CLASSES)
    truth = json.loads((tiny_synth / "val" / "annotations.json").read_text())
    counts = np.array(metrics["confusion_matrix"]["counts"])
    assert counts[:-1].sum() == len(truth["annotations"])  # every object lands in its row once
    for name in ("pr_curves.png", "confusion_matrix.png"):
        assert Image.open(out / name).size[0] > 300
    worst = sorted((out / "worst").glob("*.png"))
    assert worst, "an untrained model gets images wrong"
    # the right half is the ground truth: the outline of each object in its class's colour
    first = worst[0]
    stem = first.stem.split("_", 1)[1]
    image_id = next(i["id"] for i in truth["images"] if i["file_name"].rsplit(".", 1)[0].endswith(stem))
    picture = np.asarray(Image.open(first).convert("RGB")).astype(int)
    width = (picture.shape[1] - 8) // 2
    scale = width // 96  # small images are enlarged (by a whole factor) before drawing
    assert width == 96 * scale and scale >= 2
    band = picture.shape[0] - scale * next(i["height"] for i in truth["images"] if i["id"] == image_id)
    for ann in (a for a in truth["annotations"] if a["image_id"] == image_id):
        x, y, w, h = ann["bbox"]
        column, row = width + 8 + round(scale * x) + 1, band + round(scale * (y + h / 2))  # its left edge
        assert _near(picture, (column, row), colour_of(ann["category_id"]), tolerance=10), ann
