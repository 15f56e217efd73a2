"""Level mapper and multi-level RoI pooling (docs/paper.md §3)."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torchvision.ops import MultiScaleRoIAlign

from fpn.config.schema import RoIHeadConfig
from fpn.model.roi_heads import MultiLevelRoIPooler, RoIHeads, map_rois_to_levels


def test_level_mapper_hand_computed():
    boxes = torch.tensor([
        [0.0, 0.0, 224.0, 224.0],  # k0 = 4
        [10.0, 10.0, 122.0, 122.0],  # 112 = 224 / 2 -> 3
        [0.0, 0.0, 56.0, 56.0],  # 224 / 4 -> 2
        [0.0, 0.0, 20.0, 20.0],  # would be 0.5 -> clamped to 2
        [0.0, 0.0, 448.0, 448.0],  # -> 5
        [0.0, 0.0, 1000.0, 1000.0],  # 6.16 -> clamped to 5
        [0.0, 0.0, 223.0, 223.0],  # just under 224 -> 3
    ])
    assert map_rois_to_levels(boxes, 2, 5).tolist() == [4, 3, 2, 2, 5, 5, 3]
    assert map_rois_to_levels(boxes, 4, 4).tolist() == [4] * 7  # a single level takes all


def test_pooler_matches_torchvision_multiscale_roi_align():
    torch.manual_seed(0)
    strides = {"p2": 4, "p3": 8, "p4": 16, "p5": 32}
    features = {lvl: torch.randn(2, 8, 256 // s, 320 // s) for lvl, s in strides.items()}
    xy = torch.rand(40, 2) * 200
    wh = 8 * 2 ** (torch.rand(40, 1) * 7)  # sides 8..1024 px, log-uniform
    boxes = torch.cat([xy, xy + wh], dim=1)
    per_image = [boxes[:25], boxes[25:]]
    pooler = MultiLevelRoIPooler(strides, output_size=7, sampling_ratio=2, aligned=False)
    theirs = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)(
        OrderedDict((str(i), features[lvl]) for i, lvl in enumerate(strides)), per_image, [(256, 320)] * 2
    )
    torch.testing.assert_close(pooler.eval()(features, per_image), theirs)
    # training mode pools by a sparse matrix product (fpn.model.roi_align): the same sums, reassociated
    # (differences of 1.25e-5 seen)
    torch.testing.assert_close(pooler.train()(features, per_image), theirs, rtol=1e-4, atol=1e-4)
    levels = map_rois_to_levels(boxes, 2, 5)
    assert len(set(levels.tolist())) == 4, "the boxes exercise every level"


def test_training_targets_and_detection_postprocessing():
    torch.manual_seed(0)
    cfg = RoIHeadConfig(levels=["p3"], num_classes=3, batch_size_per_image=16, fc_dim=32)
    heads = RoIHeads(cfg, in_channels=4, strides={"p3": 8})
    features = {"p3": torch.randn(1, 4, 16, 16)}
    gt = {"boxes": torch.tensor([[10.0, 10.0, 60.0, 60.0]]), "labels": torch.tensor([2])}
    proposals = [torch.tensor([[10.0, 10.0, 60.0, 59.0], [80.0, 80.0, 120.0, 120.0]])]
    sampled, labels, targets = heads.sample_proposals(proposals, [gt], None)
    # the near-copy (IoU 0.98) and the added ground truth are class 2; the far box is background
    assert sorted(labels.tolist()) == [0, 2, 2]
    gt_row = (sampled[0] == gt["boxes"]).all(dim=1)
    torch.testing.assert_close(targets[gt_row], torch.zeros(1, 4))
    heads.train()
    _, losses = heads(features, proposals, [(128, 128)], [gt])
    assert set(losses) == {"loss_cls", "loss_box"} and all(v.isfinite() for v in losses.values())
    heads.eval()
    with torch.no_grad():
        heads.box_predictor.cls_score.bias.copy_(torch.tensor([0.0, 0.0, 10.0, 0.0]))
        detections, _ = heads(features, proposals, [(100, 90)], None)
    det = detections[0]
    assert det["labels"].tolist() == [2, 2]  # class 2 on both RoIs, background never reported
    assert bool((det["boxes"][:, 2] <= 90).all() and (det["boxes"][:, 3] <= 100).all())  # clipped


def test_roi_pool_is_selectable_for_the_ablation():
    from torchvision.ops import roi_pool

    torch.manual_seed(1)
    strides = {"p2": 4, "p3": 8}
    features = {lvl: torch.randn(1, 4, 64 // s, 64 // s) for lvl, s in strides.items()}
    boxes = torch.tensor([[0.0, 0.0, 40.0, 40.0], [4.0, 8.0, 60.0, 60.0]])  # sides 40 -> p2, 56 -> p2/p3
    pooled = MultiLevelRoIPooler(strides, output_size=7, sampling_ratio=2, kind="roi_pool",
                                 canonical_scale=112.0, canonical_level=3)(features, [boxes])
    levels = map_rois_to_levels(boxes, 2, 3, canonical_scale=112.0, canonical_level=3)
    for i, level in enumerate(levels.tolist()):
        name = f"p{level}"
        rois = torch.cat([torch.zeros(1, 1), boxes[i : i + 1]], dim=1)
        torch.testing.assert_close(pooled[i], roi_pool(features[name], rois, (7, 7), 1 / strides[name])[0])

def test_each_detection_carries_the_level_its_roi_was_pooled_from():
    """``levels`` of a detection is Eq. 1 of its *proposal*, not of its regressed box."""
    cfg = RoIHeadConfig(levels=["p2", "p3", "p4", "p5"], num_classes=2, fc_dim=16, score_thresh=0.0)
    heads = RoIHeads(cfg, in_channels=4, strides={"p2": 4, "p3": 8, "p4": 16, "p5": 32}).eval()
    features = {f"p{k}": torch.randn(1, 4, 1024 // 2**k, 1024 // 2**k) for k in range(2, 6)}
    proposals = [torch.tensor([
        [0.0, 0.0, 448.0, 448.0],  # sqrt(wh) 448 = 224 * 2 -> 5
        [500.0, 0.0, 724.0, 224.0],  # 224 -> k0 = 4
        [0.0, 500.0, 112.0, 612.0],  # 112 -> 3
        [600.0, 600.0, 656.0, 656.0],  # 56 -> 2
        [900.0, 900.0, 920.0, 920.0],  # 20: floor(4 + log2(20 / 224)) = 0 -> clamped to 2
    ])]
    with torch.no_grad():
        heads.box_predictor.bbox_pred.weight.zero_()  # zero deltas: each box is its proposal
        # class 1 scores highest on every RoI; class 2 also passes the threshold of 0 (K = 2 per RoI)
        heads.box_predictor.cls_score.bias.copy_(torch.tensor([0.0, 3.0, 1.0]))
        det = heads(features, proposals, [(1024, 1024)], None)[0][0]
    assert det["levels"].dtype == torch.int64 and len(det["levels"]) == 10
    want = {tuple(box): level for box, level in zip(proposals[0].tolist(), [5, 4, 3, 2, 2], strict=True)}
    for box, level in zip(det["boxes"].tolist(), det["levels"].tolist(), strict=True):
        assert want[tuple(box)] == level


def test_levels_follow_the_source_roi_through_regression_and_nms():
    """With random deltas every detection moves off its proposal; its level is still its proposal's."""
    from fpn.box_format import clip_boxes
    from fpn.model import boxes as box_ops

    torch.manual_seed(0)
    cfg = RoIHeadConfig(levels=["p2", "p3", "p4"], num_classes=3, fc_dim=16, score_thresh=0.0)
    heads = RoIHeads(cfg, in_channels=4, strides={"p2": 4, "p3": 8, "p4": 16}).eval()
    features = {f"p{k}": torch.randn(1, 4, 512 // 2**k, 512 // 2**k) for k in (2, 3, 4)}
    xy = torch.rand(30, 2) * 100
    proposals = [torch.cat([xy, xy + 16 * 2 ** (torch.rand(30, 2) * 4.5)], dim=1)]  # sides 16..362
    with torch.no_grad():
        heads.box_predictor.bbox_pred.weight.normal_(std=0.1)
        det = heads(features, proposals, [(512, 512)], None)[0][0]
        logits, deltas = heads.box_predictor(heads.box_head(heads.pooler(features, proposals)))
    decoded = clip_boxes(box_ops.decode_boxes(deltas, proposals[0], cfg.box_weights), (512, 512))
    source_levels = map_rois_to_levels(proposals[0], 2, 4)
    assert len(set(source_levels.tolist())) == 3, "the proposals exercise every level"
    for box, label, level in zip(det["boxes"], det["labels"].tolist(), det["levels"].tolist(), strict=True):
        roi = torch.nonzero((decoded[:, label] == box).all(dim=1)).squeeze(1)
        assert len(roi) == 1 and source_levels[roi].item() == level
