"""The detector as a composition (docs/paper.md §2-3): the paper's systems share every part.

RPN alone and Fast R-CNN on given proposals are the Faster R-CNN modules with one part left
out; the checks below compare each against the full detector on the same weights.
"""

from __future__ import annotations

import pytest
import torch

from conftest import TINY_MODEL
from fpn.config import load_config
from fpn.engine.evaluate import evaluate_detector
from fpn.model.detector import FasterRCNN

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
    metrics = evaluate_detector(model, loader, gt, {1: 1, 2: 2}, progress=False)
    assert "AP" not in metrics and 0.0 <= metrics["AR@1000"] <= 1.0 and metrics["num_images"] == 2
