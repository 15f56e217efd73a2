"""``fpn browse``: counts, size buckets and level shares of hand-made datasets, worked out by hand;
every picture opened and read where a box or a bar must be."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from fpn.cli import main
from fpn.jobs.browse import BAR_COLOUR, BUCKET_COLOURS
from fpn.visualize import PALETTE

GREY = (128, 128, 128)


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))


@pytest.fixture
def coco(tmp_path):
    """Four 200 x 100 grey images; category ids 3 (dog) and 7 (cat): labels 1 and 2 (sorted by id).

    objects (x, y, w, h)          area   bucket   demo preset: x1.28 -> side, Eq. 1 (112 on P4)
    1: dog (10, 10, 10, 10)        100   small    12.8 -> floor(4 + log2(12.8/112)) = 0 -> P2
       cat (50, 20, 40, 40)       1600   medium   51.2 -> floor(2.87) = 2 -> P2
       cat (100, 10, 50, 50) crowd: left out
    2: cat (20, 0, 100, 100)     10000   large    128 -> floor(4.19) = 4 -> P4
       dog (150, 50, 30, 30)       900   small    38.4 -> floor(2.46) = 2 -> P2
    3: dog (60, 30, 20, 20)        400   small    25.6 -> floor(1.87) = 1 -> P2
    4: no objects
    """
    root = tmp_path / "coco"
    (root / "images").mkdir(parents=True)
    images = [{"id": i, "file_name": f"{i}.png", "width": 200, "height": 100} for i in (1, 2, 3, 4)]
    for image in images:
        Image.new("RGB", (200, 100), GREY).save(root / "images" / image["file_name"])
    boxes = [(1, 3, [10, 10, 10, 10], 0), (1, 7, [50, 20, 40, 40], 0), (1, 7, [100, 10, 50, 50], 1),
             (2, 7, [20, 0, 100, 100], 0), (2, 3, [150, 50, 30, 30], 0), (3, 3, [60, 30, 20, 20], 0)]
    annotations = [{"id": n, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3],
                    "iscrowd": crowd} for n, (i, c, b, crowd) in enumerate(boxes, start=1)]
    categories = [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}]
    (root / "annotations.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                       "categories": categories}))
    return root


def _bars(picture: Image.Image, colour: tuple[int, int, int], axis: int) -> list[int]:
    """Lengths in pixels of the bars of ``colour``: runs of rows (axis 0, horizontal bars) or columns
    (axis 1, vertical bars) holding it, each measured across its middle line."""
    mask = np.all(np.asarray(picture.convert("RGB")) == colour, axis=-1)
    if axis == 1:
        mask = mask.T
    lines = np.nonzero(mask.any(axis=1))[0]
    runs = np.split(lines, np.nonzero(np.diff(lines) > 1)[0] + 1) if lines.size else []
    return [int(mask[run[len(run) // 2]].sum()) for run in runs]


def test_counts_sizes_levels_and_pictures_of_a_coco_dataset(coco, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["browse", str(coco), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["images"], summary["objects"], summary["images_without_objects"]) == (4, 5, 1)
    assert summary["class_counts"] == {"dog": 3, "cat": 2}
    assert summary["size_buckets"] == {"small": 3, "medium": 1, "large": 1}
    assert summary["level_shares"] == pytest.approx({"p2": 0.8, "p3": 0.0, "p4": 0.2, "p5": 0.0})
    assert "P2 80.0%" in printed and "dog" in printed
    # the ground truth drawn: each box in its class's colour (bottom edges), the crowd region not at all
    drawn = Image.open(out / "gt" / "1.png")
    assert drawn.getpixel((70, 60)) == PALETTE[2]  # cat (50, 20)-(90, 60): bottom edge at y = 60
    assert drawn.getpixel((100, 35)) == GREY and drawn.getpixel((149, 35)) == GREY  # the crowd box
    assert Image.open(out / "gt" / "3.png").getpixel((70, 50)) == PALETTE[1]  # dog (60, 30)-(80, 50)
    assert sorted(p.name for p in (out / "gt").iterdir()) == ["1.png", "2.png", "3.png", "4.png"]
    # the charts: bar lengths in proportion to the counts and shares
    dog, cat = _bars(Image.open(out / "class_counts.png"), _rgb(BAR_COLOUR), axis=0)  # dog on top
    assert dog / cat == pytest.approx(3 / 2, rel=0.04)
    p2, p4 = _bars(Image.open(out / "levels.png"), _rgb(BAR_COLOUR), axis=1)  # P3 and P5: no bar
    assert p2 / p4 == pytest.approx(0.8 / 0.2, rel=0.04)
    sizes = Image.open(out / "object_sizes.png")
    for bucket, colour in BUCKET_COLOURS.items():
        assert _bars(sizes, _rgb(colour), axis=1), f"no {bucket} bar"


def test_levels_follow_the_config(coco, tmp_path, capsys):
    """The paper's config (canonical 224, shorter side 800, longer at most 1333): the 200 x 100 images
    are resized by 6.665 (width) and 6.66 (height); the sides 10, 40, 100, 30, 20 become about 67, 266,
    666, 200, 133: floor(4 + log2(side / 224)) = 2, 4, 5, 3, 3."""
    config = tmp_path / "paper.yaml"
    config.write_text("train: {max_iter: 1}\n")  # every model field at the paper's default
    assert main(["browse", str(coco / "annotations.json"), "--output", str(tmp_path / "out"),
                 "--config", str(config), "--colour-by", "level", "--num-images", "2"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["level_shares"] == pytest.approx({"p2": 0.2, "p3": 0.4, "p4": 0.2, "p5": 0.2})
    assert summary["drawn"] == ["1.png", "4.png"]  # two images, spread over the four: the first and last
    # coloured by level: image 1's cat is on P4
    assert Image.open(tmp_path / "out" / "gt" / "1.png").getpixel((70, 60)) == PALETTE[4]


def test_a_voc_dataset(tmp_path, capsys):
    root = tmp_path / "voc"
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True)
    Image.new("RGB", (160, 120), GREY).save(root / "JPEGImages" / "a.jpg", quality=95)
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\n")
    (root / "Annotations" / "a.xml").write_text(
        "<annotation><filename>a.jpg</filename><size><width>160</width><height>120</height></size>"
        "<object><name>dog</name><difficult>0</difficult>"
        "<bndbox><xmin>11</xmin><ymin>21</ymin><xmax>60</xmax><ymax>80</ymax></bndbox></object>"
        "<object><name>cat</name><difficult>1</difficult>"
        "<bndbox><xmin>91</xmin><ymin>21</ymin><xmax>150</xmax><ymax>80</ymax></bndbox></object></annotation>")
    assert main(["browse", str(root), "--output", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["objects"] == 1
    assert summary["class_counts"]["dog"] == 1 and summary["class_counts"]["cat"] == 0
    drawn = np.asarray(Image.open(tmp_path / "out" / "gt" / "a.jpg"), dtype=int)  # JPEG: colours within a few
    dog = 12  # VOC's 12th class
    assert np.abs(drawn[50, 10] - PALETTE[dog]).max() < 40  # VOC's xmin 11 is pixel column 10
    assert np.abs(drawn[50, 120] - GREY).max() < 10  # the difficult cat is not drawn


def test_an_fpn_synth_folder_and_the_config_s_own_data(tiny_synth, tmp_path, capsys):
    annotations = json.loads((tiny_synth / "val" / "annotations.json").read_text())["annotations"]
    objects = sum(1 for a in annotations if not a.get("iscrowd"))
    assert main(["browse", str(tiny_synth), "--split", "val", "--output", str(tmp_path / "a")]) == 0
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["objects"] == objects
    config = tmp_path / "mine.yaml"
    config.write_text(f"base: demo\ndata: {{val_images: {tiny_synth}/val/images, "
                      f"val_annotations: {tiny_synth}/val/annotations.json}}\n")
    assert main(["browse", "--config", str(config), "--split", "val", "--output", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["objects"] == objects


def test_bad_paths_are_one_line(coco, tmp_path, capsys):
    assert main(["browse", str(tmp_path / "missing"), "--output", str(tmp_path / "o")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    moved = tmp_path / "elsewhere.json"
    moved.write_text((coco / "annotations.json").read_text())
    assert main(["browse", str(moved), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "pass --images DIR" in err and err.count("\n") == 1
    images = str(coco / "images")
    assert main(["browse", str(moved), "--images", images, "--output", str(tmp_path / "o")]) == 0


def test_a_voc_format_set_of_its_own_classes(tmp_path, capsys):
    root = tmp_path / "voc"
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True)
    Image.new("RGB", (64, 48), GREY).save(root / "JPEGImages" / "a.jpg")
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\n")
    (root / "Annotations" / "a.xml").write_text(
        "<annotation><object><name>widget</name><bndbox><xmin>5</xmin><ymin>5</ymin><xmax>30</xmax>"
        "<ymax>30</ymax></bndbox></object></annotation>")  # no size: read from the image's header
    assert main(["browse", str(root), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unknown class 'widget'" in err and "data.voc_classes" in err
    config = tmp_path / "mine.yaml"
    config.write_text(f"base: demo\ndata: {{format: voc, voc_root: {root}, voc_classes: [gadget, widget]}}\n")
    for data in ([str(root)], []):  # the folder named, or the config's own data
        assert main(["browse", *data, "--config", str(config), "--output", str(tmp_path / "o")]) == 0
        summary = json.loads((tmp_path / "o" / "summary.json").read_text())
        assert summary["class_counts"] == {"gadget": 0, "widget": 1}


# ---------------------------------------------------------------------------------------------
# fpn browse DATA --check: every problem at once, exit 1 if a record would be refused or skipped


def test_check_of_a_clean_dataset_says_so_and_exits_0(coco, tmp_path, capsys):
    assert main(["browse", str(coco), "--check"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{coco}: 4 images, 5 objects kept; no problems")  # the crowd region is not one
    assert not (tmp_path / "out").exists()


def test_check_lists_every_problem_of_a_broken_coco_file(coco, capsys):
    data = json.loads((coco / "annotations.json").read_text())
    bad = [{"id": 17, "image_id": 1, "category_id": 3, "bbox": "5,5,20,15"},
           {"id": 40, "image_id": 2, "category_id": 3, "bbox": [5, 5, 20]},
           {"id": 41, "image_id": 3, "category_id": 7, "bbox": [[5, 5, 20, 15]]},
           {"id": 50, "image_id": 3, "category_id": 7, "bbox": [5, 5, 0, 15]},
           {"id": 60, "image_id": 1, "category_id": 99, "bbox": [5, 5, 20, 15]},
           {"id": 61, "image_id": 1, "category_id": 3, "bbox": [5, 5, 20, 15], "segmentation": [[1, 2, 3]]}]
    data["annotations"] += bad
    data["images"].append({"id": 9, "file_name": "gone.png", "width": 10, "height": 10})
    (coco / "annotations.json").write_text(json.dumps(data))
    assert main(["browse", str(coco), "--check"]) == 1
    lines = capsys.readouterr().out.splitlines()
    # 5 images; 5 objects as before (the 6 bad annotations are all left out)
    assert lines[0] == f"{coco}: 5 images, 5 objects kept; 5 kind(s) of problem"
    assert "  stops training and evaluation: annotations name category ids not in 'categories': 1" in lines
    assert "  stops training and evaluation: annotations have malformed segmentations: 1" in lines
    assert "  skipped: bbox not 4 numbers: 3 annotation(s) (ids 17, 40, 41)" in lines
    assert "  skipped: bbox of zero or negative size: 1 annotation(s) (id 50)" in lines
    assert "  skipped: image file unreadable: 1 image(s)" in " ".join(lines)
    assert any("gone.png: image file not found" in line for line in lines)
    # without --check the first stop ends the command in one line, as training would
    assert main(["browse", str(coco), "--output", str(coco / "out")]) == 2
    err = capsys.readouterr().err
    assert "1 annotation names a category id not in 'categories' (first: annotation 60, category 99)" in err
    assert err.count("\n") == 1


def test_check_lists_every_problem_of_a_broken_voc_tree(tmp_path, capsys):
    root = tmp_path / "voc"
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True)
    box = "<bndbox><xmin>5</xmin><ymin>5</ymin><xmax>30</xmax><ymax>30</ymax></bndbox>"
    xmls = {"a": f"<annotation><object><name>dog</name>{box}</object></annotation>",
            "b": "<annotation><object><name>dog</name>",  # cut short
            "c": f"<annotation><object><name>unicorn</name>{box}</object></annotation>",
            "d": "<annotation><object><name>cat</name><bndbox><xmin>five</xmin></bndbox></object>"
                 "</annotation>",
            "e": f"<annotation><size><width>64</width><height>4O</height></size><object><name>cat</name>{box}"
                 "</object></annotation>"}
    for name, xml in xmls.items():
        (root / "Annotations" / f"{name}.xml").write_text(xml)
        Image.new("RGB", (64, 48), GREY).save(root / "JPEGImages" / f"{name}.jpg")
    (root / "ImageSets" / "Main" / "train.txt").write_text("\n".join(xmls))
    assert main(["browse", str(root), "--check"]) == 1
    out = capsys.readouterr().out
    assert "b.xml: not valid XML" in out and "c.xml: object 1: unknown class 'unicorn'" in out
    assert "e.xml: size/height '4O' is not a whole number" in out
    assert "skipped: bndbox not 4 numbers: 1 annotation(s) (d.xml object 1)" in out


def test_check_of_a_file_that_is_not_a_dataset(tmp_path, capsys):
    (tmp_path / "broken.json").write_text("{not json")
    assert main(["browse", str(tmp_path / "broken.json"), "--check"]) == 1
    out = capsys.readouterr().out
    assert "the dataset cannot be read: 1" in out and "broken.json: not valid JSON" in out


def test_browse_without_output_or_check_is_one_line(coco, capsys):
    assert main(["browse", str(coco)]) == 2
    assert "--output DIR is needed" in capsys.readouterr().err
