"""The COCO loader on hand-written edge cases and on 160 real COCO photographs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from fpn.data import CocoDetection, DatasetError

REAL = Path(os.environ.get("FPN_COCO_REAL",
                           Path(__file__).resolve().parents[2] / "shared/data/coco-real-160"))


def _write(tmp_path: Path, images: list[dict], annotations: list[dict], categories: list[dict]) -> Path:
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return ann_file


def _image(tmp_path: Path, name: str, mode: str = "RGB", size=(40, 30)) -> dict:
    (tmp_path / "img").mkdir(exist_ok=True)
    colour = {"RGB": (10, 20, 30), "L": 128, "RGBA": (10, 20, 30, 40), "P": 3}[mode]
    Image.new(mode, size, colour).save(tmp_path / "img" / name)
    return {"file_name": name, "width": size[0], "height": size[1]}


CATS = [{"id": 3, "name": "c"}, {"id": 17, "name": "q"}, {"id": 90, "name": "z"}]


def test_edge_cases(tmp_path, caplog):
    images = [{"id": 1, **_image(tmp_path, "a.png")}, {"id": 2, **_image(tmp_path, "b.png", "L")},
              {"id": 5, **_image(tmp_path, "c.png", "RGBA")}, {"id": 6, **_image(tmp_path, "d.png", "P")}]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 90, "bbox": [1, 2, 10, 5], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [0, 0, 20, 20], "iscrowd": 1},  # crowd
        {"id": 3, "image_id": 1, "category_id": 17, "bbox": [5, 5, 0, 4], "iscrowd": 0},  # zero width
        {"id": 4, "image_id": 1, "category_id": 17, "bbox": [5, 5, -3, 4], "iscrowd": 0},  # negative
        {"id": 5, "image_id": 1, "category_id": 17, "bbox": [float("nan"), 5, 3, 4], "iscrowd": 0},
        {"id": 6, "image_id": 2, "category_id": 17, "bbox": [30, 20, 20, 20], "iscrowd": 0},  # partly out
        {"id": 7, "image_id": 99, "category_id": 17, "bbox": [1, 1, 2, 2], "iscrowd": 0},  # unknown image
        {"id": 8, "image_id": 2, "category_id": 4, "bbox": [1, 1, 2, 2], "iscrowd": 0},  # unknown category
        {"id": 9, "image_id": 2, "category_id": 3, "bbox": [45, 1, 2, 2], "iscrowd": 0},  # fully outside
    ]
    ds = CocoDetection(tmp_path / "img", _write(tmp_path, images, anns, CATS))
    assert ds.label_to_category_id == {1: 3, 2: 17, 3: 90} and ds.class_names == ["c", "q", "z"]
    assert ds.stats["dropped_degenerate"] == 4 and ds.stats["clipped"] == 1
    assert ds.stats["unknown_image"] == 1 and ds.stats["unknown_category"] == 1 and ds.stats["crowd"] == 1
    assert ds.stats["images_without_annotations"] == 2
    assert "dropped degenerate" in caplog.text
    image, target = ds[0]
    assert image.shape == (3, 30, 40) and image.dtype == torch.float32
    torch.testing.assert_close(target["boxes"], torch.tensor([[1.0, 2.0, 11.0, 7.0]]))
    assert target["labels"].tolist() == [3]  # category 90 -> label 3
    torch.testing.assert_close(target["crowd_boxes"], torch.tensor([[0.0, 0.0, 20.0, 20.0]]))
    _, target = ds[1]
    torch.testing.assert_close(target["boxes"], torch.tensor([[30.0, 20.0, 40.0, 30.0]]))  # clipped to 40x30
    for index in (2, 3):  # RGBA and palette images: 3 channels; no annotations: an empty (0, 4)
        image, target = ds[index]
        assert image.shape == (3, 30, 40) and target["boxes"].shape == (0, 4)
    torch.testing.assert_close(ds[1][0][:, 0, 0], torch.full((3,), 128 / 255))  # greyscale replicated


def test_polygon_and_rle_masks(tmp_path):
    images = [{"id": 1, **_image(tmp_path, "a.png", size=(8, 6))}]
    square = np.zeros((6, 8), dtype=np.uint8)
    square[1:4, 2:6] = 1  # rows 1..3, columns 2..5
    compressed = mask_utils.encode(np.asfortranarray(square))
    compressed["counts"] = compressed["counts"].decode()
    # uncompressed RLE runs in column-major order: 2 columns of 6 zeros, then 4 x (1 zero, 3 ones, 2 zeros)
    uncompressed = {"size": [6, 8], "counts": [13, 3, 3, 3, 3, 3, 3, 3, 14]}
    polygon = [[2.0, 1.0, 6.0, 1.0, 6.0, 4.0, 2.0, 4.0]]
    anns = [{"id": i + 1, "image_id": 1, "category_id": 3, "bbox": [2, 1, 4, 3], "iscrowd": 0,
             "segmentation": seg} for i, seg in enumerate([compressed, uncompressed, polygon])]
    ds = CocoDetection(tmp_path / "img", _write(tmp_path, images, anns, CATS), load_masks=True)
    masks = ds[0][1]["masks"]
    assert masks.shape == (3, 6, 8)
    for mask in masks[:2]:
        assert np.array_equal(mask.numpy(), square)
    assert masks[2].sum() >= square.sum() and masks[2][~torch.from_numpy(square).bool()].sum() <= 10


@pytest.mark.parametrize("content, problem", [
    ("{not json", "not valid JSON"),
    ('{"images": [], "annotations": []}', "no 'categories'"),
    ('{"images": {}, "annotations": [], "categories": []}', "'images' must be a list"),
    ('{"images": [{"id": 1}], "annotations": [], "categories": []}', "file_name"),
    ("[1, 2]", "JSON object"),
])
def test_not_coco_is_a_one_line_error_naming_the_file(tmp_path, content, problem):
    ann_file = tmp_path / "broken.json"
    ann_file.write_text(content)
    with pytest.raises(DatasetError, match=problem) as err:
        CocoDetection(tmp_path, ann_file)
    assert "broken.json" in str(err.value) and "\n" not in str(err.value)


def test_missing_and_corrupt_images_name_the_file(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    images = [{"id": 1, "file_name": "gone.jpg", "width": 4, "height": 4},
              {"id": 2, "file_name": "bad.jpg", "width": 4, "height": 4}]
    ds = CocoDetection(tmp_path / "img", _write(tmp_path, images, [], CATS))
    with pytest.raises(DatasetError, match="gone.jpg: image file not found"):
        ds[0]
    with pytest.raises(DatasetError, match="bad.jpg: cannot decode"):
        ds[1]


@pytest.mark.skipif(not REAL.is_dir(), reason="coco-real-160 not present beside the repository")
def test_real_coco_photographs():
    from pycocotools.coco import COCO

    ds = CocoDetection(REAL / "images", REAL / "annotations.json", load_masks=True)
    assert len(ds) == 160 and len(ds.class_names) == 80
    reference = COCO(str(REAL / "annotations.json"))
    assert sorted(ds.label_to_category_id.values()) == sorted(reference.getCatIds())
    assert ds.stats["crowd"] == 16
    total_objects = total_crowd = 0
    for index in range(0, 160, 8):  # every 8th photo: decoding all 160 with masks is slow
        image, target = ds[index]
        image_id = target["image_id"]
        info = reference.imgs[image_id]
        assert image.shape == (3, info["height"], info["width"])
        anns = reference.loadAnns(reference.getAnnIds(imgIds=image_id))
        expected = [a for a in anns if not a["iscrowd"] and a["bbox"][2] > 0 and a["bbox"][3] > 0]
        assert len(target["boxes"]) == len(expected)
        assert len(target["crowd_boxes"]) == sum(a["iscrowd"] for a in anns)
        assert target["masks"].shape[1:] == image.shape[1:]
        names = sorted(reference.cats[a["category_id"]]["name"] for a in expected)
        assert sorted(ds.class_names[label - 1] for label in target["labels"].tolist()) == names
        total_objects += len(expected)
        total_crowd += len(target["crowd_boxes"])
    assert total_objects > 50


def test_start_up_decodes_no_image(tmp_path, monkeypatch):
    """Indexing a dataset never opens an image: they are decoded only when asked for."""
    import PIL.Image

    images = [{"id": i, "file_name": f"missing_{i}.jpg", "width": 10, "height": 10} for i in range(1000)]
    anns = [{"id": i, "image_id": i, "category_id": 3, "bbox": [1, 1, 4, 4], "iscrowd": 0}
            for i in range(1000)]
    opened = []
    monkeypatch.setattr(PIL.Image, "open", lambda *a, **k: opened.append(a) or (_ for _ in ()).throw(OSError))
    ds = CocoDetection(tmp_path, _write(tmp_path, images, anns, CATS))
    assert len(ds) == 1000 and ds.stats["kept"] == 1000 and not opened
    assert not hasattr(ds, "_coco_dict")  # the parsed JSON is not kept
