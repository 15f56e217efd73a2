"""Anchors per level (docs/paper.md §2), against hand-computed values and torchvision's generator."""

from __future__ import annotations

import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList

from fpn.model.anchors import AnchorGenerator, cell_anchors

SIZES = {"p2": [32], "p3": [64], "p4": [128], "p5": [256], "p6": [512]}
STRIDES = {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}


def test_cell_anchors_hand_computed():
    # ratio 1:2 (h/w = 0.5) at 32 px: w = 32/sqrt(.5) = 45.25, h = 22.63; halves 22.63, 11.31
    exact = cell_anchors([32], [0.5, 1.0, 2.0], round_to_int=False)
    torch.testing.assert_close(exact[0], torch.tensor([-22.627, -11.314, 22.627, 11.314]), atol=1e-3, rtol=0)
    torch.testing.assert_close(exact[1], torch.tensor([-16.0, -16.0, 16.0, 16.0]))
    rounded = cell_anchors([32], [0.5, 1.0, 2.0], round_to_int=True)
    assert rounded[0].tolist() == [-23.0, -11.0, 23.0, 11.0]  # torchvision's rounding (docs/interop.md §5)
    areas = (exact[:, 2] - exact[:, 0]) * (exact[:, 3] - exact[:, 1])
    torch.testing.assert_close(areas, torch.full((3,), 32.0**2))


def test_counts_and_centres_per_level():
    gen = AnchorGenerator(SIZES, STRIDES, [0.5, 1.0, 2.0])
    padded = (256, 320)
    feature_hw = {lvl: (-(-256 // s), -(-320 // s)) for lvl, s in STRIDES.items()}
    anchors = gen(feature_hw, padded, torch.device("cpu"))
    for level, level_anchors in zip(SIZES, anchors, strict=True):
        h, w = feature_hw[level]
        assert level_anchors.shape == (h * w * 3, 4)  # 3 anchors per location
        centres = (level_anchors[:, :2] + level_anchors[:, 2:]) / 2
        stride = STRIDES[level]
        # order (y, x, anchor): the 3 anchors of cell (y=1, x=2) sit at (2*stride, 1*stride)
        cell = (1 * w + 2) * 3
        torch.testing.assert_close(centres[cell : cell + 3], torch.tensor([[2.0 * stride, stride]] * 3))
    assert sum(len(a) for a in anchors) == 3 * sum(h * w for h, w in feature_hw.values())


def test_matches_torchvision_including_p6_stride_quirk():
    ours = AnchorGenerator(SIZES, STRIDES, [0.5, 1.0, 2.0], stride_from_feature_size=True)
    theirs = TVAnchorGenerator(tuple((s[0],) for s in SIZES.values()), ((0.5, 1.0, 2.0),) * 5)
    padded = (800, 1216)  # P5 is 25 x 38: P6 is 13 x 19 and torchvision's stride is 800 // 13 = 61
    feature_hw = {lvl: (-(-800 // s), -(-1216 // s)) for lvl, s in STRIDES.items()}
    feature_hw["p6"] = (13, 19)
    maps = [torch.zeros(1, 1, *feature_hw[lvl]) for lvl in SIZES]
    reference = theirs(ImageList(torch.zeros(1, 3, *padded), [padded]), maps)[0]
    torch.testing.assert_close(torch.cat(ours(feature_hw, padded, torch.device("cpu"))), reference)
    declared = AnchorGenerator(SIZES, STRIDES, [0.5, 1.0, 2.0])(feature_hw, padded, torch.device("cpu"))
    # second cell of P6 sits at x = 64 (declared stride); half-widths 362 (1:2), 256, 181 (2:1)
    assert declared[-1][3:6, 0].tolist() == [64 - 362, 64 - 256, 64 - 181]
