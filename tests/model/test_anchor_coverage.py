"""Anchor coverage (fpn.model.anchor_coverage) on hand-made boxes, IoUs computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from fpn.config.schema import ModelConfig
from fpn.model.anchor_coverage import best_anchor_iou, coverage, rpn_anchors, size_bucket


def _one_level_config() -> ModelConfig:
    """P2 only, one 32-px square anchor per cell (stride 4), 64-px images left at their size."""
    cfg = ModelConfig()
    cfg.rpn.levels = ["p2"]
    cfg.rpn.anchors.sizes = {"p2": [32.0]}
    cfg.rpn.anchors.aspect_ratios = [1.0]
    cfg.input.min_size_test, cfg.input.max_size = 64, 64
    return cfg


def test_anchors_lie_on_the_stride_grid_centred_at_cell_corners():
    anchors = rpn_anchors(_one_level_config(), (64, 64))
    assert anchors.shape == (16 * 16, 4)  # a 64-px image: 16 x 16 cells of stride 4, one anchor each
    assert anchors[0].tolist() == [-16, -16, 16, 16]  # centred on (0, 0)
    assert anchors[1].tolist() == [-12, -16, 20, 16]  # the next cell along x
    assert [0, 0, 32, 32] in anchors.tolist()  # centred on (16, 16)


def test_coverage_per_size_bucket_on_hand_made_boxes():
    cfg = _one_level_config()
    boxes = torch.tensor([[0.0, 0.0, 32.0, 32.0],   # exactly an anchor: IoU 1
                          [1.0, 1.0, 31.0, 31.0],   # 30 x 30 inside [0, 0, 32, 32]: IoU 900 / 1024
                          [2.0, 2.0, 18.0, 18.0]])  # 16 x 16: at best 256 / 1024 = 0.25
    best = best_anchor_iou(boxes, rpn_anchors(cfg, (64, 64)))
    assert best.tolist() == pytest.approx([1.0, 900 / 1024, 0.25])
    areas = torch.tensor([32.0**2, 30.0**2, 16.0**2])  # COCOeval's areas: medium, small, small
    assert size_bucket(areas) == ["medium", "small", "small"]
    result = coverage([(boxes, areas, (64, 64))], cfg)
    assert result["small"].objects == 2 and result["small"].covered == pytest.approx(0.5)
    assert result["small"].mean_best_iou == pytest.approx((900 / 1024 + 0.25) / 2)
    assert result["medium"].objects == 1 and result["medium"].covered == 1.0
    assert result["large"].objects == 0 and math.isnan(result["large"].covered)
    assert result["all"].objects == 3 and result["all"].covered == pytest.approx(2 / 3)
    # a stricter threshold leaves the 30 x 30 box (0.879) uncovered
    assert coverage([(boxes, areas, (64, 64))], cfg, threshold=0.9)["small"].covered == 0.0


def test_boxes_are_measured_in_the_resized_image():
    cfg = _one_level_config()
    cfg.input.min_size_test, cfg.input.max_size = 64, 64
    # a 128-px image is resized to 64 px: its 64 x 64 box becomes the 32 x 32 anchor at (16, 16)
    result = coverage([(torch.tensor([[0.0, 0.0, 64.0, 64.0]]), torch.tensor([64.0**2]), (128, 128))], cfg)
    assert result["medium"].covered == 1.0 and result["medium"].mean_best_iou == pytest.approx(1.0)
