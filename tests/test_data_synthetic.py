"""The synthetic benchmark: determinism, size spread, and masks/boxes checked independently."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from fpn.data.synthetic import generate, generate_split


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    stats = generate_split(out, 30, 512, seed=3, progress=False)  # the default size
    return out, stats


@pytest.mark.slow
def test_same_seed_same_bytes_other_seed_differs(tmp_path, split):
    out, _ = split
    again = tmp_path / "again"
    generate_split(again, 30, 512, seed=3, progress=False)
    assert (again / "annotations.json").read_bytes() == (out / "annotations.json").read_bytes()
    for name in ("000000.png", "000029.png"):
        assert np.array_equal(np.asarray(Image.open(again / "images" / name)),
                              np.asarray(Image.open(out / "images" / name)))
    other = tmp_path / "other"
    generate_split(other, 1, 512, seed=4, progress=False)
    assert not np.array_equal(np.asarray(Image.open(other / "images/000000.png")),
                              np.asarray(Image.open(out / "images/000000.png")))


def test_every_size_bin_holds_a_fair_share(split):
    _, stats = split
    assert stats["objects"] > 100
    for bin_name in ("small", "medium", "large"):
        assert stats[bin_name] >= 0.12, stats


def test_boxes_and_areas_follow_the_masks(split):
    out, _ = split
    data = json.loads((out / "annotations.json").read_text())
    for ann in data["annotations"][:80]:
        mask = mask_utils.decode(ann["segmentation"]).astype(bool)
        ys, xs = np.nonzero(mask)
        x0, y0 = xs.min(), ys.min()
        assert ann["bbox"] == [x0, y0, xs.max() + 1 - x0, ys.max() + 1 - y0]  # tight box, pixel edges
        assert ann["area"] == mask.sum()
    masks_per_image: dict[int, np.ndarray] = {}
    for ann in data["annotations"]:  # visible masks of one image never overlap (occlusion resolved)
        mask = mask_utils.decode(ann["segmentation"]).astype(np.int32)
        masks_per_image[ann["image_id"]] = masks_per_image.get(ann["image_id"], 0) + mask
    assert max(int(m.max()) for m in masks_per_image.values()) == 1


def test_loads_in_pycocotools_with_two_splits(tmp_path):
    stats = generate(tmp_path, num_train=3, num_val=2, image_size=128, progress=False)
    assert stats["train"]["images"] == 3 and stats["val"]["images"] == 2
    coco = COCO(str(tmp_path / "val" / "annotations.json"))
    assert len(coco.getImgIds()) == 2 and len(coco.getCatIds()) == 5
