"""The featurized image pyramid at test time (docs/paper.md §7), against the plain detector.

One scale must be the plain detector exactly; several scales are checked against the outputs
of each scale run alone and against what greedy NMS guarantees; the merge itself against boxes
worked out by hand.
"""

from __future__ import annotations

import json

import pytest
import torch
from torchvision.ops import box_iou

from fpn.api import Detector
from fpn.cli import main
from fpn.config.files import load_config
from fpn.errors import ConfigError
from fpn.model.detector import FasterRCNN
from fpn.model.image_pyramid import detect_at_scale, detect_on_image_pyramid, merge_scales
from tests.conftest import TINY_MODEL, data_overrides

TINY = [*TINY_MODEL, "model.roi_heads.num_classes=2", "model.roi_heads.score_thresh=0.0",
        "model.input.max_size=400"]
# The C5 baseline of ablation (b) at the tiny size: one map, all five anchor sizes on it.
TINY_C5 = ["model.neck.kind=single_scale", "model.neck.single_level=c5", "model.rpn.levels=[c5]",
           "model.rpn.anchors.sizes={c5: [8, 16, 32, 64, 128]}", "model.roi_heads.levels=[c5]"]
SCALES = [64, 96, 160]


def _images():
    g = torch.Generator().manual_seed(0)
    return [torch.rand(3, 96, 128, generator=g), torch.rand(3, 80, 96, generator=g)]


def _model(*overrides: str) -> FasterRCNN:
    torch.manual_seed(0)
    return FasterRCNN(load_config(None, [*TINY, *overrides]).model).eval()


def _same_weights(*overrides: str, reference: FasterRCNN) -> FasterRCNN:
    model = _model(*overrides)
    model.load_state_dict(reference.state_dict())
    return model


@pytest.mark.parametrize("system", [[], TINY_C5, ["model.box_head=false"]], ids=["fpn", "c5", "rpn_alone"])
def test_one_scale_is_the_plain_detector_exactly(system):
    plain = _model(*system)
    pyramid = _same_weights(*system, "model.input.test_scales=[96]", reference=plain)
    other_side = _same_weights(*system, "model.input.min_size_test=160", reference=plain)
    images = _images()
    with torch.no_grad():
        want = plain(images, return_proposals=True)
        got = pyramid(images, return_proposals=True)
        # a single scale other than min_size_test is the plain detector at that shorter side
        want_160 = other_side(images, return_proposals=True)
        got_160 = detect_on_image_pyramid(plain, images, [160], return_proposals=True)
    for g, w, g160, w160 in zip(got, want, got_160, want_160, strict=True):
        assert set(g) == set(w) and set(g) >= {"proposals", "objectness"}
        assert len(w["proposals"]) > 0 and ("boxes" not in w or len(w["boxes"]) > 0)
        for key in w:
            assert torch.equal(g[key], w[key]), key
            assert torch.equal(g160[key], w160[key]), key
        assert not torch.equal(w["proposals"], w160["proposals"])  # 160 is a different input


def _assert_greedy_nms(kept_boxes, kept_scores, kept_groups, boxes, scores, groups, iou, cap):
    """What greedy NMS + top-``cap`` guarantees, checked from the candidates (boxes, scores, groups)."""
    assert len(kept_boxes) <= cap
    assert torch.all(kept_scores[:-1] >= kept_scores[1:])
    # no two kept boxes of one group overlap above the threshold
    same = kept_groups[:, None] == kept_groups[None, :]
    overlap = box_iou(kept_boxes, kept_boxes).masked_fill(~same, 0).fill_diagonal_(0)
    assert overlap.max() <= iou
    # every candidate scoring above the last kept one, and not kept, is suppressed by a kept box
    # of its group that scores at least as high and overlaps it above the threshold
    is_kept = (box_iou(boxes, kept_boxes) == 1) & (scores[:, None] == kept_scores[None, :])
    for i in torch.nonzero((scores > kept_scores[-1]) & ~is_kept.any(1)).flatten():
        suppressor = ((kept_groups == groups[i]) & (kept_scores >= scores[i])
                      & (box_iou(boxes[i : i + 1], kept_boxes)[0] > iou))
        assert suppressor.any()
    # and every kept box is one of the candidates
    assert is_kept.any(0).all()


def test_several_scales_merge_detections_by_per_class_nms():
    model = _model(*TINY_C5, f"model.input.test_scales={SCALES}", "model.roi_heads.detections_per_image=60")
    images = _images()
    with torch.no_grad():
        per_scale = [detect_at_scale(model, images, s) for s in SCALES]
        merged = model(images)
    cfg = model.cfg.roi_heads
    for i, out in enumerate(merged):
        candidates = {k: torch.cat([scale[i][k] for scale in per_scale])
                      for k in ("boxes", "scores", "labels")}
        # more candidates than one scale gives, and more than the cap: the merge has work to do
        assert len(candidates["boxes"]) > max(len(scale[i]["boxes"]) for scale in per_scale)
        assert len(candidates["boxes"]) > cfg.detections_per_image
        assert len(out["boxes"]) == cfg.detections_per_image
        _assert_greedy_nms(out["boxes"], out["scores"], out["labels"], candidates["boxes"],
                           candidates["scores"], candidates["labels"], cfg.nms_thresh,
                           cfg.detections_per_image)
        # detections of several scales survive (the pyramid is not one scale in disguise)
        origin = [next(s for s, scale in enumerate(per_scale)
                       if ((scale[i]["boxes"] == box).all(1) & (scale[i]["scores"] == score)).any())
                  for box, score in zip(out["boxes"], out["scores"], strict=True)]
        assert len(set(origin)) > 1


def test_rpn_alone_on_a_pyramid_merges_proposals_class_agnostically():
    model = _model("model.box_head=false", f"model.input.test_scales={SCALES}")
    images = _images()
    with torch.no_grad():
        per_scale = [detect_at_scale(model, images, s) for s in SCALES]
        merged = model(images)
    cap, iou = model.cfg.rpn.post_nms_top_n_test, model.cfg.rpn.nms_thresh
    for i, out in enumerate(merged):
        assert set(out) == {"proposals", "objectness"}
        boxes = torch.cat([scale[i]["proposals"] for scale in per_scale])
        scores = torch.cat([scale[i]["objectness"] for scale in per_scale])
        assert len(boxes) > cap
        one_group, kept_group = torch.zeros(len(boxes)), torch.zeros(len(out["proposals"]))
        _assert_greedy_nms(out["proposals"], out["objectness"], kept_group, boxes, scores, one_group,
                           iou, cap)


def test_merge_by_hand():
    """Two scales' outputs for one image, merged: the result worked out on paper."""
    cfg = load_config(None, ["model.roi_heads.detections_per_image=2",
                             "model.rpn.post_nms_top_n_test=3"]).model
    a = {"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]), "scores": torch.tensor([0.9, 0.5]),
         "labels": torch.tensor([1, 2]),
         "proposals": torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60]]),
         "objectness": torch.tensor([0.9, 0.3])}
    b = {"boxes": torch.tensor([[1.0, 0, 11, 10], [0, 0, 10, 10], [20, 20, 30, 30]]),
         "scores": torch.tensor([0.8, 0.7, 0.6]), "labels": torch.tensor([1, 2, 2]),
         "proposals": torch.tensor([[1.0, 0, 11, 10], [0, 20, 10, 30], [40, 40, 60, 60]]),
         "objectness": torch.tensor([0.8, 0.4, 0.2])}
    (out,) = merge_scales([[a], [b]], cfg)
    # [1,0,11,10] (0.8) overlaps [0,0,10,10] (0.9, class 1) by IoU 90/110 = 0.82 > 0.5: dropped;
    # [0,0,10,10] of class 2 stays; [20,20,30,30] of class 2 at 0.6 drops its copy at 0.5;
    # then only the 2 best remain.
    assert torch.equal(out["boxes"], torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10]]))
    assert torch.equal(out["scores"], torch.tensor([0.9, 0.7]))
    assert torch.equal(out["labels"], torch.tensor([1, 2]))
    # proposals: class-agnostic at IoU 0.7: [1,0,11,10] goes (0.82); [40,40,60,60] overlaps
    # [50,50,60,60] by 100/400 = 0.25 and stays, but the cap of 3 cuts it (0.2 is the lowest)
    assert torch.equal(out["proposals"], torch.tensor([[0.0, 0, 10, 10], [0, 20, 10, 30], [50, 50, 60, 60]]))
    assert torch.equal(out["objectness"], torch.tensor([0.9, 0.4, 0.3]))


def test_an_object_smaller_than_every_anchor_is_met_at_a_larger_scale():
    """A 4x4 px object and an RPN whose proposals are its anchors (zero deltas, flat objectness).

    At shorter side 96 the smallest anchor is 8x8 in the image's pixels (IoU <= 16/64 with the
    object); at 192 the image is doubled, an 8x8 anchor centred at (84, 84) is the object
    [40, 40, 44, 44] exactly once mapped back.
    """
    model = _model("model.box_head=false", "model.rpn.nms_thresh=1.0", "model.rpn.pre_nms_top_n_test=100000",
                   "model.rpn.post_nms_top_n_test=100000")
    for conv in (model.rpn.head.objectness_logits, model.rpn.head.anchor_deltas):
        torch.nn.init.zeros_(conv.weight)
        torch.nn.init.zeros_(conv.bias)
    image = [torch.rand(3, 96, 96, generator=torch.Generator().manual_seed(0))]
    small = torch.tensor([[40.0, 40.0, 44.0, 44.0]])
    with torch.no_grad():
        proposals = {str(scales): detect_on_image_pyramid(model, image, scales)[0]["proposals"]
                     for scales in ([96], [96, 192])}
    best = {scales: box_iou(boxes, small).max() for scales, boxes in proposals.items()}
    assert best["[96]"] <= 0.25
    assert best["[96, 192]"] == 1.0


def test_bad_scales_are_one_line_errors():
    with pytest.raises(ValueError, match=r"model\.input\.test_scales.*\[0, 96\]"):
        _model("model.input.test_scales=[0, 96]")
    with pytest.raises(ConfigError, match=r"test_scales\[1\]"):
        load_config(None, ["model.input.test_scales=[96, big]"])
    model = _model()
    with pytest.raises(ValueError, match="test_scales"):
        detect_on_image_pyramid(model, _images(), [])
    with pytest.raises(ValueError, match=r"model\.input\.test_scales.*-5"):
        detect_on_image_pyramid(model, _images(), [96, -5])
    model.train()
    with pytest.raises(ValueError, match="eval"):
        detect_on_image_pyramid(model, _images(), [96, 128])


@pytest.mark.slow
def test_eval_and_predict_on_a_pyramid_end_to_end(tmp_path, tiny_synth, capsys):
    run = tmp_path / "run"
    overrides = [*TINY_MODEL, "model.roi_heads.score_thresh=0.0", *data_overrides(tiny_synth),
                 "train.batch_size=2", "train.max_iter=2", "train.warmup_iters=1", "train.device=cpu"]
    assert main(["--quiet", "train", "--config", "demo", "--output", str(run), "--no-eval", *overrides]) == 0

    def evaluate(name, *extra):
        assert main(["--quiet", "eval", str(run), *extra, "--output", str(tmp_path / name)]) == 0
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        metrics.pop("seconds_per_image")  # a timing: the one number two identical runs need not share
        return metrics, json.loads((tmp_path / name / "coco_results.json").read_text())

    plain_metrics, plain = evaluate("plain")
    one_metrics, one = evaluate("one", "model.input.test_scales=[96]")
    many_metrics, many = evaluate("many", "model.input.test_scales=[64,96,128]", "model.input.max_size=128")
    assert one == plain and one_metrics == plain_metrics  # one scale at min_size_test: the same run
    assert many != plain and len(many) > 0 and many_metrics["num_images"] == plain_metrics["num_images"]
    assert {"AP", "AR@1000"} <= set(many_metrics)

    image = next((tiny_synth / "val" / "images").glob("*.png"))

    def predict(name, *extra):
        out = tmp_path / name
        assert main(["--quiet", "predict", str(run), str(image), "--output", str(out),
                     "--score-thresh", "0.05", *extra]) == 0
        return json.loads((tmp_path / name / "predictions.json").read_text())

    sets = ["--set", "model.input.test_scales=[64,96,128]", "--set", "model.input.max_size=128"]
    assert predict("p_many", *sets) != predict("p_plain")
    # the API gives what predict wrote
    detector = Detector.from_checkpoint(run, "cpu", ["model.input.test_scales=[64,96,128]",
                                                     "model.input.max_size=128"])
    assert len(detector(image)["boxes"]) == len(predict("p_again", *sets))
    capsys.readouterr()
    assert main(["predict", str(run), str(image), "--set", "model.input.test_scales=[0]"]) == 2
    err = capsys.readouterr().err
    assert "model.input.test_scales" in err and err.count("\n") == 1
    assert main(["predict", str(run), str(image), "--set", "data.num_workers=1"]) == 2
    assert "only model.* fields" in capsys.readouterr().err
