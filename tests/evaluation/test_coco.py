"""Evaluation against pycocotools' own meaning of AP and AR, on hand-built ground truth."""

from __future__ import annotations

import pytest
import torch

from fpn.evaluation.coco import coco_box_ap, detections_to_coco_results, proposal_ar
from fpn.evaluation.inference import evaluate_detector
from fpn.evaluation.result import format_table, save_metrics

# Non-contiguous category ids; objects in all three COCO size bins; one crowd region.
CATEGORY_IDS = {1: 3, 2: 17, 3: 90}
GT_BOXES = {  # image id -> [(x1, y1, x2, y2, label)]
    1: [(10, 10, 30, 30, 1), (50, 50, 110, 110, 2), (200, 10, 400, 210, 3)],  # 20², 60², 200²
    2: [(0, 0, 100, 100, 2), (120, 120, 140, 136, 1)],  # 100² (large), 20 x 16
}


def _gt_dict():
    images = [{"id": i, "width": 500, "height": 400, "file_name": f"{i}.png"} for i in GT_BOXES]
    annotations = []
    for image_id, boxes in GT_BOXES.items():
        for x1, y1, x2, y2, label in boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": CATEGORY_IDS[label], "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    annotations.append({"id": 99, "image_id": 2, "category_id": 17, "bbox": [300, 200, 100, 100],
                        "area": 10000, "iscrowd": 1})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": c, "name": str(c)} for c in CATEGORY_IDS.values()]}


def _outputs(shift_x=0.0, label_offset=0):
    outputs = []
    for boxes in GT_BOXES.values():
        xyxy = torch.tensor([b[:4] for b in boxes], dtype=torch.float32)
        xyxy[:, [0, 2]] += shift_x
        labels = torch.tensor([(b[4] - 1 + label_offset) % 3 + 1 for b in boxes])
        outputs.append({"boxes": xyxy, "scores": torch.linspace(0.9, 0.5, len(boxes)), "labels": labels})
    return outputs


def test_ground_truth_as_detections_scores_one():
    results = detections_to_coco_results(_outputs(), list(GT_BOXES), CATEGORY_IDS)
    assert {r["category_id"] for r in results} == {3, 17, 90}  # ids survive the round trip
    metrics = coco_box_ap(_gt_dict(), results)
    for key in ("AP", "AP50", "AP75", "AP_s", "AP_m", "AP_l"):
        assert metrics[key] == pytest.approx(1.0), key


def test_known_shift_gives_known_ap():
    # Shift every box right by a fifth of its width... per box: IoU = (w - d) / (w + d).
    # With d = w/6: IoU = (5/6) / (7/6) = 0.714: passes thresholds .50 .. .70 (5 of 10) -> AP = 0.5.
    outputs = []
    for boxes in GT_BOXES.values():
        xyxy = torch.tensor([b[:4] for b in boxes], dtype=torch.float32)
        xyxy[:, [0, 2]] += ((xyxy[:, 2] - xyxy[:, 0]) / 6)[:, None]
        outputs.append({"boxes": xyxy, "scores": torch.ones(len(boxes)),
                        "labels": torch.tensor([b[4] for b in boxes])})
    metrics = coco_box_ap(_gt_dict(), detections_to_coco_results(outputs, list(GT_BOXES), CATEGORY_IDS))
    assert metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP75"] == pytest.approx(0.0)
    assert metrics["AP"] == pytest.approx(0.5)


def test_wrong_labels_get_no_credit_and_empty_results_are_zero():
    wrong = detections_to_coco_results(_outputs(label_offset=1), list(GT_BOXES), CATEGORY_IDS)
    assert coco_box_ap(_gt_dict(), wrong)["AP50"] == pytest.approx(0.0)
    assert coco_box_ap(_gt_dict(), []) == dict.fromkeys(["AP", "AP50", "AP75", "AP_s", "AP_m", "AP_l"], 0.0)


def test_proposal_recall():
    gt = _gt_dict()
    proposals = [torch.tensor([b[:4] for b in boxes], dtype=torch.float32) for boxes in GT_BOXES.values()]
    ar = proposal_ar(gt, proposals, list(GT_BOXES))
    assert ar["AR@100"] == pytest.approx(1.0) and ar["AR@1000"] == pytest.approx(1.0)
    assert ar["AR_s@1000"] == ar["AR_m@1000"] == ar["AR_l@1000"] == pytest.approx(1.0)
    # keep the first two objects of image 1 (20², 60²) and the first of image 2 (100²)
    partial = [proposals[0][:2], proposals[1][:1]]
    ar = proposal_ar(gt, partial, list(GT_BOXES))
    assert ar["AR@100"] == pytest.approx(3 / 5)
    assert ar["AR_s@1000"] == pytest.approx(1 / 2)  # 20² found, 20 x 16 missed
    assert ar["AR_m@1000"] == pytest.approx(1.0)
    assert ar["AR_l@1000"] == pytest.approx(1 / 2)  # 100² found, 200² missed
    # 100 decoys ahead of the true box: found at 1000 proposals, not at 100
    decoys = torch.tensor([[450.0, 350.0, 460.0, 360.0]]).repeat(100, 1)
    late = [torch.cat([decoys, p]) for p in proposals]
    ar = proposal_ar(gt, late, list(GT_BOXES))
    assert ar["AR@100"] == pytest.approx(0.0) and ar["AR@1000"] == pytest.approx(1.0)


def test_evaluate_detector_loop_end_to_end():
    """A 'model' that returns the ground truth scores 1.0 through the real evaluation loop."""
    gt_outputs = dict(zip(GT_BOXES, _outputs(), strict=True))

    def oracle(images, return_proposals=False):
        outs = []
        for image in images:
            out = dict(gt_outputs[int(image[0, 0, 0].item())])
            out["proposals"], out["objectness"] = out["boxes"], out["scores"]
            outs.append(out)
        return outs

    loader = [([torch.full((3, 4, 4), float(i)) for i in GT_BOXES], [{"image_id": i} for i in GT_BOXES])]
    result = evaluate_detector(oracle, loader, _gt_dict(), CATEGORY_IDS, progress=False)
    assert result.metrics["AP"] == pytest.approx(1.0) and result.metrics["AR@100"] == pytest.approx(1.0)
    assert result.num_images == 2 and len(result.coco_results) == 5
    assert all(isinstance(v, float) for v in result.metrics.values())  # numbers only, by name
    table = format_table(result.metrics)
    assert "AP50" in table and "100.0" in table


def test_saved_results_are_cocos_format_and_score_the_same(tmp_path):
    """coco_results.json holds only COCO's result keys, and pycocotools scores it as we did."""
    import contextlib
    import io
    import json

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    outputs = dict(zip(GT_BOXES, _outputs(shift_x=4.0), strict=True))  # imperfect: AP below 1

    def model(images, return_proposals=False):
        outs = [dict(outputs[int(image[0, 0, 0].item())]) for image in images]
        for out in outs:
            out["proposals"], out["objectness"] = out["boxes"], out["scores"]
        return outs

    loader = [([torch.full((3, 4, 4), float(i)) for i in GT_BOXES], [{"image_id": i} for i in GT_BOXES])]
    result = evaluate_detector(model, loader, _gt_dict(), CATEGORY_IDS, progress=False)
    metrics = result.metrics
    assert 0.1 < metrics["AP"] < 0.95
    standard = {"image_id", "category_id", "bbox", "score"}
    assert all(set(r) == standard for r in result.coco_results)  # evaluation did not add keys
    save_metrics(result, tmp_path)
    saved = json.loads((tmp_path / "coco_results.json").read_text())
    assert len(saved) == 5 and all(set(r) == standard for r in saved)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = _gt_dict()
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(str(tmp_path / "coco_results.json")), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(metrics["AP"])
    assert json.loads((tmp_path / "metrics.json").read_text())["AP"] == pytest.approx(metrics["AP"])


def test_evaluators_are_composed_by_a_list_and_ask_the_model_for_what_they_need():
    """Each evaluator adds its own numbers; one that finds nothing to measure adds none; the model is
    called with the keyword arguments the evaluators ask for, and a user's evaluator plugs in."""
    from fpn.evaluation.coco import as_coco
    from fpn.evaluation.evaluators import BoxEvaluator, Evaluator, ProposalEvaluator
    from fpn.evaluation.inference import inference_on_dataset
    from fpn.evaluation.result import EvalResult

    gt_outputs = dict(zip(GT_BOXES, _outputs(), strict=True))
    calls = []

    def model(images, **kwargs):
        calls.append(kwargs)
        outs = [dict(gt_outputs[int(image[0, 0, 0].item())]) for image in images]
        if kwargs.get("return_proposals"):
            for out in outs:
                out["proposals"], out["objectness"] = out["boxes"], out["scores"]
        return outs

    class CountBoxes(Evaluator):  # a family of one's own: the mean number of boxes per image
        def reset(self):
            self.counts = []

        def process(self, image_ids, images, outputs):
            self.counts += [len(out["boxes"]) for out in outputs]

        def evaluate(self):
            return EvalResult(metrics={"boxes_per_image": sum(self.counts) / len(self.counts)})

    loader = [([torch.full((3, 4, 4), float(i)) for i in GT_BOXES], [{"image_id": i} for i in GT_BOXES])]
    coco = as_coco(_gt_dict())
    boxes_only = [BoxEvaluator(coco, CATEGORY_IDS), ProposalEvaluator(coco, request=False), CountBoxes()]
    result = inference_on_dataset(model, loader, boxes_only, progress=False)
    assert calls == [{}]  # nobody asked for proposals
    assert set(result.metrics) == {"AP", "AP50", "AP75", "AP_s", "AP_m", "AP_l", "boxes_per_image",
                                   "seconds_per_image"}
    assert result.metrics["boxes_per_image"] == 2.5 and result.metrics["AP"] == pytest.approx(1.0)
    with_proposals = [BoxEvaluator(coco, CATEGORY_IDS), ProposalEvaluator(coco)]
    result = inference_on_dataset(model, loader, with_proposals, progress=False)
    assert calls[-1] == {"return_proposals": True} and result.metrics["AR@100"] == pytest.approx(1.0)
    assert result.to_json()["num_images"] == 2 and "AP" in result.summary()

    def rpn_alone(images, **kwargs):  # proposals only: the box evaluator has nothing to score
        return [{"proposals": gt_outputs[int(image[0, 0, 0].item())]["boxes"],
                 "objectness": gt_outputs[int(image[0, 0, 0].item())]["scores"]} for image in images]

    result = inference_on_dataset(rpn_alone, loader, with_proposals, progress=False)
    assert "AP" not in result.metrics and result.metrics["AR@100"] == pytest.approx(1.0)
    assert result.coco_results == []
