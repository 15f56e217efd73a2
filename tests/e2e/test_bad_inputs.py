"""Dirty real-world inputs: each is handled correctly or gets a one-line error naming the file."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fpn.config.files import load_config
from fpn.data.coco import CocoDetection
from fpn.data.images import read_image
from fpn.errors import DatasetError
from fpn.model.detector import FasterRCNN
from tests.conftest import TINY_MODEL


def _jpeg_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **kwargs)
    return buffer.getvalue()


def test_truncated_and_empty_files_name_the_file(tmp_path):
    data = _jpeg_bytes(Image.new("RGB", (64, 48), (200, 10, 10)))
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    for name in ("cut.jpg", "empty.jpg"):
        with pytest.raises(DatasetError, match=name) as err:
            read_image(tmp_path / name)
        assert "\n" not in str(err.value)


def test_sixteen_bit_png_and_cmyk_jpeg(tmp_path):
    array = np.full((8, 10), 65535, dtype=np.uint16)
    array[:, :5] = 0
    Image.fromarray(array).save(tmp_path / "deep.png")
    image = read_image(tmp_path / "deep.png")
    assert image.shape == (3, 8, 10)
    torch.testing.assert_close(image[:, 0, 9], torch.ones(3))  # full scale stays full scale
    torch.testing.assert_close(image[:, 0, 0], torch.zeros(3))
    (tmp_path / "cmyk.jpg").write_bytes(_jpeg_bytes(Image.new("RGB", (16, 16), (255, 0, 0)).convert("CMYK")))
    red = read_image(tmp_path / "cmyk.jpg")
    assert red.shape == (3, 16, 16) and red[0].mean() > 0.8 and red[1:].mean() < 0.2


def _exif_rotated(path: Path) -> None:
    """A stored 40 x 20 (w x h) bitmap, left half white, tagged 'rotate 90 degrees clockwise'."""
    array = np.zeros((20, 40, 3), dtype=np.uint8)
    array[:, :20] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(array).save(path, exif=exif.tobytes(), quality=100)


@pytest.mark.parametrize("recorded, expected_shape", [((40, 20), (3, 40, 20)), ((20, 40), (3, 20, 40))])
def test_exif_rotation_follows_the_recorded_size(tmp_path, recorded, expected_shape):
    _exif_rotated(tmp_path / "r.jpg")
    height, width = recorded
    ann = {"images": [{"id": 1, "file_name": "r.jpg", "height": height, "width": width}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, width, height / 2],
                            "iscrowd": 0}],
           "categories": [{"id": 1, "name": "white"}]}
    (tmp_path / "a.json").write_text(json.dumps(ann))
    image, target = CocoDetection(tmp_path, tmp_path / "a.json")[0]
    assert image.shape == expected_shape
    if recorded == (40, 20):  # upright: rotated clockwise, the white half is now the top half
        assert image[:, :20].mean() > 0.9 and image[:, 20:].mean() < 0.1
    else:  # annotated on the stored pixels: the white half stays on the left
        assert image[:, :, :20].mean() > 0.9
    box = target["boxes"][0].long().tolist()
    assert image[:, box[1]:box[3], box[0]:box[2]].mean() > 0.9 or recorded == (20, 40)


@pytest.mark.parametrize("size", [(1, 1), (200, 10000), (10000, 200)])
@torch.no_grad()
def test_extreme_image_sizes_go_through_the_detector(size):
    """A 1x1 image and 1:50 strips give detections inside the image, in its own pixels.

    The network sees 96 x 96, 1 x 95 and 95 x 1 pixels (the resize rule, then padding to 32).
    Random weights score each of the 81 classes about 1/81, below the 0.05 threshold, so one class's
    logit is raised (as ``fpn.bench.reference`` does for its random detector): there are detections to check.
    """
    torch.manual_seed(0)
    model = FasterRCNN(load_config(None, TINY_MODEL).model).eval()
    model.roi_heads.box_predictor.cls_score.bias[1] += 6.0
    height, width = size
    out = model([torch.rand(3, height, width, generator=torch.Generator().manual_seed(1))])[0]
    boxes = out["boxes"]
    assert len(boxes) > 0, "no detections: nothing to check"
    assert bool(torch.isfinite(boxes).all() and torch.isfinite(out["scores"]).all())
    slack = 1e-6 * max(size)  # float32 rounding of the scale back to the image (0.01 px at 10000)
    assert bool((boxes[:, :2] >= 0).all() and (boxes[:, 2:] >= boxes[:, :2]).all())
    assert bool((boxes[:, 2] <= width + slack).all() and (boxes[:, 3] <= height + slack).all())
    # in the image's pixels, not the network's: the boxes reach past the middle of both sides
    assert boxes[:, 2].max() > width / 2 and boxes[:, 3].max() > height / 2
    assert bool((out["labels"] == 1).any())


def test_infinite_coordinates_are_dropped(tmp_path):
    Image.new("RGB", (10, 10)).save(tmp_path / "a.png")
    ann = {"images": [{"id": 1, "file_name": "a.png", "height": 10, "width": 10}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 1e999, 2], "iscrowd": 0},
                           {"id": 2, "image_id": 1, "category_id": 1, "bbox": [1, 1, "x", 2], "iscrowd": 0},
                           {"id": 3, "image_id": 1, "category_id": 1, "bbox": [1, 1], "iscrowd": 0}],
           "categories": [{"id": 1, "name": "a"}]}
    (tmp_path / "a.json").write_text(json.dumps(ann).replace("Infinity", "1e999"))
    ds = CocoDetection(tmp_path, tmp_path / "a.json")
    assert ds.stats["dropped_degenerate"] == 3 and len(ds[0][1]["boxes"]) == 0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=True) | st.text(max_size=4),
    lambda children: (st.lists(children, max_size=3)
                      | st.dictionaries(st.text(max_size=4), children, max_size=3)),
    max_leaves=12,
)
coco_like = st.fixed_dictionaries({}, optional={
    "images": st.lists(st.fixed_dictionaries({}, optional={"id": json_values, "file_name": json_values,
                                                           "height": json_values, "width": json_values}),
                       max_size=3) | json_values,
    "annotations": st.lists(st.fixed_dictionaries({}, optional={
        "image_id": json_values, "category_id": json_values, "bbox": json_values, "iscrowd": json_values,
        "segmentation": json_values}), max_size=3) | json_values,
    "categories": st.lists(st.fixed_dictionaries({}, optional={"id": json_values, "name": json_values}),
                           max_size=3) | json_values,
})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(coco_like)
def test_random_json_only_ever_raises_dataset_error(tmp_path, structure):
    path = tmp_path / "fuzz.json"
    path.write_text(json.dumps(structure))
    try:
        ds = CocoDetection(tmp_path, path)
    except DatasetError as err:
        assert "fuzz.json" in str(err)
        return
    for index in range(len(ds)):
        try:
            ds[index]
        except DatasetError:
            pass  # the image files do not exist: the documented error
