"""YOLO txt labels (``data.format=yolo``): hand-computed boxes, the layouts exporters write, the
bad-record rule, and browse / train / eval end to end on the tiny synthetic set written as YOLO."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fpn.cli import main
from fpn.config.schema import DataConfig
from fpn.data.formats import open_path, open_split
from fpn.data.yolo import YOLODetection, read_class_names
from fpn.errors import DatasetError
from fpn.evaluation.coco import as_coco
from tests.conftest import TINY_MODEL


def _ultralytics(root: Path, labels: dict[str, str], names: str = "names: {0: cat, 1: dog}",
                 split: str = "train", size=(40, 30)) -> Path:
    """``images/<split>/*.png`` + ``labels/<split>/*.txt`` + ``data.yaml``, as Ultralytics lays it out."""
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    for stem, text in labels.items():
        Image.new("RGB", size, (90, 120, 150)).save(root / "images" / split / f"{stem}.png")
        if text is not None:
            (root / "labels" / split / f"{stem}.txt").write_text(text)
    (root / "data.yaml").write_text(f"path: .\ntrain: images/train\nval: images/val\n{names}\n")
    return root


def test_boxes_are_the_hand_computed_pixels(tmp_path):
    root = _ultralytics(tmp_path, {
        "a": "0 0.5 0.5 0.5 0.5\n1 0.1 0.1 0.4 0.4\n",  # a centred box; one reaching past the corner
        "b": "1 0.1 0.2 0.5 0.2 0.5 0.6\n",  # a polygon line (segmentation export): its enclosing box
        "c": ""})  # an empty label file: an image without objects
    (root / "images" / "train" / "d.png").write_bytes((root / "images" / "train" / "c.png").read_bytes())
    ds = open_path(root)  # d.png has no label file at all: no objects either
    assert isinstance(ds, YOLODetection) and ds.class_names == ["cat", "dog"]
    assert ds.label_to_category_id == {1: 0, 2: 1}  # category ids are the YOLO class indices
    assert [r.file.name for r in ds.images] == ["a.png", "b.png", "c.png", "d.png"]
    assert ds.image_ids() == [1, 2, 3, 4]
    # 40 x 30 image: centre (20, 15), size (20, 15) -> (10, 7.5, 30, 22.5)
    # centre (4, 3), size (16, 12) -> (-4, -3, 12, 9), clipped to the image: (0, 0, 12, 9)
    np.testing.assert_allclose(ds.images[0].boxes_xyxy, [[10, 7.5, 30, 22.5], [0, 0, 12, 9]])
    assert ds.images[0].labels.tolist() == [1, 2]
    np.testing.assert_allclose(ds.images[1].boxes_xyxy, [[4, 6, 20, 18]])  # x 0.1..0.5, y 0.2..0.6
    assert [len(r.labels) for r in ds.images[2:]] == [0, 0]
    image, target = ds[0]
    assert image.shape == (3, 30, 40) and target["image_id"] == 1
    coco = as_coco(ds.to_coco_dict())  # pycocotools' ground truth: xywh, category = class index
    ann = coco.loadAnns(coco.getAnnIds(imgIds=1))[0]
    assert ann["bbox"] == [10.0, 7.5, 20.0, 15.0] and ann["category_id"] == 0


def test_class_names_from_data_yaml_or_classes_txt(tmp_path):
    (tmp_path / "list.yaml").write_text("names: [cat, dog, 'ünï']\nnc: 3\n")
    (tmp_path / "map.yaml").write_text("names:\n  0: cat\n  1: dog\n")
    (tmp_path / "classes.txt").write_text("cat\ndog\n\n")
    assert read_class_names(tmp_path / "list.yaml") == ["cat", "dog", "ünï"]
    assert read_class_names(tmp_path / "map.yaml") == ["cat", "dog"]
    assert read_class_names(tmp_path / "classes.txt") == ["cat", "dog"]


@pytest.mark.parametrize(("text", "problem"), [
    ("names: [cat", "not valid YAML"),  # found by tests/data/test_fuzz.py: yaml's ParserError escaped
    ("- a\n- b\n", "not a YAML mapping with 'names'"),
    ("nc: 2\n", "'names' must be a list"),
    ("names: {0: cat, 2: dog}\n", "'names' must be a list"),
])
def test_a_bad_data_yaml_is_one_line_naming_it(tmp_path, text, problem):
    root = _ultralytics(tmp_path, {"a": "0 0.5 0.5 0.5 0.5\n"}, names="")
    (root / "data.yaml").write_text(text)
    with pytest.raises(DatasetError, match=problem) as err:
        open_path(root)
    assert "data.yaml" in str(err.value) and "\n" not in str(err.value)


def test_bad_lines_are_skipped_and_counted_unknown_classes_stop(tmp_path, caplog):
    labels = "0 0.5 0.5 0.5 0.5\n0 0.5 x 0.5 0.5\n0 0.5 0.5 0 0.5\n1 nan 0.5 0.2 0.2\n0 1.5 1.5 0.2 0.2\n"
    root = _ultralytics(tmp_path, {"a": labels})
    ds = open_path(root)
    assert len(ds.images[0].labels) == 1
    for skipped in ("1 annotation skipped: line not 'class cx cy w h' numbers (a.txt line 2)",
                    "1 annotation skipped: box of zero or negative size (a.txt line 3)",
                    "1 annotation skipped: box not finite (a.txt line 4)",
                    "1 annotation skipped: box outside its image (a.txt line 5)"):
        assert skipped in caplog.text
    (root / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n7 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DatasetError, match=r"a.txt: line 2: class 7 is not among the 2 class names \(0..1\)"):
        open_path(root)
    data = DataConfig(format="yolo", train_images=str(root / "images" / "train"),
                      train_annotations=str(root / "data.yaml"), on_bad_annotations="warn")
    assert len(open_split(data, "train").images[0].labels) == 1  # warn: skipped like the others


def test_roboflow_and_cvat_layouts(tmp_path):
    """Roboflow: ``train/images`` + ``train/labels`` and a data.yaml naming ``../train/images``;
    CVAT's YOLO 1.1: labels beside the images, names in a text file."""
    rob = tmp_path / "rob"
    for split in ("train", "valid"):
        (rob / split / "images").mkdir(parents=True)
        (rob / split / "labels").mkdir(parents=True)
        Image.new("RGB", (40, 30)).save(rob / split / "images" / "x.jpg")
        (rob / split / "labels" / "x.txt").write_text(f"{int(split == 'valid')} 0.5 0.5 0.5 0.5\n")
    (rob / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\nnc: 2\nnames: ['a', 'b']\n")
    assert open_path(rob, split="val").images[0].labels.tolist() == [2]
    assert open_path(rob, split="train").images[0].labels.tolist() == [1]
    cvat = tmp_path / "cvat" / "obj_train_data"
    cvat.mkdir(parents=True)
    Image.new("RGB", (40, 30)).save(cvat / "x.jpg")
    (cvat / "x.txt").write_text("1 0.5 0.5 0.5 0.5\n")
    (tmp_path / "cvat" / "obj.names").write_text("a\nb\n")
    data = DataConfig(format="yolo", train_images=str(cvat),
                      train_annotations=str(tmp_path / "cvat" / "obj.names"))
    assert open_split(data, "train").images[0].labels.tolist() == [2]


def test_an_unknown_format_names_the_known_ones():
    from fpn.errors import ConfigError

    with pytest.raises(ConfigError, match=r"data.format: unknown format 'yolov8' \(one of coco, voc, yolo\)"):
        open_split(DataConfig(format="yolov8"), "train")


def _as_yolo(synth: Path, root: Path) -> list[str]:
    """The tiny synthetic COCO set written as Ultralytics YOLO (images linked, labels computed from
    the COCO boxes here, independently of the reader); returns the class names."""
    names = []
    for split in ("train", "val"):
        coco = json.loads((synth / split / "annotations.json").read_text())
        categories = sorted(coco["categories"], key=lambda c: c["id"])
        names = [c["name"] for c in categories]
        index = {c["id"]: i for i, c in enumerate(categories)}
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for image in coco["images"]:
            name, width, height = image["file_name"], image["width"], image["height"]
            (root / "images" / split / name).symlink_to(synth / split / "images" / name)
            lines = []
            for a in coco["annotations"]:
                if a["image_id"] == image["id"] and not a.get("iscrowd"):
                    x, y, w, h = a["bbox"]
                    lines.append(f"{index[a['category_id']]} {(x + w / 2) / width:.6f} "
                                 f"{(y + h / 2) / height:.6f} {w / width:.6f} {h / height:.6f}")
            (root / "labels" / split / Path(name).with_suffix(".txt")).write_text("\n".join(lines))
    (root / "data.yaml").write_text(f"path: .\ntrain: images/train\nval: images/val\nnames: {names}\n")
    return names


@pytest.mark.slow
def test_yolo_labels_browse_train_and_evaluate_end_to_end(tiny_synth, tmp_path, capsys):
    root = tmp_path / "yolo"
    names = _as_yolo(tiny_synth, root)
    # the boxes the reader makes of the labels are the COCO file's (to the labels' 6 decimals)
    val = json.loads((tiny_synth / "val" / "annotations.json").read_text())
    yolo_gt = open_path(root, split="val").to_coco_dict()
    want = sorted(tuple(a["bbox"]) for a in val["annotations"] if not a.get("iscrowd"))
    got = sorted(tuple(a["bbox"]) for a in yolo_gt["annotations"])
    np.testing.assert_allclose(got, want, atol=1e-3)

    assert main(["browse", str(root), "--split", "val", "--output", str(tmp_path / "look")]) == 0
    summary = json.loads((tmp_path / "look" / "summary.json").read_text())
    assert summary["objects"] == len(want) and list(summary["class_counts"]) == names
    assert main(["browse", str(root), "--check"]) == 0 and "no problems" in capsys.readouterr().out

    data = ["data.format=yolo", f"data.train_images={root}/images/train",
            f"data.train_annotations={root}/data.yaml", f"data.val_images={root}/images/val",
            f"data.val_annotations={root}/data.yaml", "data.num_workers=0"]
    run = tmp_path / "run"
    assert main(["--quiet", "train", "--config", "demo", "--output", str(run), *TINY_MODEL, *data,
                 "train.batch_size=2", "train.max_iter=1", "train.warmup_iters=1", "train.device=cpu"]) == 0
    assert main(["--quiet", "eval", str(run), "--output", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_images"] == len(val["images"]) and 0.0 <= metrics["AP"] <= 1.0
