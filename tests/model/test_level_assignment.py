"""The Eq. 1 level of ground-truth boxes under a config, against levels worked out by hand.

Eq. 1 (docs/paper.md §3): k = floor(k0 + log2(sqrt(wh) / canonical)), clamped to the RoI heads'
levels, on the box as the detector sees it, after its resize.
"""

from __future__ import annotations

import pytest
import torch

from fpn.config.files import load_config
from fpn.model.level_assignment import gt_levels, level_shares, resized_hw


def _square(side: float, x: float = 0.0, y: float = 0.0) -> list[float]:
    return [x, y, x + side, y + side]


def test_levels_of_the_paper_s_config_by_hand():
    cfg = load_config(None).model  # canonical 224 on P4, levels P2..P5, shorter side 800, longer <= 1333
    image_hw = (800, 800)  # resized by 1: boxes keep their size
    boxes = torch.tensor([_square(224), _square(112), _square(448),  # k0, one level below, one above
                          _square(56),  # two below: P2
                          _square(223),  # just under 224: floor(4 + log2(223/224)) = floor(3.994) = 3
                          _square(28), _square(4),  # below P2: clamped to 2
                          _square(799),  # log2(799/224) = 1.83: floor(5.83) = 5 (and P6 is no RoI level)
                          [0, 0, 112, 448]])  # sqrt(112 * 448) = 224: the area decides, not the shape
    assert gt_levels(boxes, image_hw, cfg).tolist() == [4, 3, 5, 2, 3, 2, 2, 5, 4]


def test_the_detector_s_resize_comes_first():
    cfg = load_config(None).model
    # a 400 x 600 image: shorter side to 800, so x2 (1200 <= 1333): a 112-px box becomes 224 -> P4
    assert resized_hw((400, 600), cfg) == (800, 1200)
    assert gt_levels(torch.tensor([_square(112)]), (400, 600), cfg).tolist() == [4]
    # a 500 x 2000 image: the longer side caps the scale at 1333 / 2000; a 224-px box becomes 149.3 px:
    # floor(4 + log2(149.3 / 224)) = floor(3.415) = 3
    assert resized_hw((500, 2000), cfg) == (333, 1333)
    assert gt_levels(torch.tensor([_square(224)]), (500, 2000), cfg).tolist() == [3]
    # the same box at another shorter side (a training scale): 800 -> 400 halves it -> one level finer
    assert gt_levels(torch.tensor([_square(224)]), (800, 800), cfg, min_size=400).tolist() == [3]


def test_the_demo_preset_s_canonical_size():
    cfg = load_config("demo").model  # canonical 112 on P4, 256-px images kept at 256
    boxes = torch.tensor([_square(112), _square(56), _square(28), _square(224), _square(8)])
    assert gt_levels(boxes, (256, 256), cfg).tolist() == [4, 3, 2, 5, 2]


def test_a_single_level_baseline_puts_everything_on_it():
    cfg = load_config(None, ["model.roi_heads.levels=[p4]"]).model
    assert gt_levels(torch.tensor([_square(16), _square(700)]), (800, 800), cfg).tolist() == [4, 4]


def test_shares_per_level():
    cfg = load_config(None).model
    images = [(torch.tensor([_square(224), _square(112), _square(112)]), (800, 800)),
              (torch.tensor([_square(112)]), (400, 600)),  # doubled: 224 -> P4
              (torch.zeros(0, 4), (800, 800))]  # an image without objects counts nothing
    shares = level_shares(images, cfg)
    assert list(shares) == ["p2", "p3", "p4", "p5"]  # every level of the heads, in order
    assert shares == pytest.approx({"p2": 0.0, "p3": 0.5, "p4": 0.5, "p5": 0.0})
    assert level_shares([], cfg) == {"p2": 0.0, "p3": 0.0, "p4": 0.0, "p5": 0.0}
