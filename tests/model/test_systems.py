"""The detector as a composition (docs/paper.md §2-3): the paper's systems share every part.

RPN alone and Fast R-CNN on given proposals are the Faster R-CNN modules with one part left
out; the checks below compare each against the full detector on the same weights.
"""

from __future__ import annotations

import json

import pytest
import torch

from fpn.cli import main
from fpn.config.files import load_config
from fpn.data.proposals import ProposalFile, ProposalWriter
from fpn.errors import DatasetError
from fpn.evaluation.coco import as_coco, proposal_ar
from fpn.evaluation.inference import evaluate_detector
from fpn.model.detector import FasterRCNN
from fpn.output_comparison import output_difference
from tests.conftest import TINY_MODEL, data_overrides

TINY = [*TINY_MODEL, "model.roi_heads.num_classes=2", "model.roi_heads.score_thresh=0.0"]


def _images():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 96, 128, generator=g), torch.rand(3, 80, 96, generator=g)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0], [60.0, 20.0, 120.0, 40.0]]),
                "labels": torch.tensor([1, 2])},
               {"boxes": torch.tensor([[5.0, 5.0, 40.0, 70.0]]), "labels": torch.tensor([2])}]
    return images, targets


def _model(*overrides: str) -> FasterRCNN:
    torch.manual_seed(0)
    return FasterRCNN(load_config(None, [*TINY, *overrides]).model)


def test_rpn_alone_trains_only_the_rpn_and_gives_the_full_models_proposals():
    full = _model().eval()
    rpn_only = _model("model.box_head=false")
    assert rpn_only.roi_heads is None and not any(k.startswith("roi_heads.") for k in rpn_only.state_dict())
    missing, unexpected = rpn_only.load_state_dict(full.state_dict(), strict=False)
    assert not missing and all(k.startswith("roi_heads.") for k in unexpected)
    images, targets = _images()
    rpn_only.train()
    assert set(rpn_only(images, targets)) == {"loss_rpn_objectness", "loss_rpn_box"}
    rpn_only.eval()
    with torch.no_grad():
        got = rpn_only(images)
        want = full(images, return_proposals=True)
    for g, w in zip(got, want, strict=True):
        assert set(g) == {"proposals", "objectness"}
        torch.testing.assert_close(g["proposals"], w["proposals"])
        torch.testing.assert_close(g["objectness"], w["objectness"])
    # both images resize to fit 96 px (72x96 and 80x96) and pad to 96x96: 24^2 + 12^2 + 6^2 +
    # 3^2 + 2^2 (P6: ceil(96 / 64)) = 769 cells on P2..P6, 3 anchors each
    assert rpn_only.num_anchors((96, 128)) == rpn_only.num_anchors((80, 96)) == 769 * 3
    anchors = rpn_only.rpn.anchor_generator({f"p{k}": (96 // 2**k, 96 // 2**k) for k in range(2, 6)}
                                            | {"p6": (2, 2)}, (96, 96), torch.device("cpu"))
    assert sum(len(a) for a in anchors) == 769 * 3  # the generator agrees


def test_rpn_alone_skips_proposal_selection_in_training_with_the_same_losses(monkeypatch):
    from fpn.model import boxes as box_ops

    full, rpn_only = _model().train(), _model("model.box_head=false").train()
    rpn_only.load_state_dict(full.state_dict(), strict=False)
    images, targets = _images()
    torch.manual_seed(1)
    want = full(images, [dict(t) for t in targets])  # selects proposals for its box head

    def no_nms(*args, **kwargs):
        raise AssertionError("an RPN trained alone ran NMS")

    monkeypatch.setattr(box_ops, "batched_nms", no_nms)
    torch.manual_seed(1)
    got = rpn_only(images, [dict(t) for t in targets])
    for name in ("loss_rpn_objectness", "loss_rpn_box"):
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)


def test_given_proposals_reproduce_faster_rcnn_on_the_same_weights():
    """Fast R-CNN fed the RPN's own proposals is Faster R-CNN's second stage exactly."""
    full = _model().eval()
    fast = _model("model.proposals=given")
    assert fast.rpn is None
    fast.load_state_dict({k: v for k, v in full.state_dict().items() if not k.startswith("rpn.")})
    fast.eval()
    images, targets = _images()
    with torch.no_grad():
        want = full(images, return_proposals=True)
        got = fast(images, proposals=[w["proposals"] for w in want])
    for g, w in zip(got, want, strict=True):
        assert len(w["boxes"]) > 0
        # proposals went to original pixels and back: within 1e-3 px of the RPN's own
        torch.testing.assert_close(g["boxes"], w["boxes"], atol=1e-3, rtol=0)
        torch.testing.assert_close(g["scores"], w["scores"], atol=1e-4, rtol=0)
        assert torch.equal(g["labels"], w["labels"])


def test_given_proposals_train_only_the_box_head_and_are_required():
    fast = _model("model.proposals=given").train()
    images, targets = _images()
    with_proposals = [{**t, "proposals": t["boxes"] + 2.0} for t in targets]
    losses = fast(images, with_proposals)
    assert set(losses) == {"loss_cls", "loss_box"} and all(torch.isfinite(v) for v in losses.values())
    fast.eval()
    with pytest.raises(ValueError, match="proposals"):
        fast(images)
    with pytest.raises(ValueError, match="nothing to train"):
        _model("model.proposals=given", "model.box_head=false")


def test_rpn_alone_is_scored_by_proposal_recall_only():
    """Through the evaluator: AR, and no box AP for a model without a box head."""
    model = _model("model.box_head=false").eval()
    images, targets = _images()
    annotations = []
    for i, target in enumerate(targets):
        for (x1, y1, x2, y2), label in zip(target["boxes"].tolist(), target["labels"].tolist(), strict=True):
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": label, "iscrowd": 0,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
    gt = {"images": [{"id": i, "width": im.shape[2], "height": im.shape[1]} for i, im in enumerate(images)],
          "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}], "annotations": annotations}
    loader = [(images, [{"image_id": i} for i in range(len(images))])]
    result = evaluate_detector(model, loader, gt, {1: 1, 2: 2}, progress=False)
    assert "AP" not in result.metrics and 0.0 <= result.metrics["AR@1000"] <= 1.0 and result.num_images == 2


# ---------------------------------------------------------------------------------------------
# The systems end to end through the command line, on the tiny synthetic set


def _cli_args(root, *extra):
    return [*TINY_MODEL, *data_overrides(root), "train.batch_size=2", "train.max_iter=2",
            "train.warmup_iters=1", "train.device=cpu", "model.roi_heads.score_thresh=0.0", *extra]


def _metrics(path):
    return json.loads((path / "metrics.json").read_text())


@pytest.mark.slow
def test_rpn_alone_then_fast_rcnn_on_its_proposals(tiny_synth, tmp_path, capsys):
    rpn = tmp_path / "rpn"
    assert main(["--quiet", "train", "--config", "rpn_c_fpn", "--output", str(rpn),
                 *_cli_args(tiny_synth)]) == 0
    out = capsys.readouterr().out
    assert "AR@1000" in out and "anchors_per_image" in out and "AP50" not in out
    assert main(["--quiet", "eval", str(rpn), "--output", str(tmp_path / "rpn_eval")]) == 0
    rpn_metrics = _metrics(tmp_path / "rpn_eval")
    # 96-px images pad to 96x96: 769 cells on P2..P6 (see above), 3 anchors each
    assert rpn_metrics["anchors_per_image"] == 769 * 3 and "AP" not in rpn_metrics
    assert main(["--quiet", "predict", str(rpn), str(tiny_synth / "val" / "images"),
                 "--output", str(tmp_path / "drawn"), "--score-thresh", "0"]) == 0
    assert len(list((tmp_path / "drawn" / "drawn").glob("*.png"))) == 3
    records = json.loads((tmp_path / "drawn" / "predictions.json").read_text())
    assert records and all(set(r) == {"file_name", "bbox", "score"} for r in records)

    files = {}
    for split in ("train", "val"):
        files[split] = tmp_path / f"{split}.proposals"
        assert main(["--quiet", "proposals", str(rpn), "--split", split, "--output", str(files[split])]) == 0
        assert len(ProposalFile(files[split])) == {"train": 6, "val": 3}[split]
    fast = tmp_path / "fast"
    assert main(["--quiet", "train", "--config", "fast_c_fpn", "--output", str(fast),
                 *_cli_args(tiny_synth, f"data.train_proposals={files['train']}",
                            f"data.val_proposals={files['val']}")]) == 0
    assert "AP50" in capsys.readouterr().out
    assert main(["--quiet", "eval", str(fast), "--output", str(tmp_path / "fast_eval")]) == 0
    assert 0.0 <= _metrics(tmp_path / "fast_eval")["AP"] <= 1.0


@pytest.mark.slow
def test_proposals_from_a_file_give_the_same_ap_as_the_rpn_inline(tiny_synth, tmp_path):
    """Faster R-CNN's weights, evaluated end to end and as Fast R-CNN on its written proposals."""
    run = tmp_path / "faster"
    assert main(["--quiet", "train", "--config", "demo", "--output", str(run), "--no-eval",
                 *_cli_args(tiny_synth, "train.max_iter=6")]) == 0
    assert main(["--quiet", "eval", str(run), "--output", str(tmp_path / "inline")]) == 0
    proposals = tmp_path / "val.p"
    assert main(["--quiet", "proposals", str(run), "--split", "val", "--output", str(proposals)]) == 0
    assert main(["--quiet", "eval", str(run), "model.proposals=given", f"data.val_proposals={proposals}",
                 "--output", str(tmp_path / "from_file")]) == 0
    inline, from_file = _metrics(tmp_path / "inline"), _metrics(tmp_path / "from_file")
    assert "anchors_per_image" in inline and "anchors_per_image" not in from_file  # no RPN in the second
    for key in ("AP", "AP50", "AP75", "AR@100", "AR@1000"):
        assert abs(inline[key] - from_file[key]) < 1e-3, key
    # the detections themselves, not only their scores: the same boxes to a hundredth of a pixel
    want, got = (_detections_per_image(tmp_path / d / "coco_results.json") for d in ("inline", "from_file"))
    assert sum(len(d["boxes"]) for d in want) == sum(len(d["boxes"]) for d in got) > 100
    box_diff, score_diff, unmatched = output_difference(want, got, match_px=1e-2)
    assert unmatched == 0 and box_diff < 1e-2 and score_diff < 1e-4


def _detections_per_image(results_file):
    """COCO results -> per image (in image id order) boxes, scores, labels as the detector gives them."""
    records = json.loads(results_file.read_text())
    per_image = []
    for image_id in sorted({r["image_id"] for r in records}):
        mine = [r for r in records if r["image_id"] == image_id]
        per_image.append({"boxes": torch.tensor([r["bbox"] for r in mine]),  # xywh for both: comparable
                          "scores": torch.tensor([r["score"] for r in mine]),
                          "labels": torch.tensor([r["category_id"] for r in mine])})
    return per_image


def test_perfect_proposals_have_an_average_recall_of_one(tiny_synth):
    coco = as_coco(tiny_synth / "val" / "annotations.json")
    image_ids = coco.getImgIds()
    boxes = [torch.tensor([a["bbox"] for a in coco.loadAnns(coco.getAnnIds(imgIds=i))]) for i in image_ids]
    proposals = [torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], dim=1) for b in boxes]  # xywh -> xyxy
    recall = proposal_ar(coco, proposals, image_ids)
    assert recall["AR@100"] == recall["AR@1000"] == 1.0
    shifted = [p + 4.0 for p in proposals]  # a few pixels off: no longer perfect at IoU 0.95
    assert proposal_ar(coco, shifted, image_ids)["AR@100"] < 1.0


@pytest.mark.slow
def test_fast_rcnn_configs_need_matching_proposal_files(tiny_synth, tmp_path, capsys):
    args = ["--quiet", "train", "--config", "fast_c_fpn", "--output", str(tmp_path / "run")]
    assert main([*args, *_cli_args(tiny_synth)]) == 2
    err = capsys.readouterr().err
    assert "data.train_proposals: required by model.proposals=given" in err and err.count("\n") == 1
    other = tmp_path / "other.p"  # proposals of another dataset: image ids 1000..1001
    with ProposalWriter(other) as writer:
        for image_id in (1000, 1001):
            writer.add(image_id, torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([0.9]))
    assert main([*args, *_cli_args(tiny_synth, f"data.train_proposals={other}",
                                   f"data.val_proposals={other}")]) == 2
    err = capsys.readouterr().err
    assert "6 of the dataset's 6 images have no proposals (first: image id" in err and "other.p" in err


def test_proposal_file_round_trip_and_corruption(tmp_path):
    path = tmp_path / "p.bin"
    g = torch.Generator().manual_seed(0)
    written = {i: (torch.rand(n, 4, generator=g) * 100, torch.rand(n, generator=g)) for i, n in
               [(7, 3), (3, 0), (11, 1000)]}
    with ProposalWriter(path, {"split": "val"}) as writer:
        for image_id, (boxes, scores) in written.items():
            writer.add(image_id, boxes, scores)
    read = ProposalFile(path)
    assert sorted(read.image_ids()) == [3, 7, 11] and read.metadata["num_proposals"] == 1003
    for image_id, (boxes, scores) in written.items():
        got_boxes, got_scores = read[image_id]
        assert torch.equal(got_boxes, boxes) and torch.equal(got_scores, scores)
    assert path.stat().st_size < 1003 * 20 + 500  # 20 bytes a proposal, plus the index
    truncated = tmp_path / "cut.bin"
    truncated.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DatasetError, match="cut.bin: truncated"):
        ProposalFile(truncated)


@pytest.mark.slow
def test_the_four_step_alternating_schedule_shares_the_features(tiny_synth, tmp_path, capsys):
    """Table 5: RPN; Fast R-CNN on its proposals; RPN on frozen shared features; Fast R-CNN again."""
    from fpn.engine.checkpoint import latest_checkpoint, load_checkpoint

    def train(config, name, *extra):
        assert main(["--quiet", "train", "--config", config, "--output", str(tmp_path / name), "--no-eval",
                     *_cli_args(tiny_synth, *extra)]) == 0

    def proposals(run, split):
        path = tmp_path / f"{run}_{split}.p"
        assert main(["--quiet", "proposals", str(tmp_path / run), "--split", split,
                     "--output", str(path)]) == 0
        return path

    def weights(run):
        return load_checkpoint(latest_checkpoint(tmp_path / run / "checkpoints"))[0]

    frozen = ["model.backbone.freeze_at=5", "model.neck.frozen=true"]
    train("rpn_c_fpn", "step1")
    train("fast_c_fpn", "step2", f"data.train_proposals={proposals('step1', 'train')}",
          f"data.val_proposals={proposals('step1', 'val')}")
    train("rpn_c_fpn", "step3", f"train.init=[{tmp_path / 'step1'}, {tmp_path / 'step2'}]", *frozen)
    train("fast_c_fpn", "step4", f"train.init=[{tmp_path / 'step2'}, {tmp_path / 'step3'}]", *frozen,
          f"data.train_proposals={proposals('step3', 'train')}",
          f"data.val_proposals={proposals('step3', 'val')}")
    train("paper_r50_fpn", "shared", f"train.init=[{tmp_path / 'step3'}, {tmp_path / 'step4'}]",
          "train.max_iter=0")
    step1, step2, step3, step4, shared = (weights(r) for r in ("step1", "step2", "step3", "step4", "shared"))
    features = [k for k in step2 if k.startswith(("backbone.", "neck."))]
    assert features
    assert all(torch.equal(step3[k], step2[k]) and torch.equal(step4[k], step2[k]) for k in features)
    assert any(not torch.equal(step3[k], step1[k]) for k in step3 if k.startswith("rpn."))  # fine-tuned
    for key, value in shared.items():
        source = step3 if key.startswith("rpn.") else step4
        assert torch.equal(value, source[key]), key
    capsys.readouterr()
    assert main(["--quiet", "eval", str(tmp_path / "shared"), "--output", str(tmp_path / "eval")]) == 0
    assert {"AP", "AR@1000"} <= set(_metrics(tmp_path / "eval"))
