"""Pascal VOC detection datasets (``Annotations/*.xml``, ``JPEGImages``, ``ImageSets/Main``).

Same contract as every format (``fpn.data.dataset``). VOC boxes are 1-based inclusive pixel
indices; they become 0-based xyxy edges by subtracting 1 from xmin and ymin (as torchvision and
detectron2 do). Read and checked once, under ``fpn.data.dataset``'s rule: an XML that does not
parse, an object of a class not in ``class_names`` or a ``size`` that is not whole numbers stops
the command naming the file; an object whose ``bndbox`` is missing, not numbers, empty or outside
the image is skipped and counted. Difficult objects are kept, flagged: the training targets
leave them out unless ``keep_difficult``, VOC's metric ignores the detections that hit them.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from fpn.config.schema import DataConfig
from fpn.data.dataset import (
    AnnotatedDataset,
    AnnotatedImage,
    Problems,
    box_in_image,
    record_of,
    refuse_masks,
)
from fpn.errors import DatasetError

VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor"]
BNDBOX_NOT_NUMBERS = "bndbox not 4 numbers"


def parse_voc_xml(path: Path, class_to_label: dict[str, int], problems: Problems) -> dict[str, Any] | None:
    """One XML's objects as rows ``(box_xyxy, label, is_crowd, difficult, area)`` and its recorded
    size; None when the file is refused and ``problems`` collects."""
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        return problems.stop("annotation file not found", "annotation file not found", file=path)
    except (ET.ParseError, UnicodeDecodeError, OSError) as err:
        return problems.stop("not valid XML", f"not valid XML ({str(err)[:160]})", file=path)
    size = _recorded_hw(root, path, problems)
    rows = []
    for number, obj in enumerate(root.iter("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        if name not in class_to_label:
            problems.stop("unknown class", f"object {number}: unknown class {name!r} (name a set's classes "
                          "in data.voc_classes)", file=path)
            continue
        corners = _numbers(obj.find("bndbox"))
        if corners is None:
            problems.skip(BNDBOX_NOT_NUMBERS, f"{path.name} object {number}")
            continue
        x1, y1, x2, y2 = corners
        box, problem = box_in_image((x1 - 1, y1 - 1, x2, y2), size)
        if problem:
            problems.skip(problem, f"{path.name} object {number}")
            continue
        difficult = (obj.findtext("difficult") or "0").strip() == "1"
        rows.append((box, class_to_label[name], False, difficult, (box[2] - box[0]) * (box[3] - box[1])))
    return {"rows": rows, "hw": size}


def _numbers(bndbox: ET.Element | None) -> tuple[float, ...] | None:
    if bndbox is None:
        return None
    try:
        return tuple(float(bndbox.findtext(k) or "") for k in ("xmin", "ymin", "xmax", "ymax"))
    except ValueError:
        return None


def _recorded_hw(root: ET.Element, path: Path, problems: Problems) -> tuple[int, int] | None:
    """``size``'s (height, width); None when absent or 0 (the image's header tells), and a stop when
    it is not whole numbers."""
    size = root.find("size")
    if size is None:
        return None
    sides = []
    for key in ("height", "width"):
        text = (size.findtext(key) or "").strip()
        if not text:
            return None
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not (value >= 0 and value.is_integer() and value < 2**31):
            problems.stop("size not whole numbers", f"size/{key} {text[:40]!r} is not a whole number",
                          file=path)
            return None
        sides.append(int(value))
    return (sides[0], sides[1]) if all(sides) else None


class VOCDetection(AnnotatedDataset):
    """Images and boxes of a Pascal VOC split (``root/ImageSets/Main/{split}.txt``).

    Item ``i`` is ``(image, target)`` as every dataset gives it; difficult objects are left out
    of the targets unless ``keep_difficult`` (``ground_truth`` keeps them, flagged, for the VOC
    metric). Labels are 1..K in the order of ``class_names`` (default: the 20 VOC classes); image
    ids are 1..N in split order.
    """

    voc_metric = True

    def __init__(self, root: str | Path, split: str = "train", *, class_names: list[str] | None = None,
                 keep_difficult: bool = False, collect: bool = False):
        self.root = Path(root)
        self.image_root = self.root / "JPEGImages"
        self.class_names = list(class_names or VOC_CLASSES)
        self.label_to_category_id = {i + 1: i + 1 for i in range(len(self.class_names))}
        self.keep_difficult = keep_difficult
        split_file = self.root / "ImageSets" / "Main" / f"{split}.txt"
        self.problems = Problems(split_file, collect=collect)
        self.ids = _split_ids(split_file)
        class_to_label = {name: i + 1 for i, name in enumerate(self.class_names)}
        self.images: list[AnnotatedImage] = []
        for image_id in self.ids:
            xml = self.root / "Annotations" / f"{image_id}.xml"
            parsed = parse_voc_xml(xml, class_to_label, self.problems)
            if parsed is not None:
                self.images.append(record_of(len(self.images) + 1, self.image_root / f"{image_id}.jpg",
                                             parsed["hw"], parsed["rows"]))
        if not collect:
            self.problems.report()


def _split_ids(split_file: Path) -> list[str]:
    if not split_file.is_file():
        raise DatasetError(f"{split_file}: split file not found")
    try:
        lines = split_file.read_text().splitlines()
    except (UnicodeDecodeError, OSError) as err:
        raise DatasetError(f"{split_file}: not a readable list of image ids ({err})") from None
    ids = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        image_id = line.split()[0]  # a file name in Annotations/ and JPEGImages/: never a path
        if image_id in (".", "..") or "/" in image_id or "\\" in image_id:
            raise DatasetError(f"{split_file}: line {number}: {image_id!r} is not an image id (a file "
                               "name without folders, as 2008_000123)")
        ids.append(image_id)
    return ids


def from_config(data: DataConfig, split: str, *, masks: bool = False, collect: bool = False) -> VOCDetection:
    """``data.voc_root``'s ``split`` list, classes ``data.voc_classes`` (empty: Pascal's 20)."""
    refuse_masks(masks, "VOC has none here")
    return VOCDetection(data.voc_root, split=split, class_names=data.voc_classes or None, collect=collect)


def from_path(path: Path, *, split: str, images: Path | None, data: DataConfig, collect: bool = False
              ) -> VOCDetection | None:
    """The VOC root at ``path`` (``Annotations/``, ``ImageSets/Main/``), or None."""
    if not ((path / "Annotations").is_dir() and (path / "ImageSets" / "Main").is_dir()):
        return None
    return VOCDetection(path, split=split, class_names=data.voc_classes or None, collect=collect)
