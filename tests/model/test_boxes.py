"""Box coder, matcher and sampler (docs/paper.md §2, §3): hand-computed cases and properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops import box_iou as torchvision_box_iou

from fpn.box_format import clip_boxes
from fpn.model.boxes import (
    BELOW_LOW,
    BETWEEN,
    box_iou,
    decode_boxes,
    encode_boxes,
    intersection_over_area,
    match_anchors,
    sample_balanced,
)

coord = st.floats(min_value=-500, max_value=500, allow_nan=False, width=32)
side = st.floats(min_value=1, max_value=400, allow_nan=False, width=32)


@st.composite
def boxes_xyxy(draw, n=4):
    rows = []
    for _ in range(n):
        x, y, w, h = draw(coord), draw(coord), draw(side), draw(side)
        rows.append([x, y, x + w, y + h])
    return torch.tensor(rows, dtype=torch.float64)


@settings(max_examples=60, deadline=None)
@given(boxes_xyxy(), boxes_xyxy(), st.sampled_from([[1.0, 1.0, 1.0, 1.0], [10.0, 10.0, 5.0, 5.0]]))
def test_encode_decode_round_trip(targets, references, weights):
    # boxes may grow at most 1000/16 times per side before the clamp: keep within that
    ratio = (targets[:, 2:] - targets[:, :2]) / (references[:, 2:] - references[:, :2])
    if bool((ratio > 1000 / 16).any()):
        return
    deltas = encode_boxes(targets, references, weights)
    decoded = decode_boxes(deltas, references, weights)[:, 0]
    torch.testing.assert_close(decoded, targets, rtol=1e-9, atol=1e-6)


def test_encode_hand_computed():
    reference = torch.tensor([[0.0, 0.0, 10.0, 20.0]])  # centre (5, 10), 10 x 20
    target = torch.tensor([[5.0, 0.0, 15.0, 40.0]])  # centre (10, 20), 10 x 40
    deltas = encode_boxes(target, reference, [10.0, 10.0, 5.0, 5.0])
    # dx = 10 * (10 - 5) / 10, dy = 10 * (20 - 10) / 20, dw = 5 log(1), dh = 5 log(2)
    torch.testing.assert_close(deltas, torch.tensor([[5.0, 5.0, 0.0, 5 * math.log(2)]]))


def test_decode_clamps_huge_deltas():
    reference = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    box = decode_boxes(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), reference, [1.0, 1.0, 1.0, 1.0])[0, 0]
    torch.testing.assert_close(box[2] - box[0], torch.tensor(1000.0))  # 16 * 1000/16


def test_decode_class_specific_shape():
    deltas = torch.zeros(5, 4 * 3)
    reference = torch.tensor([[0.0, 0.0, 8.0, 8.0]]).repeat(5, 1)
    out = decode_boxes(deltas, reference, [10.0, 10.0, 5.0, 5.0])
    assert out.shape == (5, 3, 4)
    torch.testing.assert_close(out[:, 2], reference)


@settings(max_examples=40, deadline=None)
@given(boxes_xyxy(6), st.integers(1, 300), st.integers(1, 300))
def test_clip_stays_inside(boxes, height, width):
    clipped = clip_boxes(boxes, (height, width))
    assert bool((clipped[:, 0::2] >= 0).all() and (clipped[:, 0::2] <= width).all())
    assert bool((clipped[:, 1::2] >= 0).all() and (clipped[:, 1::2] <= height).all())


def test_matcher_thresholds_and_highest_iou_rule():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 110.0, 110.0]])
    anchors = torch.tensor([
        [0.0, 0.0, 10.0, 10.0],  # IoU 1 with gt 0 -> 0
        [0.0, 0.0, 10.0, 8.0],  # IoU 0.8 -> 0
        [0.0, 0.0, 10.0, 5.0],  # IoU 0.5: between 0.3 and 0.7 -> ignored
        [0.0, 0.0, 10.0, 2.0],  # IoU 0.2 -> background
        [100.0, 100.0, 110.0, 104.0],  # IoU 0.4 with gt 1, its best anchor -> 1 (low-quality rule)
        [50.0, 50.0, 60.0, 60.0],  # overlaps nothing -> background
    ])
    matches = match_anchors(gt, anchors, high=0.7, low=0.3, allow_low_quality=True)
    assert matches.tolist() == [0, 0, BETWEEN, BELOW_LOW, 1, BELOW_LOW]
    strict = match_anchors(gt, anchors, high=0.7, low=0.3, allow_low_quality=False)
    assert strict[4].item() == BETWEEN


def test_matcher_ties_all_claimed_and_chunking_agrees():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    # two anchors tie at IoU 0.25 (the best for this box), one is worse
    anchors = torch.tensor([[0.0, 0.0, 10.0, 2.5], [0.0, 7.5, 10.0, 10.0], [0.0, 0.0, 10.0, 1.0]])
    matches = match_anchors(gt, anchors, high=0.7, low=0.3, allow_low_quality=True)
    assert matches.tolist() == [0, 0, BELOW_LOW]
    torch.manual_seed(0)
    many_gt = torch.rand(50, 2) * 200
    many_gt = torch.cat([many_gt, many_gt + 5 + torch.rand(50, 2) * 60], dim=1)
    many_anchors = torch.rand(3000, 2) * 200
    many_anchors = torch.cat([many_anchors, many_anchors + 5 + torch.rand(3000, 2) * 60], dim=1)
    whole = match_anchors(many_gt, many_anchors, high=0.7, low=0.3, allow_low_quality=True,
                           chunk_size=1 << 30)
    chunked = match_anchors(many_gt, many_anchors, high=0.7, low=0.3, allow_low_quality=True,
                           chunk_size=999)
    assert torch.equal(whole, chunked)


def test_matcher_without_ground_truth_is_all_background():
    matches = match_anchors(torch.zeros(0, 4), torch.rand(7, 4), high=0.7, low=0.3, allow_low_quality=True)
    assert matches.tolist() == [BELOW_LOW] * 7


def test_sampler_respects_batch_and_fraction():
    labels = torch.tensor([1] * 300 + [0] * 1000 + [-1] * 50)
    pos, neg = sample_balanced(labels, 256, 0.5, torch.Generator().manual_seed(0))
    assert len(pos) == 128 and len(neg) == 128
    assert bool((labels[pos] == 1).all() and (labels[neg] == 0).all())
    few = torch.tensor([1] * 10 + [0] * 1000)
    pos, neg = sample_balanced(few, 256, 0.5, None)
    assert len(pos) == 10 and len(neg) == 246  # negatives fill the batch


def test_intersection_over_area():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    crowd = torch.tensor([[5.0, 0.0, 100.0, 100.0]])
    torch.testing.assert_close(intersection_over_area(boxes, crowd), torch.tensor([[0.5], [1.0]]))


@settings(max_examples=60, deadline=None)
@given(boxes_xyxy(5), boxes_xyxy(4))
def test_iou_is_symmetric_and_bounded(a, b):
    """fpn's box_iou (the one the matcher uses): symmetric, in [0, 1], 1 on the diagonal."""
    iou = box_iou(a, b)
    torch.testing.assert_close(iou, box_iou(b, a).T)
    assert bool(((iou >= 0) & (iou <= 1 + 1e-9)).all())
    torch.testing.assert_close(torch.diagonal(box_iou(a, a)), torch.ones(len(a), dtype=a.dtype))
    # matching is consistent with the IoU: a box matched as foreground has IoU >= 0.7 with its match
    matches = match_anchors(a, b, high=0.7, low=0.3, allow_low_quality=False)
    for j, m in enumerate(matches.tolist()):
        if m >= 0:
            assert iou[m, j] >= 0.7
        elif m == BELOW_LOW:
            assert bool((iou[:, j] < 0.3).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_box_iou_is_bit_identical_to_torchvisions(dtype):
    g = torch.Generator().manual_seed(0)
    corners = torch.rand(300, 2, generator=g, dtype=dtype) * 300 - 20
    sides = torch.rand(300, 2, generator=g, dtype=dtype) * 120
    sides[::7] = 0  # degenerate: zero width or height
    boxes = torch.cat([corners, corners + sides], dim=1)
    boxes[::11, 2] = boxes[::11, 0] - 3  # x2 < x1
    gt, anchors = boxes[:9], boxes[9:]
    for first, second in ((gt, anchors), (anchors, gt), (boxes, boxes), (gt[:0], anchors), (gt, anchors[:0])):
        want, got = torchvision_box_iou(first, second), box_iou(first, second)
        assert got.shape == want.shape and got.dtype == want.dtype
        assert torch.equal(torch.nan_to_num(got, nan=-1.0), torch.nan_to_num(want, nan=-1.0))
    one_corner_overlap = box_iou(torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([[1.0, 1.0, 3.0, 3.0]]))
    assert one_corner_overlap.item() == pytest.approx(1 / 7)  # 1 / (4 + 4 - 1)
