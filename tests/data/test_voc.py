"""The Pascal VOC loader on a hand-written tree."""

from __future__ import annotations

import torch
from PIL import Image

from fpn.data.voc import VOCDetection
from fpn.evaluation.coco import as_coco

XML = """<annotation><filename>x.jpg</filename><size><width>50</width><height>40</height></size>
<object><name>dog</name><difficult>0</difficult><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>20</xmax><ymax>30</ymax></bndbox></object>
<object><name>cat</name><difficult>1</difficult><bndbox><xmin>5</xmin><ymin>5</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>
</annotation>"""


def test_voc_tree(tmp_path):
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (tmp_path / sub).mkdir(parents=True)
    (tmp_path / "Annotations" / "x.xml").write_text(XML)
    Image.new("RGB", (50, 40)).save(tmp_path / "JPEGImages" / "x.jpg")
    (tmp_path / "ImageSets/Main/train.txt").write_text("x\n")
    ds = VOCDetection(tmp_path, "train")
    image, target = ds[0]
    assert image.shape == (3, 40, 50)
    torch.testing.assert_close(target["boxes"], torch.tensor([[0.0, 1.0, 20.0, 30.0]]))  # 1-based -> edges
    assert target["labels"].tolist() == [12]  # "dog" is the 12th VOC class; the difficult cat is skipped
    assert len(VOCDetection(tmp_path, "train", keep_difficult=True)[0][1]["boxes"]) == 2
    coco = as_coco(ds.to_coco_dict())
    assert coco.loadAnns(coco.getAnnIds())[0]["bbox"] == [0.0, 1.0, 20.0, 29.0]


def test_a_split_line_that_is_a_path_is_refused(tmp_path):
    import pytest

    from fpn.errors import DatasetError

    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (tmp_path / sub).mkdir(parents=True)
    (tmp_path / "Annotations" / "x.xml").write_text(XML)
    (tmp_path / "ImageSets/Main/train.txt").write_text("x\n\n../../../etc/passwd\n")
    with pytest.raises(DatasetError, match=r"train.txt: line 3: '../../../etc/passwd' is not an image id"):
        VOCDetection(tmp_path, "train")
