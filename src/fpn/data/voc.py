"""Pascal VOC detection datasets (``Annotations/*.xml``, ``JPEGImages``, ``ImageSets/Main``).

Same item contract as ``CocoDetection``. VOC boxes are 1-based inclusive pixel indices; they
become 0-based xyxy edges by subtracting 1 from xmin and ymin (as torchvision and detectron2 do).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from fpn.data.coco import read_image
from fpn.data.errors import DatasetError

VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor"]


def parse_voc_xml(path: Path, class_to_label: dict[str, int], keep_difficult: bool) -> dict[str, Any]:
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise DatasetError(f"{path}: annotation file not found") from None
    except ET.ParseError as err:
        raise DatasetError(f"{path}: not valid XML ({err})") from None
    boxes, labels, difficult = [], [], []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in class_to_label:
            raise DatasetError(f"{path}: unknown class {name!r} (name a set's classes in data.voc_classes)")
        is_difficult = (obj.findtext("difficult") or "0").strip() == "1"
        if is_difficult and not keep_difficult:
            continue
        bb = obj.find("bndbox")
        try:
            x1, y1, x2, y2 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError):
            raise DatasetError(f"{path}: object {name!r} has no valid bndbox") from None
        if x2 < x1 or y2 < y1:
            continue
        boxes.append([x1 - 1, y1 - 1, x2, y2])
        labels.append(class_to_label[name])
        difficult.append(is_difficult)
    size = root.find("size")
    height = int(size.findtext("height")) if size is not None and size.findtext("height") else None
    width = int(size.findtext("width")) if size is not None and size.findtext("width") else None
    return {"boxes": boxes, "labels": labels, "difficult": difficult, "height": height, "width": width,
            "file_name": root.findtext("filename")}


class VOCDetection(Dataset):
    """Images and boxes of a Pascal VOC split (``root/ImageSets/Main/{split}.txt``).

    Item ``i`` is ``(image, target)`` as ``CocoDetection`` gives it; difficult objects are left out
    of the targets unless ``keep_difficult`` (``ground_truth`` keeps them, flagged, for the VOC
    metric). Labels are 1..K in the order of ``class_names`` (default: the 20 VOC classes).
    """

    def __init__(self, root: str | Path, split: str = "train", *, class_names: list[str] | None = None,
                 keep_difficult: bool = False):
        self.root = Path(root)
        self.class_names = list(class_names or VOC_CLASSES)
        self.label_to_category_id = {i + 1: i + 1 for i in range(len(self.class_names))}
        self.keep_difficult = keep_difficult
        class_to_label = {name: i + 1 for i, name in enumerate(self.class_names)}
        split_file = self.root / "ImageSets" / "Main" / f"{split}.txt"
        if not split_file.is_file():
            raise DatasetError(f"{split_file}: split file not found")
        self.ids = []
        for number, line in enumerate(split_file.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            image_id = line.split()[0]  # a file name in Annotations/ and JPEGImages/: never a path
            if image_id in (".", "..") or "/" in image_id or "\\" in image_id:
                raise DatasetError(f"{split_file}: line {number}: {image_id!r} is not an image id (a file "
                                   "name without folders, as 2008_000123)")
            self.ids.append(image_id)
        self.records = [parse_voc_xml(self.root / "Annotations" / f"{i}.xml", class_to_label, keep_difficult)
                        for i in self.ids]

    def image_ids(self) -> list[int]:
        """The image ids (1..N in split order, as ``to_coco_dict`` numbers them)."""
        return list(range(1, len(self) + 1))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        record = self.records[index]
        image = read_image(self.root / "JPEGImages" / f"{self.ids[index]}.jpg")
        target = {"boxes": torch.tensor(record["boxes"], dtype=torch.float32).reshape(-1, 4),
                  "labels": torch.tensor(record["labels"], dtype=torch.int64),
                  "crowd_boxes": torch.zeros(0, 4), "image_id": index + 1,
                  "orig_size": tuple(int(s) for s in image.shape[-2:])}
        return image, target

    def ground_truth(self) -> list[dict[str, Any]]:
        """Every image's objects with their difficult flags, for ``fpn.engine.voc_eval.voc_map``.

        Difficult objects are included whatever ``keep_difficult`` says (VOC's metric needs them to
        ignore the detections that hit them); the XMLs are parsed again if the dataset dropped them.
        No image is read. ``image_id`` is the dataset's own (index + 1, as in ``__getitem__``);
        boxes are 0-based xyxy edges (float32, (G, 4)), labels int64 1..K, difficult bool.
        """
        if self.keep_difficult:
            records = self.records
        else:
            class_to_label = {name: i + 1 for i, name in enumerate(self.class_names)}
            records = [parse_voc_xml(self.root / "Annotations" / f"{i}.xml", class_to_label, True)
                       for i in self.ids]
        return [{"image_id": index + 1,
                 "boxes": torch.tensor(record["boxes"], dtype=torch.float32).reshape(-1, 4),
                 "labels": torch.tensor(record["labels"], dtype=torch.int64),
                 "difficult": torch.tensor(record["difficult"], dtype=torch.bool)}
                for index, record in enumerate(records)]

    def to_coco_dict(self) -> dict[str, Any]:
        """The annotations in COCO form, so pycocotools can evaluate on VOC too."""
        images, annotations = [], []
        for index, record in enumerate(self.records):
            images.append({"id": index + 1, "file_name": f"{self.ids[index]}.jpg",
                           "height": record["height"], "width": record["width"]})
            for box, label in zip(record["boxes"], record["labels"], strict=True):
                w, h = box[2] - box[0], box[3] - box[1]
                annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "category_id": label,
                                    "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": 0})
        categories = [{"id": i + 1, "name": n} for i, n in enumerate(self.class_names)]
        return {"images": images, "annotations": annotations, "categories": categories}
