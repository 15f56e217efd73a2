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


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    out = tmp_path_factory.mktemp("context")
    stats = generate(out, num_train=0, num_val=24, num_pretrain=6, image_size=256, seed=5, variant="context",
                     progress=False)
    return out, stats


def _decoded(ann):
    return mask_utils.decode(ann["segmentation"]).astype(bool)


def test_context_classes_are_read_off_the_region_that_holds_each_shape(context):
    out, stats = context
    data = json.loads((out / "val" / "annotations.json").read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    assert len(names) == 12 and stats["val"]["objects"] > 24 * 4
    checked = 0
    for image_id in {a["image_id"] for a in data["annotations"]}:
        anns = [a for a in data["annotations"] if a["image_id"] == image_id]
        regions = [a for a in anns if names[a["category_id"]] in ("ellipse", "hexagon")]
        assert 1 <= len(regions) <= 2
        for ann in anns:
            if ann in regions:
                continue
            shape, region_kind = names[ann["category_id"]].split(" in ")
            # the shape lies inside the box of exactly one region, and that region's kind names its class
            x, y, w, h = ann["bbox"]
            holders = [r for r in regions if r["bbox"][0] <= x and r["bbox"][1] <= y
                       and x + w <= r["bbox"][0] + r["bbox"][2] and y + h <= r["bbox"][1] + r["bbox"][3]]
            assert [names[r["category_id"]] for r in holders] == [region_kind], (image_id, ann["id"])
            checked += 1
    assert checked > 24 * 3


def test_distractors_are_objects_only_in_the_pretraining_split(context):
    out, _ = context
    pretrain = json.loads((out / "pretrain" / "annotations.json").read_text())
    assert [c["name"] for c in pretrain["categories"]] == ["circle", "square", "triangle", "star", "cross",
                                                           "ellipse", "hexagon"]
    # the pretraining split labels every shape (distractors outside the regions too) by its shape
    again = tmp = out.parent / "context_again"
    generate(tmp, num_train=0, num_val=0, num_pretrain=6, image_size=256, seed=5, variant="context",
             progress=False)
    assert (again / "pretrain" / "annotations.json").read_bytes() == (out / "pretrain" / "annotations.json"
                                                                      ).read_bytes()
    per_image = {}
    for ann in pretrain["annotations"]:
        per_image.setdefault(ann["image_id"], []).append(ann)
    regions = {i: [_decoded(a) for a in anns if a["category_id"] > 5] for i, anns in per_image.items()}
    outside = 0
    for image_id, anns in per_image.items():
        union = np.logical_or.reduce(regions[image_id]) if regions[image_id] else None
        for ann in anns:
            if ann["category_id"] <= 5 and union is not None:
                outside += not (_decoded(ann) & union).any()
    assert outside >= 6  # at least one distractor per image on average (1 to 6 are drawn)


def test_the_pretraining_split_is_another_random_stream(context):
    out, _ = context
    assert not np.array_equal(np.asarray(Image.open(out / "pretrain/images/000000.png")),
                              np.asarray(Image.open(out / "val/images/000000.png")))


# The paper's pixel geometry (issue 34): sizes like COCO's by COCOeval's area, class free of size.
@pytest.fixture(scope="module")
def paper_geometry(tmp_path_factory):
    out = tmp_path_factory.mktemp("paper")
    generate_split(out, 240, 384, seed=7, progress=False, variant="context", geometry="paper")
    return json.loads((out / "annotations.json").read_text())


def test_paper_geometry_draws_cocos_size_buckets_by_the_area_cocoeval_reads(paper_geometry):
    from fpn.data.synthetic_context import COCO_SHARES

    areas = np.array([a["area"] for a in paper_geometry["annotations"]], dtype=float)
    assert len(areas) > 240 * 3
    measured = {"small": (areas < 32**2).mean(), "medium": ((areas >= 32**2) & (areas < 96**2)).mean(),
                "large": (areas >= 96**2).mean()}
    for bucket, share in COCO_SHARES.items():  # 41 / 34 / 25 % by count, as on COCO
        assert abs(measured[bucket] - share) < 0.06, measured
    assert areas.max() <= 384**2 and areas.min() >= 24  # capped by the image; MIN_VISIBLE_PIXELS


def test_paper_geometry_has_every_class_in_every_size_bucket(paper_geometry):
    names = {c["id"]: c["name"] for c in paper_geometry["categories"]}
    assert len(names) == 10 and all(" in " in name for name in names.values())  # regions are context only
    seen = {(a["category_id"], "small" if a["area"] < 32**2 else "medium" if a["area"] < 96**2 else "large")
            for a in paper_geometry["annotations"]}
    assert seen == {(c, b) for c in names for b in ("small", "medium", "large")}


def test_paper_geometry_shapes_take_their_class_from_the_region_that_holds_them():
    from fpn.data.synthetic_context import REGIONS, SHAPE_CLASSES, make_context_image_paper

    checked = 0
    for index in range(12):
        _, objects = make_context_image_paper(np.random.default_rng([11, index]), 320)
        # regions come back unannotated (class -1) with their pre-training class (5 + kind)
        regions = [(REGIONS[generic - 5], mask) for cls, generic, mask in objects if cls < 0 and generic >= 5]
        assert 1 <= len(regions) <= 2
        for cls, _, mask in objects:
            if cls < 0:
                continue
            # the pixels just around a shape are its region's: shapes keep 2 px from each other and
            # from the outline, so a 1-px ring around one lies in the (visible) region that holds it
            ring = _grown_by_one(mask) & ~mask
            holders = [kind for kind, region in regions if (ring & region).sum() == ring.sum()]
            assert holders == [SHAPE_CLASSES[cls].split(" in ")[1]], (index, SHAPE_CLASSES[cls])
            checked += 1
    assert checked > 12 * 2


def _grown_by_one(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1)
    return (padded[1:-1, 1:-1] | padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
            | padded[:-2, :-2] | padded[:-2, 2:] | padded[2:, :-2] | padded[2:, 2:])


def test_the_calibration_split_is_a_random_stream_of_its_own(tmp_path):
    generate(tmp_path, num_train=2, num_val=3, num_calibration=3, image_size=128, seed=2, variant="context",
             geometry="paper", progress=False)
    scored = [np.asarray(Image.open(p)) for p in sorted((tmp_path / "val" / "images").glob("*.png"))]
    calibration = sorted((tmp_path / "calibration" / "images").glob("*.png"))
    assert len(calibration) == 3
    for path in calibration:
        pixels = np.asarray(Image.open(path))
        assert not any(np.array_equal(pixels, other) for other in scored)
