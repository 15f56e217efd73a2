"""Drawings: every test opens the picture and reads the pixels where a box or a label must be.

The canvas is a flat grey, so any coloured pixel was drawn; colours are the palette's, by class
(or by pyramid level), and outlines are 2 px wide on pictures under 500 px.
"""

from __future__ import annotations

import torch
from PIL import Image

from fpn.visualize import PALETTE, colour_of, draw_detections, draw_masks, label_position, line_width

GREY = (128, 128, 128)


def _canvas(width=200, height=120):
    return Image.new("RGB", (width, height), GREY)


def _det(boxes, labels, scores=None, levels=None):
    det = {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)}
    if scores is not None:
        det["scores"] = torch.tensor(scores)
    if levels is not None:
        det["levels"] = torch.tensor(levels)
    return det


def test_label_positions_by_hand():
    # room above the box: the tag sits on the box's top edge, 12 px tall -> y = 40 - 12
    assert label_position([30, 40, 90, 80], (50, 12), (200, 120)) == (30, 28)
    # no room above: just inside the top edge
    assert label_position([30, 5, 90, 80], (50, 12), (200, 120)) == (30, 5)
    # a box at the right edge: the tag moves left so that it ends at the last column (200 - 50)
    assert label_position([180, 40, 199, 80], (50, 12), (200, 120)) == (150, 28)
    # a box at the bottom-right corner whose top is too close to the bottom: moved up to 120 - 12
    assert label_position([190, 115, 199, 119], (50, 12), (200, 120)) == (150, 103)
    # a tag wider than the picture starts at x = 0
    assert label_position([10, 40, 20, 80], (300, 12), (200, 120)) == (0, 28)


def test_each_class_has_its_colour_on_its_outline():
    drawn = draw_detections(_canvas(), _det([[20, 40, 80, 100], [120, 40, 180, 100]], [1, 2], [0.9, 0.8]))
    # the left edge at mid-height (x = x1, and x1 + 1 inside the 2-px outline), the bottom edge
    for x, y, label in ((20, 70, 1), (21, 70, 1), (50, 99, 1), (120, 70, 2), (150, 99, 2)):
        assert drawn.getpixel((x, y)) == PALETTE[label], (x, y)
    assert drawn.getpixel((50, 70)) == GREY  # inside the box: not filled
    assert drawn.getpixel((23, 70)) == GREY  # past the 2-px outline
    assert line_width((200, 120)) == 2


def test_the_best_detection_is_drawn_last_and_its_label_is_on_top():
    # two boxes sharing their left edge; listed best first, as the model returns them
    boxes = [[20, 40, 100, 100], [20, 40, 100, 100]]
    drawn = draw_detections(_canvas(), _det(boxes, [1, 2], [0.95, 0.6]))
    assert drawn.getpixel((20, 70)) == PALETTE[1]  # the 0.95 box covers the 0.6 one
    drawn = draw_detections(_canvas(), _det(boxes, [2, 1], [0.6, 0.95]))  # order of the input does not matter
    assert drawn.getpixel((20, 70)) == PALETTE[1]
    # both tags go to the same place above the box: the top one is the best's ("1 0.95")
    assert drawn.getpixel((21, 38)) == PALETTE[1]


def test_detections_below_the_threshold_are_not_drawn():
    det = _det([[20, 40, 80, 100], [120, 40, 180, 100]], [1, 2], [0.7, 0.4])
    drawn = draw_detections(_canvas(), det)  # default threshold 0.5
    assert drawn.getpixel((20, 70)) == PALETTE[1] and drawn.getpixel((120, 70)) == GREY
    drawn = draw_detections(_canvas(), det, score_thresh=0.3)
    assert drawn.getpixel((120, 70)) == PALETTE[2]


def test_labels_stay_inside_the_picture():
    # a thin box at the right edge with a long class name: the tag is moved left, its right end at
    # the last column, and filled with the class colour there
    drawn = draw_detections(_canvas(), _det([[190, 50, 199, 100]], [3], [0.9]), ["a long class name"])
    tag_row = [drawn.getpixel((x, 45)) for x in range(200)]
    coloured = [x for x, pixel in enumerate(tag_row) if pixel != GREY]
    assert coloured and coloured[-1] == 199 and coloured[0] < 190  # ends at the edge, starts left of the box
    assert drawn.getpixel((198, 40)) == PALETTE[3]  # tag filling near its right end
    # a box touching the top: its tag goes inside, below the top edge, not above the picture
    drawn = draw_detections(_canvas(), _det([[20, 0, 100, 60]], [1], [0.9]))
    assert drawn.getpixel((24, 4)) == PALETTE[1]


def test_colour_by_level_uses_the_level_and_writes_it():
    det = _det([[20, 40, 80, 100], [120, 40, 180, 100]], [1, 1], [0.9, 0.8], levels=[2, 5])
    drawn = draw_detections(_canvas(), det, colour_by="level")
    assert drawn.getpixel((20, 70)) == colour_of(2) and drawn.getpixel((120, 70)) == colour_of(5)
    assert colour_of(2) != colour_of(5)


def test_ground_truth_without_scores_is_drawn_whole():
    drawn = draw_detections(_canvas(), _det([[20, 40, 80, 100]], [4]), ["a", "b", "c", "d"])
    assert drawn.getpixel((20, 70)) == PALETTE[4]


def test_boxes_reaching_outside_are_clipped_and_drawn():
    drawn = draw_detections(_canvas(), _det([[-10, 40, 250, 100]], [1], [0.9]))
    assert drawn.getpixel((0, 70)) == PALETTE[1] and drawn.getpixel((199, 70)) == PALETTE[1]


def test_masks_best_last():
    masks = torch.zeros(2, 120, 200, dtype=torch.bool)
    masks[0, 50:90, 50:110] = True
    masks[1, 50:90, 50:110] = True
    drawn = draw_masks(_canvas(), masks, torch.tensor([0.9, 0.7]), opacity=1.0)
    assert drawn.getpixel((80, 80)) == colour_of(0)  # mask 0 (0.9) over mask 1 (0.7)
    assert drawn.getpixel((20, 100)) == GREY
