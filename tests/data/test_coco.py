"""The COCO loader on hand-written edge cases and on 160 real COCO photographs."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from fpn.data.coco import CocoDetection
from fpn.errors import DatasetError
from fpn.evaluation.coco import as_coco
from tests.conftest import COCO_REAL

REAL = COCO_REAL


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
    ds = CocoDetection(tmp_path / "img", _write(tmp_path, images, anns, CATS), on_bad_annotations="warn")
    assert ds.label_to_category_id == {1: 3, 2: 17, 3: 90} and ds.class_names == ["c", "q", "z"]
    assert ds.stats["dropped_degenerate"] == 4 and ds.stats["clipped"] == 1
    assert ds.stats["unknown_image"] == 1 and ds.stats["unknown_category"] == 1 and ds.stats["crowd"] == 1
    assert ds.stats["images_without_annotations"] == 2
    assert "2 annotations skipped: bbox of zero or negative size (ids 3, 4)" in caplog.text
    assert "1 annotation skipped: bbox not finite (id 5)" in caplog.text
    assert "1 annotation skipped: bbox outside its image (id 9)" in caplog.text
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


def test_polygon_and_rle_masks(tmp_path, capsys):
    images = [{"id": 1, **_image(tmp_path, "a.png", size=(8, 6))}]
    square = np.zeros((6, 8), dtype=np.uint8)
    square[1:4, 2:6] = 1  # rows 1..3, columns 2..5
    compressed = mask_utils.encode(np.asfortranarray(square))
    compressed["counts"] = compressed["counts"].decode()
    # uncompressed RLE runs in column-major order: 2 columns of 6 zeros, then 4 x (1 zero, 3 ones, 2 zeros)
    uncompressed = {"size": [6, 8], "counts": [13, 3, 3, 3, 3, 3, 3, 3, 14]}
    polygon = [[2.0, 1.0, 6.0, 1.0, 6.0, 4.0, 2.0, 4.0]]
    triangle = [[1.0, 0.5, 7.5, 1.0, 3.0, 5.5]]
    two_parts = [[0.0, 0.0, 2.5, 0.0, 2.5, 2.0, 0.0, 2.0], [5.0, 3.0, 8.0, 3.0, 8.0, 6.0, 5.0, 6.0]]
    segmentations = [(compressed, [2, 1, 4, 3]), (uncompressed, [2, 1, 4, 3]), (polygon, [2, 1, 4, 3]),
                     (triangle, [1, 0.5, 6.5, 5]), (two_parts, [0, 0, 8, 6])]
    anns = [{"id": i + 1, "image_id": 1, "category_id": 3, "bbox": bbox, "iscrowd": 0, "segmentation": seg}
            for i, (seg, bbox) in enumerate(segmentations)]
    ann_file = _write(tmp_path, images, anns, CATS)
    masks = CocoDetection(tmp_path / "img", ann_file, load_masks=True)[0][1]["masks"]
    assert masks.shape == (5, 6, 8)
    for mask in masks[:2]:
        assert np.array_equal(mask.numpy(), square)
    # polygons, one or several per object: rasterised exactly as pycocotools' own COCO.annToMask does
    coco = COCO(str(ann_file))
    capsys.readouterr()  # COCO() prints its progress
    for mask, ann_id in zip(masks[2:], (3, 4, 5), strict=True):
        want = coco.annToMask(coco.anns[ann_id])
        assert want.sum() > 0 and np.array_equal(mask.numpy(), want), f"annotation {ann_id}"
    assert masks[4][0, 0] == 1 and masks[4][5, 7] == 1  # both parts of the two-part object


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


def _valid(tmp_path: Path) -> dict:
    """Two 40 x 30 images with two objects each, in COCO form."""
    images = [{"id": 1, **_image(tmp_path, "a.png")}, {"id": 2, **_image(tmp_path, "b.png")}]
    anns = [{"id": i + 1, "image_id": image_id, "category_id": cat, "bbox": box, "area": 1.0, "iscrowd": 0}
            for i, (image_id, cat, box) in enumerate([(1, 3, [1, 2, 10, 5]), (1, 90, [20, 10, 8, 8]),
                                                       (2, 17, [0, 0, 12, 12]), (2, 3, [25, 15, 10, 10])])]
    return {"images": images, "annotations": anns, "categories": CATS}


def _unknown_category(data: dict) -> None:
    data["annotations"] += [{"id": 17, "image_id": 1, "category_id": 99, "bbox": [30, 20, 5, 5], "area": 25.0,
                             "iscrowd": 0},
                            {"id": 18, "image_id": 2, "category_id": 4, "bbox": [1, 20, 5, 5], "area": 25.0,
                             "iscrowd": 0}]


def _unknown_image(data: dict) -> None:
    data["annotations"] += [{"id": 21 + i, "image_id": image_id, "category_id": 3, "bbox": [1, 1, 5, 5],
                             "area": 25.0, "iscrowd": 0} for i, image_id in enumerate([7, 8, 7])]


def _duplicate_image(data: dict) -> None:
    data["images"].append({"id": 2, "file_name": "other.png", "width": 20, "height": 10})


def _dump(tmp_path: Path, data: dict) -> Path:
    ann_file = tmp_path / "annotations.json"
    ann_file.write_text(json.dumps(data))
    return ann_file


@pytest.mark.parametrize("fault, message", [
    (_unknown_category,
     "2 annotations name category ids not in 'categories' (first: annotation 17, category 99)"),
    (_unknown_image, "3 annotations name image ids not in 'images' (first: annotation 21, image 7)"),
    (_duplicate_image, "1 image repeats an earlier image id (first: image 2)"),
])
def test_unknown_and_repeated_ids_are_a_one_line_error(tmp_path, fault, message):
    data = _valid(tmp_path)
    CocoDetection(tmp_path / "img", _dump(tmp_path, data))  # the valid file loads
    fault(data)
    with pytest.raises(DatasetError) as err:
        CocoDetection(tmp_path / "img", _dump(tmp_path, data))
    text = str(err.value)
    assert text.startswith(f"{tmp_path / 'annotations.json'}: {message}") and "\n" not in text


def test_warn_drops_unknown_and_repeated_ids(tmp_path, caplog):
    from pycocotools.coco import COCO

    from fpn.evaluation.coco import coco_box_ap, proposal_ar

    data = _valid(tmp_path)
    expected = {img["id"]: [a for a in data["annotations"] if a["image_id"] == img["id"]]
                for img in data["images"]}
    for fault in (_unknown_category, _unknown_image, _duplicate_image):
        fault(data)
    data["annotations"].append({"id": 30, "image_id": [1], "category_id": 3, "bbox": [1, 1, 5, 5],
                                "area": 25.0, "iscrowd": 0})  # unhashable: pycocotools cannot index it
    with caplog.at_level("WARNING", logger="fpn.data.coco"):
        ds = CocoDetection(tmp_path / "img", _dump(tmp_path, data), on_bad_annotations="warn")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    for counted in ("1 image repeats", "4 annotations name image ids", "2 annotations name category ids"):
        assert counted in warnings[0]
    assert [ds.stats[k] for k in ("duplicate_image_id", "unknown_image", "unknown_category")] == [1, 4, 2]
    assert len(ds) == 2 and ds.stats["kept"] == 4
    for index, image_id in enumerate(expected):  # the first image 2 (40 x 30), its own two objects
        image, target = ds[index]
        assert target["image_id"] == image_id and image.shape == (3, 30, 40)
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in expected[image_id])]
        torch.testing.assert_close(target["boxes"], torch.tensor(boxes, dtype=torch.float32))
        assert [ds.label_to_category_id[lab] for lab in target["labels"].tolist()] == \
            [a["category_id"] for a in expected[image_id]]
    # pycocotools evaluates exactly what the dataset kept (the raw file would give image 2 as
    # other.png, and cannot be indexed at all with the unhashable image id)
    gt = as_coco(ds.to_coco_dict())
    assert isinstance(gt, COCO) and sorted(gt.getImgIds()) == [1, 2] and gt.imgs[2]["file_name"] == "b.png"
    assert sorted(gt.getAnnIds()) == [1, 2, 3, 4]
    proposals = [ds[i][1]["boxes"] for i in range(2)]
    assert proposal_ar(gt, proposals, [1, 2])["AR@100"] == pytest.approx(1.0)
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for anns in expected.values() for a in anns]
    assert coco_box_ap(gt, results)["AP"] == pytest.approx(1.0)


def test_the_ground_truth_of_a_clean_file_is_the_file(tmp_path):
    """pycocotools scores against the checked records; for a clean file they say what the file says."""
    data = _valid(tmp_path)
    ds = CocoDetection(tmp_path / "img", _dump(tmp_path, data), on_bad_annotations="warn")
    assert [ds.stats[k] for k in ("duplicate_image_id", "unknown_image", "unknown_category")] == [0, 0, 0]
    gt = ds.to_coco_dict()
    assert [(i["id"], i["file_name"], i["height"], i["width"]) for i in gt["images"]] == \
        [(i["id"], i["file_name"], i["height"], i["width"]) for i in data["images"]]
    fields = ("image_id", "category_id", "bbox", "area", "iscrowd")
    assert [[a[k] for k in fields] for a in gt["annotations"]] == \
        [[a[k] for k in fields] for a in data["annotations"]]
    assert gt["categories"] == CATS


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


# ---- file names that would be read from outside the image folder (issue 25, point 5)

@pytest.mark.parametrize("file_name", ["/etc/passwd", "../../../../etc/passwd", "sub/../../a.png",
                                       "..\\..\\a.png", "C:\\images\\a.png", "\\\\server\\share\\a.png"])
def test_a_file_name_outside_the_image_folder_is_refused_naming_the_image(tmp_path, file_name):
    images = [{"id": 1, **_image(tmp_path, "a.png")},
              {"id": 7, "file_name": file_name, "width": 40, "height": 30}]
    with pytest.raises(DatasetError) as err:
        CocoDetection(tmp_path / "img", _write(tmp_path, images, [], CATS))
    message = str(err.value)
    assert "image 7" in message and "data.allow_outside_image_paths" in message and "\n" not in message


def test_file_names_inside_the_folder_load_and_outside_ones_when_allowed(tmp_path):
    _image(tmp_path, "a.png")
    (tmp_path / "img" / "sub").mkdir()
    Image.new("RGB", (40, 30), (1, 2, 3)).save(tmp_path / "img" / "sub" / "b.png")
    Image.new("RGB", (20, 10), (200, 0, 0)).save(tmp_path / "outside.png")  # beside the image folder
    inside = [{"id": 1, "file_name": "./a.png"}, {"id": 2, "file_name": "sub/b.png"},
              {"id": 3, "file_name": "sub/../a.png"}]
    ds = CocoDetection(tmp_path / "img", _write(tmp_path, inside, [], CATS))
    assert [tuple(ds[i][0].shape) for i in range(3)] == [(3, 30, 40)] * 3
    outside = _write(tmp_path, [*inside, {"id": 4, "file_name": "../outside.png"}], [], CATS)
    ds = CocoDetection(tmp_path / "img", outside, allow_outside_image_paths=True)  # the user opted in
    torch.testing.assert_close(ds[3][0][:, 0, 0], torch.tensor([200 / 255, 0.0, 0.0]))


def test_the_opt_in_is_a_config_field(tmp_path, tiny_synth):
    from fpn.config.files import load_config
    from fpn.jobs.datasets import build_dataset

    ann = json.loads((tiny_synth / "train" / "annotations.json").read_text())
    ann["images"][0]["file_name"] = f"../../train/images/{ann['images'][0]['file_name']}"
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    paths = [f"data.train_images={tiny_synth}/val/images", f"data.train_annotations={tmp_path}/ann.json"]
    with pytest.raises(DatasetError, match=f"image {ann['images'][0]['id']}: file_name"):
        build_dataset(load_config(None, paths).data, "train")
    data = load_config(None, [*paths, "data.allow_outside_image_paths=true"]).data
    assert build_dataset(data, "train")[0][0].shape[0] == 3  # read from the train folder


# ---- annotations pycocotools cannot take get our one-line error (issue 25, point 6)

MALFORMED = [
    ([10, 10, 30, 10, 30, 20], "a polygon must be a list of numbers"),  # a flat list, not a list of polygons
    ([[10, 10, 30]], "a polygon has 3 coordinates"),
    ([[10, "a", 30, 10, 30, 20]], "a polygon must be a list of numbers"),
    ("10 10 30 10", "expected polygons (a list) or an RLE (an object), got str"),
    ({"counts": "PQ0"}, "an RLE needs 'size'"),
    ({"size": [30, 40], "counts": {"a": 1}}, "an RLE needs 'counts'"),
    ([{"size": [30, 40], "counts": "PQ0"}], "a polygon must be a list of numbers"),
]


def _pycocotools_fails_on(segmentation) -> bool:
    """Whether pycocotools' own conversion of a ground-truth segmentation raises (COCO.annToRLE)."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = {"images": [{"id": 1, "height": 30, "width": 40}], "categories": [{"id": 3}],
                    "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5],
                                     "area": 25, "iscrowd": 0, "segmentation": segmentation}]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    try:
        mask_utils.decode(coco.annToRLE(coco.anns[1]))
    except Exception:  # noqa: BLE001 - pycocotools raises bare Exception, TypeError, KeyError...
        return True
    return False


@pytest.mark.parametrize(("segmentation", "problem"), MALFORMED)
def test_a_malformed_segmentation_is_our_error_naming_the_annotation(tmp_path, segmentation, problem):
    assert _pycocotools_fails_on(segmentation)  # what users met before: pycocotools' own exception
    images = [{"id": 1, **_image(tmp_path, "a.png")}]
    anns = [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5], "iscrowd": 0,
             "segmentation": [[1, 1, 6, 1, 6, 6, 1, 6]]},
            {"id": 42, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5], "iscrowd": 0,
             "segmentation": segmentation}]
    ann_file = _write(tmp_path, images, anns, CATS)
    with pytest.raises(DatasetError) as err:
        CocoDetection(tmp_path / "img", ann_file)
    message = str(err.value)
    assert "annotation 42" in message and problem in message and "\n" not in message
    ds = CocoDetection(tmp_path / "img", ann_file, on_bad_annotations="warn", load_masks=True)
    assert ds.stats["bad_segmentation"] == 1 and ds[0][1]["masks"].shape == (1, 30, 40)
    assert as_coco(ds.to_coco_dict()).getAnnIds() == [1]  # the evaluation leaves it out too


@pytest.mark.parametrize("segmentation", [None, [], [[1, 1, 6, 1, 6, 6, 1, 6]], [[1, 1, 6, 6]],
                                          {"size": [30, 40], "counts": [0, 5, 1195]},
                                          {"size": [30, 40], "counts": "m13k000000ko0"}])  # by pycocotools
def test_well_formed_segmentations_pass(tmp_path, segmentation):
    images = [{"id": 1, **_image(tmp_path, "a.png")}]
    anns = [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5], "iscrowd": 0,
             "segmentation": segmentation}]
    assert CocoDetection(tmp_path / "img", _write(tmp_path, images, anns, CATS)).stats["kept"] == 1


def test_two_categories_with_one_id_are_refused(tmp_path):
    images = [{"id": 1, **_image(tmp_path, "a.png")}]
    cats = [{"id": 3, "name": "cat"}, {"id": 17, "name": "dog"}, {"id": 3, "name": "cow"}]
    with pytest.raises(DatasetError, match=r"categories\[0\] and categories\[2\] have the same id 3 "
                                           r"\('cat' and 'cow'\)"):
        CocoDetection(tmp_path / "img", _write(tmp_path, images, [], cats))


@pytest.mark.parametrize("image_id", ["000001.jpg", "1", True, 1.0])
def test_image_ids_that_are_not_integers_are_refused(tmp_path, image_id):
    images = [{"id": 1, **_image(tmp_path, "a.png")}, {"id": image_id, **_image(tmp_path, "b.png")}]
    with pytest.raises(DatasetError, match=r"images\[1\] has id .*: image ids must be integers"):
        CocoDetection(tmp_path / "img", _write(tmp_path, images, [], CATS))


def _compressed(mask: np.ndarray) -> str:
    rle = mask_utils.encode(np.asfortranarray(mask))
    return rle["counts"].decode()


# Found by the property tests (tests/data/test_fuzz.py): pycocotools trusts a segmentation, so a
# polygon corner at 1e308 made it rasterise until the process was killed for its memory, and RLE
# counts that do not cover height x width made it write past its buffer; huge integers in a bbox
# raised OverflowError from float().
@pytest.mark.parametrize(("segmentation", "problem"), [
    ([[1e308, 1, 5, 5, 1, 5]], "a polygon reaches x = 1e+308, far outside the image"),
    ([[1, 1, 5, -1e300, 1, 5]], "a polygon reaches y = -1e+300, far outside the image"),
    ({"size": [30, 40], "counts": [5000]},
     "an RLE's counts add up to 5000 pixels, not height x width = 1200"),
    ({"size": [30, 40], "counts": [10**400]}, "an RLE's counts add up to"),
    ({"size": [30, 40], "counts": "0PQ0"}, "an RLE's counts add up to 32 pixels"),
    ({"size": [3, 4], "counts": [12]}, "an RLE of size [3, 4] on an image of [30, 40]"),
])
def test_segmentations_pycocotools_would_choke_on_are_refused(tmp_path, segmentation, problem):
    images = [{"id": 1, **_image(tmp_path, "a.png")}]
    anns = [{"id": 7, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5], "iscrowd": 0,
             "segmentation": segmentation}]
    pattern = "annotation 7: " + problem.replace("[", r"\[").replace("+", r"\+")
    with pytest.raises(DatasetError, match=pattern):
        CocoDetection(tmp_path / "img", _write(tmp_path, images, anns, CATS), load_masks=True)


def test_compressed_rle_counts_are_read_as_pycocotools_writes_them(tmp_path):
    """A compressed RLE that pycocotools wrote for this image passes, and decodes to its mask."""
    mask = np.zeros((30, 40), dtype=np.uint8)
    mask[3:17, 5:33] = 1
    mask[20:, :4] = 1
    images = [{"id": 1, **_image(tmp_path, "a.png")}]
    anns = [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [5, 3, 28, 14], "iscrowd": 0,
             "segmentation": {"size": [30, 40], "counts": _compressed(mask)}}]
    ds = CocoDetection(tmp_path / "img", _write(tmp_path, images, anns, CATS), load_masks=True)
    assert np.array_equal(ds[0][1]["masks"][0].numpy(), mask)


@pytest.mark.parametrize("bbox", [[10**400, 1, 2, 2], [1, 1, 10**400, 2], [1e308, 1, 1e308, 2]])
def test_huge_numbers_in_a_bbox_are_skipped_as_not_finite(tmp_path, bbox):
    images = [{"id": 1, **_image(tmp_path, "a.png")}]
    anns = [{"id": 1, "image_id": 1, "category_id": 3, "bbox": bbox, "iscrowd": 0}]
    ds = CocoDetection(tmp_path / "img", _write(tmp_path, images, anns, CATS))
    assert ds.stats["dropped_degenerate"] == 1 and len(ds.images[0].labels) == 0


@pytest.mark.skipif(not REAL.is_dir(), reason="coco-real-160 not present beside the repository")
def test_the_checked_records_score_as_the_real_file_does():
    """On 160 real COCO photographs (nothing to skip or clip), pycocotools gives the same AP against
    ``to_coco_dict()`` as against the annotation file itself, for detections jittered off the truth."""
    import random

    from fpn.evaluation.coco import coco_box_ap

    raw = json.loads((REAL / "annotations.json").read_text())
    rng = random.Random(0)
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": rng.random(),
                "bbox": [a["bbox"][0] + rng.uniform(-3, 3), a["bbox"][1] + rng.uniform(-3, 3),
                         *a["bbox"][2:]]}
               for a in raw["annotations"] if not a["iscrowd"]]
    ds = CocoDetection(REAL / "images", REAL / "annotations.json")
    assert ds.stats["clipped"] == ds.stats["dropped_degenerate"] == 0
    assert len(ds.to_coco_dict()["annotations"]) == len(raw["annotations"])
    from_file = coco_box_ap(str(REAL / "annotations.json"), results)
    from_records = coco_box_ap(ds.to_coco_dict(), results)
    assert 0.5 < from_file["AP"] < 0.9  # the jitter costs some AP: the comparison is not between two ones
    for key, value in from_file.items():
        assert from_records[key] == pytest.approx(value, abs=1e-12), key
