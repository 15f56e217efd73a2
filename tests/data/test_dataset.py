"""The dataset contract (``fpn.data.dataset``): every format fulfils it, and the warning line of
skipped annotations reads as the rule says."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from fpn.config.schema import DataConfig
from fpn.data.dataset import MAX_EXAMPLES, DetectionDataset
from fpn.data.formats import FORMATS, open_path


def _coco(root, annotations):
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (40, 30)).save(root / "images" / "a.png")
    (root / "annotations.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
        "annotations": annotations, "categories": [{"id": 5, "name": "cat"}]}))
    return root


def _voc(root):
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    Image.new("RGB", (40, 30)).save(root / "JPEGImages" / "a.jpg")
    (root / "ImageSets/Main/train.txt").write_text("a\n")
    (root / "Annotations" / "a.xml").write_text(
        "<annotation><object><name>cat</name><difficult>1</difficult><bndbox><xmin>2</xmin><ymin>3</ymin>"
        "<xmax>20</xmax><ymax>15</ymax></bndbox></object></annotation>")
    return root


def _yolo(root):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.new("RGB", (40, 30)).save(root / "images" / "a.png")
    (root / "labels" / "a.txt").write_text("0 0.275 0.3 0.45 0.4\n")
    (root / "classes.txt").write_text("cat\n")
    return root


def test_every_format_of_the_table_fulfils_the_contract(tmp_path):
    datasets = {"coco": open_path(_coco(tmp_path / "coco", [{"id": 1, "image_id": 1, "category_id": 5,
                                                             "bbox": [2, 3, 18, 12]}])),
                "voc": open_path(_voc(tmp_path / "voc"), data=DataConfig(voc_classes=["cat"])),
                "yolo": open_path(_yolo(tmp_path / "yolo"))}
    assert set(datasets) == set(FORMATS)
    for name, dataset in datasets.items():
        assert isinstance(dataset, DetectionDataset), name
        assert dataset.class_names == ["cat"] and len(dataset) == 1, name
        record = dataset.images[0]
        # (2, 3)-(20, 15) from COCO's xywh (2, 3, 18, 12) and from YOLO's centre (0.275 * 40, 0.3 * 30)
        # = (11, 9) and size (0.45 * 40, 0.4 * 30) = (18, 12); VOC's 1-based corners lose 1 left and top
        expected = [[2, 3, 20, 15]] if name != "voc" else [[1, 2, 20, 15]]
        np.testing.assert_allclose(record.boxes_xyxy, expected, err_msg=name)
        assert record.image_hw() == (30, 40)
    assert datasets["voc"].voc_metric and not datasets["coco"].voc_metric and not datasets["yolo"].voc_metric
    # VOC's difficult object: out of the training targets and of pycocotools' truth, flagged for VOC's metric
    voc = datasets["voc"]
    assert len(voc[0][1]["boxes"]) == 0 and voc.to_coco_dict()["annotations"] == []
    assert voc.ground_truth()[0]["difficult"].tolist() == [True]


def test_the_warning_line_counts_each_kind_with_its_ids(tmp_path, caplog):
    bad = [{"id": i, "image_id": 1, "category_id": 5, "bbox": "5,5,20,15"} for i in (17, 40, 41)]
    many = [{"id": 100 + i, "image_id": 1, "category_id": 5, "bbox": [1, 1, 0, 3]}
            for i in range(MAX_EXAMPLES + 2)]
    ok = [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [2, 3, 18, 12]}]
    dataset = open_path(_coco(tmp_path, ok + bad + many))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert warnings[0] == (f"{tmp_path / 'annotations.json'}: 3 annotations skipped: bbox not 4 numbers "
                           "(ids 17, 40, 41); 7 annotations skipped: bbox of zero or negative size "
                           "(ids 100, 101, 102, 103, 104, ...)")
    assert len(dataset.images[0].labels) == 1


@pytest.mark.parametrize("on_bad", ["error", "warn"])
def test_the_rule_is_the_config_s_for_every_format(tmp_path, on_bad):
    """data.on_bad_annotations decides for COCO's unknown categories and YOLO's unknown classes alike."""
    from fpn.errors import DatasetError

    coco = _coco(tmp_path / "coco", [{"id": 1, "image_id": 1, "category_id": 9, "bbox": [2, 3, 18, 12]}])
    yolo = _yolo(tmp_path / "yolo")
    (yolo / "labels" / "a.txt").write_text("3 0.275 0.3 0.45 0.4\n")
    data = DataConfig(on_bad_annotations=on_bad)
    for root in (coco, yolo):
        if on_bad == "error":
            with pytest.raises(DatasetError):
                open_path(root, data=data)
        else:
            assert len(open_path(root, data=data).images[0].labels) == 0
