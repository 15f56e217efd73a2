"""Pascal VOC's own metric (fpn.evaluation.voc) against AP values computed by hand.

The reference is the arithmetic in the comments: the devkit's rules (VOCevaldet.m, VOCap.m) applied
by hand to a small case with a difficult object, a duplicate detection, a miss and a class that
has no positives.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from fpn.data.voc import VOCDetection
from fpn.evaluation.voc import ap_11_point, ap_area, format_voc_table, voc_map

CLASSES = ["cat", "dog", "bird"]
CAT, DOG, BIRD = 1, 2, 3

# image id -> [(x1, y1, x2, y2, label, difficult)], fpn's 0-based edges (width = x2 - x1)
GROUND_TRUTH = {
    1: [(0, 0, 10, 10, CAT, False),  # A
        (20, 0, 30, 10, CAT, True),  # B, difficult
        (50, 50, 90, 90, DOG, False)],  # F
    2: [(0, 0, 10, 10, CAT, False),  # C
        (40, 40, 60, 60, CAT, False),  # D
        (70, 0, 80, 10, BIRD, True)],  # the only bird, difficult
    3: [(0, 0, 20, 20, CAT, False),  # E
        (60, 0, 80, 20, CAT, False),  # H, never found
        (10, 30, 40, 60, DOG, True)],  # G, difficult
}

# (image id, score, x1, y1, x2, y2, label)
DETECTIONS = [
    (1, 0.95, 0, 0, 10, 10, CAT),  # A, IoU 1: TP
    (1, 0.90, 20, 0, 30, 10, CAT),  # B, difficult: ignored
    (1, 0.85, 0, 0, 10, 9, CAT),  # A again (IoU 90/100): a duplicate, FP
    (2, 0.80, 0, 0, 10, 10, CAT),  # C: TP
    (3, 0.70, 50, 50, 60, 60, CAT),  # overlaps nothing: FP
    (2, 0.60, 40, 40, 60, 58, CAT),  # D, IoU 360/400 = 0.9: TP
    (3, 0.55, 1, 1, 20, 20, CAT),  # E, IoU 361/400: TP
    (3, 0.50, 60, 0, 80, 8, CAT),  # H, IoU 160/400 = 0.4 < 0.5: FP
    (2, 0.90, 50, 50, 90, 90, DOG),  # image 2 has no dog: FP
    (3, 0.80, 10, 30, 40, 60, DOG),  # G, difficult: ignored
    (1, 0.40, 52, 50, 92, 90, DOG),  # F, IoU 38*40 / (1600 + 1600 - 1520) = 0.905: TP
    (2, 0.70, 70, 0, 80, 10, BIRD),  # the difficult bird: ignored
]
HITS_ON_DIFFICULT = {1, 9, 11}  # indices of the rows above that hit B, G and the bird

# cat: 5 positives (A, C, D, E, H; B is difficult). Ranked, the ignored detection left out:
#   TP FP TP FP TP TP FP -> cumulative TP 1 1 2 2 3 4 4, FP 0 1 1 2 2 2 3
#   precision 1, 1/2, 2/3, 2/4, 3/5, 4/6, 4/7;  recall 1/5, 1/5, 2/5, 2/5, 3/5, 4/5, 4/5
#   11-point: t = 0, .1, .2 (recall >= 1/5 everywhere): best precision 1;
#             t = .3, .4 (recall >= 2/5): max(2/3, 1/2, 3/5, 2/3, 4/7) = 2/3;
#             t = .5, .6 (recall >= 3/5): max(3/5, 2/3, 4/7) = 2/3;
#             t = .7, .8 (recall >= 4/5): max(2/3, 4/7) = 2/3;  t = .9, 1: never reached -> 0.
#             AP07 = (3 * 1 + 6 * 2/3 + 2 * 0) / 11 = 7/11
#   area: the envelope (running max from the right) is 1 at recall 1/5 and 2/3 (= 4/6, from the
#         later point) at recall 2/5, 3/5, 4/5; the recall steps are 1/5 each:
#             AP12 = 1/5 * 1 + 1/5 * 2/3 + 1/5 * 2/3 + 1/5 * 2/3 + 1/5 * 0 = 0.6
#         (without the envelope it would be 1/5 * (1 + 2/3 + 3/5 + 4/6) = 0.5867)
CAT_AP07, CAT_AP12 = 7 / 11, 0.6
# dog: 1 positive (F; G is difficult). Ranked: FP, (ignored), TP -> precision 0, 1/2; recall 0, 1.
#   11-point: every t (0 .. 1) is reached only at recall 1, precision 1/2 -> AP07 = 0.5
#   area: recall steps 0 -> 1 once, at envelope 1/2 -> AP12 = 0.5
DOG_AP07 = DOG_AP12 = 0.5
# bird: no non-difficult object, so no recall (0 / 0): NaN, and left out of the means.


def _ground_truth(drop_flags=False):
    return [{"image_id": image_id,
             "boxes": torch.tensor([o[:4] for o in objects], dtype=torch.float32),
             "labels": torch.tensor([o[4] for o in objects]),
             "difficult": torch.tensor([o[5] and not drop_flags for o in objects])}
            for image_id, objects in GROUND_TRUTH.items()]


def _detections(rows=DETECTIONS):
    out = []
    for image_id in GROUND_TRUTH:
        mine = [r for r in rows if r[0] == image_id]
        out.append({"image_id": image_id, "scores": torch.tensor([r[1] for r in mine]),
                    "boxes": torch.tensor([r[2:6] for r in mine], dtype=torch.float32).reshape(-1, 4),
                    "labels": torch.tensor([r[6] for r in mine], dtype=torch.int64)})
    return out


def test_hand_computed_case():
    metrics = voc_map(_detections(), _ground_truth(), CLASSES)
    assert metrics["AP_voc07"]["cat"] == pytest.approx(CAT_AP07)
    assert metrics["AP_voc12"]["cat"] == pytest.approx(CAT_AP12)
    assert metrics["AP_voc07"]["dog"] == pytest.approx(DOG_AP07)
    assert metrics["AP_voc12"]["dog"] == pytest.approx(DOG_AP12)
    assert math.isnan(metrics["AP_voc07"]["bird"]) and math.isnan(metrics["AP_voc12"]["bird"])
    assert metrics["mAP_voc07"] == pytest.approx((CAT_AP07 + DOG_AP07) / 2)  # 0.5682
    assert metrics["mAP_voc12"] == pytest.approx((CAT_AP12 + DOG_AP12) / 2)  # 0.55
    assert metrics["num_positives"] == {"cat": 5, "dog": 1, "bird": 0}
    assert metrics["num_detections"] == {"cat": 8, "dog": 3, "bird": 1}
    assert metrics["num_images"] == 3


def test_inputs_as_lists_or_numpy_give_the_same():
    as_lists = [{k: (v.tolist() if torch.is_tensor(v) else v) for k, v in d.items()} for d in _detections()]
    as_numpy = [{k: (v.numpy() if torch.is_tensor(v) else v) for k, v in g.items()} for g in _ground_truth()]
    metrics = voc_map(as_lists, as_numpy, CLASSES)
    assert metrics["AP_voc12"]["cat"] == pytest.approx(CAT_AP12)


def test_detections_on_difficult_objects_change_nothing():
    kept = [r for i, r in enumerate(DETECTIONS) if i not in HITS_ON_DIFFICULT]
    without = voc_map(_detections(kept), _ground_truth(), CLASSES)
    with_them = voc_map(_detections(), _ground_truth(), CLASSES)
    for key in ("AP_voc07", "AP_voc12"):
        for name in ("cat", "dog"):
            assert without[key][name] == pytest.approx(with_them[key][name]), (key, name)
    # ... and the flags matter: counted as ordinary objects, B and G would be found (cat 6
    # positives, dog 2), so the APs move.
    plain = voc_map(_detections(), _ground_truth(drop_flags=True), CLASSES)
    assert plain["num_positives"] == {"cat": 6, "dog": 2, "bird": 1}
    assert plain["AP_voc12"]["cat"] != pytest.approx(CAT_AP12)


def test_perfect_detections_score_one_even_with_a_hit_on_a_difficult_object():
    rows = [(image_id, 0.9 - 0.1 * k, *o[:5]) for image_id, objects in GROUND_TRUTH.items()
            for k, o in enumerate(objects) if not o[5]]
    rows.append((3, 0.99, 10, 30, 40, 60, DOG))  # the best-scored detection hits difficult G
    metrics = voc_map(_detections(rows), _ground_truth(), CLASSES)
    assert metrics["mAP_voc07"] == pytest.approx(1.0) and metrics["mAP_voc12"] == pytest.approx(1.0)
    assert metrics["AP_voc12"]["cat"] == metrics["AP_voc12"]["dog"] == pytest.approx(1.0)


def test_a_duplicate_goes_to_its_best_object_even_if_taken():
    # Two overlapping cats X = [0, 0, 10, 10] and Y = [0, 0, 10, 14]. The second detection
    # [0, 0, 10, 11] overlaps X by 100/110 = 0.91 and Y by 110/140 = 0.79: the devkit gives it
    # to X, already taken -> FP (it is not passed on to Y). Ranked TP, FP of 2 positives:
    # precision 1, 1/2; recall 1/2, 1/2 -> area AP = 1/2 * 1 = 0.5; 11-point: t = 0 .. 0.5
    # reached at precision 1 -> 6/11.
    gt = [{"image_id": 7, "boxes": [[0, 0, 10, 10], [0, 0, 10, 14]], "labels": [CAT, CAT]}]
    dets = [{"image_id": 7, "boxes": [[0, 0, 10, 10], [0, 0, 10, 11]], "scores": [0.9, 0.8],
             "labels": [CAT, CAT]}]
    metrics = voc_map(dets, gt, CLASSES)
    assert metrics["AP_voc12"]["cat"] == pytest.approx(0.5)
    assert metrics["AP_voc07"]["cat"] == pytest.approx(6 / 11)


def test_iou_of_exactly_half_counts_and_both_box_conventions_agree():
    # In fpn's edges, gt [0, 0, 10, 10] (area 100) and a detection [0, 0, 10, 5] (area 50,
    # inside it) have IoU 50/100 = 0.5: the devkit's ">= 0.5" makes it a TP.
    gt = [{"image_id": 1, "boxes": [[0, 0, 10, 10]], "labels": [CAT]}]
    dets = [{"image_id": 1, "boxes": [[0, 0, 10, 5]], "scores": [1.0], "labels": [CAT]}]
    assert voc_map(dets, gt, CLASSES)["AP_voc12"]["cat"] == 1.0
    # The same boxes as the XML / devkit write them (1-based inclusive: xmin, ymin + 1) with the
    # devkit's "+ 1" widths: identical numbers. Without the "+ 1" the IoU would be
    # (10 - 1) * (5 - 1) / ((10 - 1) * (10 - 1)) = 36/81 < 0.5, a miss.
    gt_1 = [{"image_id": 1, "boxes": [[1, 1, 10, 10]], "labels": [CAT]}]
    dets_1 = [{"image_id": 1, "boxes": [[1, 1, 10, 5]], "scores": [1.0], "labels": [CAT]}]
    assert voc_map(dets_1, gt_1, CLASSES, inclusive=True)["AP_voc12"]["cat"] == 1.0
    assert voc_map(dets_1, gt_1, CLASSES)["AP_voc12"]["cat"] == 0.0


def test_recall_exactly_on_an_11_point_threshold():
    # 10 positives, the first 3 (or 2, 4, 6) found with precision 1 and nothing after.
    # A recall of exactly 2/10, 4/10 or 6/10 reaches t = 0.2, 0.4, 0.6. The devkit's t = 0.3 is
    # MATLAB's 3 * 0.1 = 0.30000000000000004, so a recall of exactly 3/10 does not reach it:
    #   3 found: t = 0, .1, .2 at precision 1 -> 3/11 (not 4/11)
    #   2 found: t = 0, .1, .2 -> 3/11;  4 found: t = 0 .. .4 -> 5/11;  6 found: t = 0 .. .6 -> 7/11
    for found, expected in [(2, 3 / 11), (3, 3 / 11), (4, 5 / 11), (6, 7 / 11)]:
        tp, fp = np.ones(found), np.zeros(found)
        assert ap_11_point(tp, fp, 10) == pytest.approx(expected), found
        assert ap_area(tp, fp, 10) == pytest.approx(found / 10), found
    # 31 of 100 is past 0.3 in any arithmetic: t = 0 .. .3 at precision 1 -> 4/11
    assert ap_11_point(np.ones(31), np.zeros(31), 100) == pytest.approx(4 / 11)


def matlab_colon(start: float, step: float, stop: float) -> list[float]:
    """MATLAB's ``start:step:stop`` for a range of exactly n = (stop - start) / step steps, as we
    understand MATLAB builds it: element k (0-based) is ``start + k*step`` in the first half
    (k < n/2) and ``stop - (n - k)*step`` in the second, so that both ends are exact.

    This is the assumption behind ``ap_11_point``'s thresholds. Two values published from MATLAB
    pin it down (``test_the_matlab_range_model_reproduces_published_values`` checks both):
    - ``a = 0:.1:1; a(4) - .3`` prints ``5.5511e-17`` (MATLAB Answers 7335, 2011): the fourth
      element is 3 * 0.1 = 0.30000000000000004, from the start (from the end, 1 - 7 * 0.1, it
      would be 0.29999999999999993);
    - ``0.5:0.1:0.8`` prints ``7.000000000000001e-01`` as its third element (MATLAB R2012b, quoted
      on MATLAB Answers as "Bug in matlab R2012b version"): 0.8 - 0.1, from the end (from the start,
      0.5 + 2 * 0.1, it would be exactly 0.7).
    """
    n = round((stop - start) / step)
    return [start + k * step if k < n / 2 else stop - (n - k) * step for k in range(n + 1)]


def devkit_11_point(tp: np.ndarray, fp: np.ndarray, num_positives: int, thresholds: list[float]) -> float:
    """VOCevaldet.m's 11-point loop, literally, in doubles:
    ``for t=0:0.1:1, p=max(prec(rec>=t)); if isempty(p), p=0; end; ap=ap+p/11; end``."""
    tp_cum, fp_cum = np.cumsum(tp), np.cumsum(fp)
    recall, precision = tp_cum / num_positives, tp_cum / (tp_cum + fp_cum)
    return sum((precision[recall >= t].max() if (recall >= t).any() else 0.0) / 11 for t in thresholds)


def test_the_matlab_range_model_reproduces_published_values():
    assert matlab_colon(0.0, 0.1, 1.0)[3] - 0.3 == pytest.approx(5.5511e-17, rel=1e-4)
    assert repr(matlab_colon(0.5, 0.1, 0.8)[2]) == "0.7000000000000001"
    # so 0:0.1:1 is the doubles nearest k/10 except the fourth (ap_11_point's docstring says so) ...
    grid = matlab_colon(0.0, 0.1, 1.0)
    assert [t == k / 10 for k, t in enumerate(grid)] == [True] * 3 + [False] + [True] * 7
    # ... and differs from the Python ports' np.arange(0, 1.1, 0.1) at 0.6 and 0.7 as well
    differ = [k for k, (a, b) in enumerate(zip(grid, np.arange(0, 1.1, 0.1), strict=True)) if a != b]
    assert differ == [6, 7]


def test_11_point_ap_equals_the_devkit_loop_at_every_recall():
    """Every recall j / P for P = 1..40, 50, 60, 100 positives, exact grid hits included, on ranked lists
    whose precision varies: ap_11_point's integer comparisons give the devkit's float ones."""
    grid = matlab_colon(0.0, 0.1, 1.0)
    checked_on_grid = 0
    for positives in [*range(1, 41), 50, 60, 100]:
        for found in range(positives + 1):
            for pattern in ("hits first", "interleaved"):
                tp = np.r_[np.ones(found), np.zeros(3)]
                if pattern == "interleaved":  # a miss after every second hit
                    tp = np.array([x for k in range(found) for x in ((1.0, 0.0) if k % 2 else (1.0,))])
                    tp = np.r_[tp, 0.0]
                fp = 1.0 - tp
                want = devkit_11_point(tp, fp, positives, grid)
                got = ap_11_point(tp, fp, positives)
                assert got == pytest.approx(want, abs=1e-12), (positives, found, pattern)
                checked_on_grid += any(10 * found == k * positives for k in range(11))
    assert checked_on_grid > 100  # recalls exactly on a threshold, where the grid matters, were among them


def test_equal_scores_keep_the_input_order():
    # 20 detections of score 0.5: the one on the only cat first, 19 on an empty image after. With
    # the devkit's stable sort the TP ranks first: precision 1 at recall 1 -> AP 1. Listed the
    # other way round, the TP ranks last: precision 1/20 at recall 1 -> AP 0.05.
    gt = [{"image_id": 1, "boxes": [[0, 0, 10, 10]], "labels": [CAT]},
          {"image_id": 2, "boxes": [], "labels": []}]
    hit = {"image_id": 1, "boxes": [[0, 0, 10, 10]], "scores": [0.5], "labels": [CAT]}
    misses = {"image_id": 2, "boxes": [[0, 0, 10, 10]] * 19, "scores": [0.5] * 19, "labels": [CAT] * 19}
    assert voc_map([hit, misses], gt, CLASSES)["AP_voc12"]["cat"] == pytest.approx(1.0)
    assert voc_map([misses, hit], gt, CLASSES)["AP_voc12"]["cat"] == pytest.approx(0.05)


def test_empty_detections_and_bad_inputs():
    empty = voc_map([], _ground_truth(), CLASSES)
    assert empty["AP_voc12"]["cat"] == 0.0 and empty["mAP_voc07"] == 0.0
    with pytest.raises(ValueError, match="no ground-truth record"):
        voc_map([{"image_id": 99, "boxes": [], "scores": [], "labels": []}], _ground_truth(), CLASSES)
    with pytest.raises(ValueError, match="1..3"):
        voc_map([{"image_id": 1, "boxes": [[0, 0, 1, 1]], "scores": [1.0], "labels": [0]}],
                _ground_truth(), CLASSES)


def test_table_lists_every_class_and_the_means():
    table = format_voc_table(voc_map(_detections(), _ground_truth(), CLASSES))
    lines = table.splitlines()
    assert len(lines) == 1 + len(CLASSES) + 1
    cat = lines[1].split()
    assert cat == ["cat", "63.6", "60.0", "5", "8"]
    assert lines[3].split()[:3] == ["bird", "n/a", "n/a"]
    assert lines[-1].split() == ["mAP", "56.8", "55.0", "6", "12"]


XML = """<annotation><filename>{name}.jpg</filename><size><width>50</width><height>40</height></size>
{objects}</annotation>"""
OBJECT = ("<object><name>{cls}</name><difficult>{difficult}</difficult><bndbox><xmin>{x1}</xmin>"
          "<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")


def _voc_tree(root, images):
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    for name, objects in images.items():
        body = "".join(OBJECT.format(cls=c, difficult=int(d), x1=x1, y1=y1, x2=x2, y2=y2)
                       for c, d, x1, y1, x2, y2 in objects)
        (root / "Annotations" / f"{name}.xml").write_text(XML.format(name=name, objects=body))
        Image.new("RGB", (50, 40)).save(root / "JPEGImages" / f"{name}.jpg")
    (root / "ImageSets/Main/val.txt").write_text("".join(f"{n}\n" for n in images))


@pytest.mark.parametrize("keep_difficult", [False, True])
def test_loader_ground_truth_keeps_difficult_objects(tmp_path, keep_difficult):
    _voc_tree(tmp_path, {"a": [("dog", False, 1, 2, 20, 30), ("cat", True, 5, 5, 9, 9)],
                         "b": [], "c": [("cat", False, 11, 11, 20, 20)]})
    ds = VOCDetection(tmp_path, "val", keep_difficult=keep_difficult)
    gt = ds.ground_truth()
    assert [g["image_id"] for g in gt] == [1, 2, 3]  # the ids __getitem__ gives
    assert [ds[i][1]["image_id"] for i in range(3)] == [1, 2, 3]
    # 1-based inclusive XML -> 0-based edges: xmin, ymin - 1
    torch.testing.assert_close(gt[0]["boxes"], torch.tensor([[0.0, 1.0, 20.0, 30.0], [4.0, 4.0, 9.0, 9.0]]))
    assert gt[0]["labels"].tolist() == [12, 8]  # dog, cat in VOC_CLASSES
    assert gt[0]["difficult"].tolist() == [False, True]
    assert gt[1]["boxes"].shape == (0, 4) and gt[1]["difficult"].tolist() == []
    assert gt[2]["difficult"].tolist() == [False]
    # The loader's boxes and the metric agree on the devkit's IoU: a detection of the dog as the
    # devkit would write it, [1, 2, 20, 30] 1-based, is [0, 1, 20, 30] here, an exact hit; the
    # difficult cat's detection is ignored, so cat AP is that of image c alone.
    dets = [{"image_id": 1, "boxes": [[0, 1, 20, 30], [4, 4, 9, 9]], "scores": [0.9, 0.8], "labels": [12, 8]},
            {"image_id": 3, "boxes": [[10, 10, 20, 20]], "scores": [0.7], "labels": [8]}]
    metrics = voc_map(dets, gt, ds.class_names)
    assert metrics["AP_voc12"]["dog"] == 1.0 and metrics["AP_voc12"]["cat"] == 1.0
    assert metrics["num_positives"]["cat"] == 1 and math.isnan(metrics["AP_voc12"]["person"])
    assert metrics["mAP_voc12"] == 1.0
