"""``fpn.Detector`` and ``fpn.Detections``: every input form, thresholds, and the result's outputs.

The run is an untrained tiny detector (seeded weights, no training), so its scores hover around
1 / (K + 1); what matters here is that every way of handing over the same pixels gives the same
detections, and that what is drawn and written matches them.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import to_tensor

from fpn.api import Detector
from fpn.data.inputs import ImageInputError, array_image_tensor
from fpn.detections import CSV_COLUMNS, Detections
from fpn.visualize import PALETTE
from tests.conftest import make_untrained_run


def photo(seed: int = 0, size: tuple[int, int] = (120, 90)) -> np.ndarray:
    """An H x W x 3 uint8 picture with smooth shapes (the detector scores it like any other)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size[1], 0:size[0]]
    image = np.zeros((size[1], size[0], 3))
    for _ in range(6):
        cx, cy, r = rng.uniform(0, size[0]), rng.uniform(0, size[1]), rng.uniform(5, 40)
        image[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    return (image + rng.normal(0, 8, image.shape)).clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_untrained_run(tmp_path_factory.mktemp("run") / "runs" / "demo")


@pytest.fixture(scope="module")
def detector(run) -> Detector:
    return Detector(run, "cpu")


def test_import_fpn_does_not_load_torch():
    code = ("import sys, fpn; assert fpn.__version__ and 'torch' not in sys.modules; "
            "print(fpn.Detector.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "Detector"


def test_the_issue_s_line_works(run, tmp_path):
    """Issue #24's 'done when' line, verbatim but for where the CSV goes."""
    line = ("import fpn, numpy; d = fpn.Detector('runs/demo'); r = d(numpy.zeros((256,256,3),'uint8')); "
            f"r.plot(); r.to_csv('{tmp_path / 'x.csv'}')")
    subprocess.run([sys.executable, "-c", line], cwd=run.parent.parent, check=True, capture_output=True)
    rows = list(csv.reader((tmp_path / "x.csv").open()))
    assert rows[0] == CSV_COLUMNS


def test_uint8_arrays_become_what_torchvision_makes_of_the_same_pixels():
    pixels = photo()
    want = to_tensor(Image.fromarray(pixels))  # torchvision: 3 x H x W float in [0, 1]
    for form in (pixels, torch.from_numpy(pixels), torch.from_numpy(pixels).permute(2, 0, 1)):
        torch.testing.assert_close(array_image_tensor(form), want, rtol=0, atol=0)
    torch.testing.assert_close(array_image_tensor(want), want, rtol=0, atol=0)  # float CHW in [0, 1]
    grey = pixels[..., 0]
    torch.testing.assert_close(array_image_tensor(grey), to_tensor(Image.fromarray(grey).convert("RGB")))


def test_every_input_form_gives_the_same_detections(detector, tmp_path):
    pixels = photo(seed=1)
    path = tmp_path / "photo.png"
    Image.fromarray(pixels).save(path)  # lossless: the same pixels
    want = detector(path)
    assert isinstance(want, Detections) and len(want) > 0 and want.image_size == (90, 120)
    chw = torch.from_numpy(pixels).permute(2, 0, 1)
    forms = {"str": str(path), "PIL": Image.open(path), "numpy HWC uint8": pixels,
             "tensor HWC uint8": torch.from_numpy(pixels), "tensor CHW uint8": chw,
             "tensor CHW float": torch.from_numpy(pixels).permute(2, 0, 1).float() / 255,
             "numpy HWC float": pixels.astype(np.float32) / 255}
    for name, form in forms.items():
        got = detector(form)
        assert isinstance(got, Detections), name
        torch.testing.assert_close(got.boxes, want.boxes, rtol=0, atol=1e-4, msg=name)
        torch.testing.assert_close(got.scores, want.scores, rtol=0, atol=1e-5, msg=name)
        assert got.names == want.names and got.levels.tolist() == want.levels.tolist(), name
    assert want.source == str(path) and detector(pixels).source is None
    assert set(want.names) <= {"circle", "square", "triangle"} and set(want.category_ids) <= {11, 12, 13}
    assert want.levels.dtype == torch.int64 and set(want.levels.tolist()) <= {2, 3, 4, 5}
    assert [want.names[i] for i in range(len(want))] == [["circle", "square", "triangle"][label - 1]
                                                        for label in want.labels.tolist()]


@pytest.mark.parametrize(("image", "words"), [
    (np.zeros((3, 50, 3), np.uint8), "ambiguous"),
    (np.full((40, 50, 3), 200.0, np.float32), "[0, 1]"),
    (torch.randn(3, 40, 50), "[0, 1]"),
    (np.zeros((40, 50, 3), np.int64), "dtype"),
    (np.zeros((40, 50, 4), np.uint8), "expected H x W x 3"),
    (np.zeros((0, 50, 3), np.uint8), "empty"),
    ({"not": "an image"}, "got dict"),
])
def test_unreadable_inputs_are_refused_in_one_line(detector, image, words):
    with pytest.raises(ImageInputError) as err:
        detector(image)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_a_folder_a_list_or_a_batch_gives_a_list(detector, tmp_path):
    first, second = photo(seed=2), photo(seed=3)
    (tmp_path / "b").mkdir()
    (tmp_path / "a").mkdir()
    Image.fromarray(first).save(tmp_path / "b" / "1.png")
    Image.fromarray(second).save(tmp_path / "a" / "2.png")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    found = detector(tmp_path)
    assert [d.source for d in found] == [str(tmp_path / "a" / "2.png"), str(tmp_path / "b" / "1.png")]
    alone = [detector(second), detector(first)]
    for got, want in zip(found, alone, strict=True):
        torch.testing.assert_close(got.boxes, want.boxes, rtol=0, atol=1e-4)
    batch = detector(np.stack([second, first]))  # N x H x W x 3
    listed = detector([second, Image.fromarray(first)], batch_size=1)
    for got in (batch, listed):
        assert isinstance(got, list) and len(got) == 2
        for one, want in zip(got, alone, strict=True):
            torch.testing.assert_close(one.boxes, want.boxes, rtol=0, atol=1e-4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        detector(tmp_path / "empty")


def test_score_thresh_keeps_what_scores_at_least_it(run):
    everything = Detector(run, "cpu")(photo(seed=4))
    cut = float(everything.scores.median())
    for got in (Detector(run, "cpu", score_thresh=cut)(photo(seed=4)),
                Detector(run, "cpu")(photo(seed=4), score_thresh=cut), everything.above(cut)):
        assert len(got) == int((everything.scores >= cut).sum()) > 0
        assert bool((got.scores >= cut).all()) and len(got.names) == len(got.levels) == len(got)


def test_plot_save_json_and_csv_hold_the_detections(detector, tmp_path):
    pixels = np.full((90, 120, 3), 128, np.uint8)
    pixels[20:60, 30:90] = (20, 200, 20)
    result = detector(pixels)
    best = int(result.scores.argmax())
    x1, y1, x2, y2 = (int(v) for v in result.boxes[best].tolist())
    assert x2 - x1 > 4 and y2 - y1 > 4
    # only the best detection drawn: its outline, in its class's colour, at the middle of its bottom edge
    picture = result.plot(score_thresh=float(result.scores[best]))
    assert picture.size == (120, 90)
    assert picture.getpixel(((x1 + x2) // 2, min(y2, 89))) == PALETTE[int(result.labels[best])]
    saved = result.save(tmp_path / "drawn" / "x.png", score_thresh=float(result.scores[best]))
    assert np.array_equal(np.asarray(Image.open(saved)), np.asarray(picture))

    rows = list(csv.DictReader(result.to_csv(tmp_path / "x.csv").splitlines()))
    assert (tmp_path / "x.csv").read_text() == result.to_csv()
    assert len(rows) == len(result)
    for row, box, score, name, level in zip(rows, result.boxes.tolist(), result.scores.tolist(), result.names,
                                            result.levels.tolist(), strict=True):
        assert [float(row[k]) for k in ("x1", "y1", "x2", "y2")] == pytest.approx(box, abs=0.006)
        assert float(row["score"]) == pytest.approx(score, abs=1e-5)
        assert (row["name"], int(row["level"]), row["file"], row["frame"]) == (name, level, "", "")
    data = json.loads(result.to_json())
    assert (data["width"], data["height"], len(data["detections"])) == (120, 90, len(result))
    assert data["detections"][best]["box"] == pytest.approx(result.boxes[best].tolist(), abs=0.006)


def test_a_file_s_detections_are_drawn_on_the_file_read_again(detector, tmp_path):
    pixels = photo(seed=5)
    Image.fromarray(pixels).save(tmp_path / "p.png")
    from_file, from_memory = detector(tmp_path / "p.png"), detector(pixels)
    assert from_file.image is None  # not kept: read again to be drawn
    drawn = [np.asarray(result.plot(score_thresh=0)) for result in (from_file, from_memory)]
    assert np.array_equal(*drawn)


def test_the_older_api_still_works(run):
    from fpn.model.detector import FasterRCNN

    old = Detector.from_checkpoint(run, "cpu", ["model.roi_heads.score_thresh=0.2"])
    result = old(photo())
    assert "boxes" in result and "proposals" not in result and result.get("proposals") is None
    assert torch.equal(result["boxes"], result.boxes) and result["names"] == result.names
    assert bool((result["scores"] > 0.2).all())
    again = Detector(old.model, "cpu")(photo())
    torch.testing.assert_close(again.boxes, result.boxes)
    assert isinstance(old.model, FasterRCNN)
