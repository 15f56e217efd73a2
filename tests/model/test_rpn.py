"""The RPN (docs/paper.md §2) on hand-made anchors: labels by IoU (0.7 / 0.3 and the best-anchor
rule), 256 sampled anchors per image at most half positive, the two losses, the prediction layout,
and proposal selection (top-k per level, NMS within a level, top-N per image).

Every expected number is derived in a comment from the paper's rules, not read off the code.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fpn.config.schema import AnchorConfig, RPNConfig
from fpn.model import boxes as box_ops
from fpn.model.rpn import RegionProposalNetwork, flatten_predictions

BETA = 1.0 / 9.0  # RPNConfig.smooth_l1_beta


def _rpn(**settings) -> RegionProposalNetwork:
    """An RPN on one level (or two) whose anchors the tests pass in by hand."""
    levels = settings.pop("levels", ["p2"])
    anchors = AnchorConfig(sizes={level: [32.0] for level in levels}, aspect_ratios=[1.0])
    cfg = RPNConfig(levels=levels, anchors=anchors, **settings)
    return RegionProposalNetwork(cfg, 4, {level: 2 ** int(level[1:]) for level in levels})


def _smooth_l1(x: float) -> float:
    return 0.5 * x * x / BETA if abs(x) < BETA else abs(x) - 0.5 * BETA


# One ground-truth box per image, and anchors at known IoUs with it.
GT = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 110.0, 110.0]])
ANCHORS = torch.tensor([
    [0.0, 0.0, 10.0, 10.0],        # IoU 1 with box 0                    -> positive
    [0.0, 0.0, 10.0, 8.0],         # IoU 80/100 = 0.8 >= 0.7             -> positive
    [0.0, 0.0, 10.0, 5.0],         # IoU 0.5, between 0.3 and 0.7        -> ignored
    [0.0, 0.0, 10.0, 2.0],         # IoU 0.2 < 0.3                       -> negative
    [100.0, 100.0, 110.0, 104.0],  # IoU 0.4 with box 1, its best anchor -> positive (best-anchor rule)
    [50.0, 50.0, 60.0, 60.0],      # overlaps nothing                    -> negative
])
EXPECTED_LABELS = [1, 1, -1, 0, 1, 0]


def test_anchors_are_labelled_by_the_thresholds_and_the_best_anchor_rule(monkeypatch):
    seen = []
    sample = box_ops.sample_for_training

    def record(labels, *args, **kwargs):
        seen.append(labels.clone())
        return sample(labels, *args, **kwargs)

    monkeypatch.setattr(box_ops, "sample_for_training", record)
    _rpn().losses(ANCHORS, torch.zeros(1, 6), torch.zeros(1, 6, 4), [{"boxes": GT}], None)
    assert seen[0].tolist() == EXPECTED_LABELS
    # without the best-anchor rule anchor 4 (IoU 0.4) would only be ignored: the rule is the RPN's own
    strict = box_ops.match_anchors(GT, ANCHORS, high=0.7, low=0.3, allow_low_quality=False)
    assert strict[4].item() == box_ops.BETWEEN


def test_the_rpn_losses_on_a_hand_made_case():
    logits = torch.tensor([[2.0, 1.0, 7.0, -1.0, 0.5, -3.0]])  # anchor 2's 7.0 is ignored
    deltas = torch.zeros(1, 6, 4)
    losses = _rpn().losses(ANCHORS, logits, deltas, [{"boxes": GT}], None)
    # 5 anchors sampled (all but the ignored one): binary cross-entropy softplus(x) - x·y, summed, / 5
    labels = [1, 1, None, 0, 1, 0]
    bce = sum(math.log1p(math.exp(x)) - x * y for x, y in zip(logits[0].tolist(), labels, strict=True)
              if y is not None)
    assert losses["loss_rpn_objectness"].item() == pytest.approx(bce / 5, rel=1e-6)
    # smooth-L1 of the zero deltas against the targets of the three positives, / 5:
    # anchor 0 is the box (0, 0, 0, 0); anchor 1, centre y 4 -> 5 of height 8: dy 1/8, dh log(10/8);
    # anchor 4, centre y 102 -> 105 of height 4: dy 3/4, dh log(10/4)
    box = sum(_smooth_l1(t) for t in (1 / 8, math.log(10 / 8), 3 / 4, math.log(10 / 4)))
    assert losses["loss_rpn_box"].item() == pytest.approx(box / 5, rel=1e-6)


def test_256_anchors_per_image_at_most_half_positive():
    far = torch.tensor([[500.0, 500.0, 510.0, 510.0]])
    # 300 copies of box A, 10 of box C, 1000 far away: IoU 1 with their own box, 0 with the others
    box_a, box_c = torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([[100.0, 0.0, 110.0, 10.0]])
    anchors = torch.cat([box_a.repeat(300, 1), box_c.repeat(10, 1), far.repeat(1000, 1)])
    image_a = torch.full((1310,), -1.0)
    image_a[:300] = 2.0  # the positives' logit
    image_c = torch.full((1310,), -1.0)
    image_c[300:310] = 2.0
    deltas = torch.zeros(2, 1310, 4)
    deltas[0, :300] = 1.0  # each positive's deltas are 1 where its targets are 0
    deltas[1, 300:310] = 1.0
    targets = [{"boxes": box_a, "sample_seed": 0}, {"boxes": box_c, "sample_seed": 1}]
    losses = _rpn().losses(anchors, torch.stack([image_a, image_c]), deltas, targets, None)
    # image A: 128 of its 300 positives and 128 negatives; image C: its 10 positives and 246
    # negatives filling the 256. Positive loss softplus(2) - 2, negative softplus(-1), over 512.
    positive, negative = math.log1p(math.exp(2.0)) - 2.0, math.log1p(math.exp(-1.0))
    expected = (138 * positive + 374 * negative) / 512
    assert losses["loss_rpn_objectness"].item() == pytest.approx(expected, rel=1e-6)
    # the box loss counts the 138 sampled positives only: 4 coordinates of smooth-L1(1) each
    assert losses["loss_rpn_box"].item() == pytest.approx(138 * 4 * _smooth_l1(1.0) / 512, rel=1e-6)


def test_predictions_are_laid_out_level_then_y_then_x_then_anchor():
    # one image, A = 2 anchors per cell, a 1 x 2 level: logit value 10·x + a
    logits = torch.tensor([[[[0.0, 10.0]], [[1.0, 11.0]]]])  # (N, A, H, W) = (1, 2, 1, 2)
    deltas = torch.arange(16.0).view(1, 2, 4, 1, 2).reshape(1, 8, 1, 2)  # (N, A*4, H, W)
    flat_logits, flat_deltas = flatten_predictions([logits], [deltas])
    assert flat_logits.tolist() == [[0.0, 1.0, 10.0, 11.0]]
    # the deltas of anchor a at x are 8a + 2·coordinate + x (arange over (A, 4, W))
    assert flat_deltas[0].tolist() == [[0, 2, 4, 6], [8, 10, 12, 14], [1, 3, 5, 7], [9, 11, 13, 15]]


def _square(x: float, y: float) -> list[float]:
    return [x, y, x + 10.0, y + 10.0]


def test_proposals_are_the_top_k_of_each_level_then_nms_within_a_level():
    rpn = _rpn(levels=["p2", "p3"], pre_nms_top_n_test=2, post_nms_top_n_test=1000).eval()
    anchors = torch.tensor([
        _square(0, 0), _square(20, 0), _square(40, 0), _square(60, 0),  # level p2
        _square(0, 0), _square(20, 40), _square(40, 40),                # level p3
    ])
    logits = torch.tensor([[4.0, 3.0, 2.0, -1.0, 1.0, -2.0, 0.5]])
    proposals, scores = rpn.select_proposals(anchors, logits, torch.zeros(1, 7, 4), [4, 3], [(100, 100)])
    # top 2 of p2: anchors 0 (4.0), 1 (3.0); top 2 of p3: anchors 4 (1.0), 6 (0.5). The image's top 4
    # would have taken anchor 2 (2.0) instead of 4. Anchor 4 is anchor 0's box on another level:
    # NMS runs within a level, so both stay. Output by decreasing score.
    torch.testing.assert_close(proposals[0], anchors[[0, 1, 4, 6]])
    torch.testing.assert_close(scores[0], torch.sigmoid(torch.tensor([4.0, 3.0, 1.0, 0.5])))


def test_nms_within_a_level_and_the_top_n_per_image():
    rpn = _rpn(pre_nms_top_n_test=10, post_nms_top_n_test=2, nms_thresh=0.7).eval()
    anchors = torch.tensor([_square(0, 0), [0.0, 0.0, 10.0, 9.0], _square(30, 0), _square(60, 0)])
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    proposals, _ = rpn.select_proposals(anchors, logits, torch.zeros(1, 4, 4), [4], [(100, 100)])
    # anchor 1 overlaps anchor 0 at IoU 0.9 > 0.7 and scores lower: suppressed; of the three left
    # the best 2 per image are kept
    torch.testing.assert_close(proposals[0], anchors[[0, 2]])


def test_proposals_are_decoded_and_clipped_to_the_image():
    rpn = _rpn().eval()
    anchors = torch.tensor([[80.0, 80.0, 100.0, 100.0]])  # centre (90, 90), 20 x 20
    deltas = torch.tensor([[[0.5, 0.0, math.log(2.0), 0.0]]])  # centre x + 0.5·20, width x 2
    proposals, _ = rpn.select_proposals(anchors, torch.zeros(1, 1), deltas, [1], [(95, 105)])
    # decoded (80, 80, 120, 100), clipped to the 95 x 105 image: x2 105, y2 95
    torch.testing.assert_close(proposals[0], torch.tensor([[80.0, 80.0, 105.0, 95.0]]))


def test_training_mode_selects_with_the_training_top_k():
    rpn = _rpn(pre_nms_top_n_train=1, pre_nms_top_n_test=3).train()
    anchors = torch.tensor([_square(0, 0), _square(20, 0), _square(40, 0)])
    logits = torch.tensor([[0.0, 2.0, 1.0]])
    proposals, _ = rpn.select_proposals(anchors, logits, torch.zeros(1, 3, 4), [3], [(100, 100)])
    torch.testing.assert_close(proposals[0], anchors[[1]])
    rpn.eval()
    proposals, _ = rpn.select_proposals(anchors, logits, torch.zeros(1, 3, 4), [3], [(100, 100)])
    assert len(proposals[0]) == 3


def test_the_objectness_loss_is_torchs_binary_cross_entropy():
    """The hand-written sum above, cross-checked against torch's own BCE on the same 5 anchors."""
    logits = torch.tensor([[2.0, 1.0, 7.0, -1.0, 0.5, -3.0]])
    losses = _rpn().losses(ANCHORS, logits, torch.zeros(1, 6, 4), [{"boxes": GT}], None)
    kept = [0, 1, 3, 4, 5]
    reference = F.binary_cross_entropy_with_logits(logits[0, kept], torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0]))
    torch.testing.assert_close(losses["loss_rpn_objectness"], reference)
