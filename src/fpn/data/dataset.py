"""The contract every dataset format fulfils (``DetectionDataset``) and what the formats share.

A format (``fpn.data.coco``, ``voc``, ``yolo``; listed in ``fpn.data.formats``) reads and checks
its files once, into ``AnnotatedImage`` records; every consumer works from those records: the
training items (``__getitem__``), the ground truth pycocotools scores against (``to_coco_dict``),
Pascal VOC's metric (``ground_truth``), ``fpn browse``, ``fpn proposals`` and the evaluation's
pictures. Nothing reads an annotation file a second time.

The rule for bad records (``Problems``), the same for every format and every command:

- a record the dataset cannot be built without (the file's structure, an image or a category)
  stops the command: a ``DatasetError`` of one line naming the file, the record and the field;
- an annotation whose own fields are unusable (a box that is not 4 finite numbers, of zero or
  negative size, or outside its image) is skipped; the skipped ones are counted in one warning
  line per file, by kind, with their ids;
- annotations naming an image or category the file does not define (and repeated image ids,
  malformed segmentations) stop the command, or with ``data.on_bad_annotations=warn`` are
  skipped and counted like the others.

``Problems(collect=True)`` notes the stops too instead of raising, for ``fpn browse --check``.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch.utils.data import Dataset

from fpn.box_format import clip_boxes
from fpn.data.images import header_hw, read_image
from fpn.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

MAX_EXAMPLES = 5  # ids named per kind of problem


@dataclass
class AnnotatedImage:
    """One image's validated annotations: what every consumer of a dataset reads."""

    image_id: int  # the id evaluation and proposal files key the image by
    file: Path
    recorded_hw: tuple[int, int] | None  # (height, width) the annotations give, if they do
    boxes_xyxy: np.ndarray  # (G, 4) float32, finite, x2 > x1 and y2 > y1, in the image's pixels
    labels: np.ndarray  # (G,) int64 in 1..K
    is_crowd: np.ndarray  # (G,) bool: COCO's crowd regions (ignored, not background)
    difficult: np.ndarray  # (G,) bool: VOC's difficult objects
    areas: np.ndarray  # (G,) float64: the file's area (COCO: the mask's) or the box's
    segmentations: list[bytes] | None = None  # JSON of each annotation's mask, when kept

    def image_hw(self) -> tuple[int, int]:
        """(height, width): as recorded, else from the image file's header (not decoded)."""
        return self.recorded_hw or header_hw(self.file)

    def objects(self, *, with_difficult: bool = True) -> np.ndarray:
        """(G,) bool: the annotations that are objects (not crowd regions; difficult ones if asked)."""
        keep = ~self.is_crowd
        return keep if with_difficult else keep & ~self.difficult


@runtime_checkable
class DetectionDataset(Protocol):
    """What every job asks of a dataset, whatever its format.

    Item ``i`` is ``(image, target)``: image 3 x H x W float in [0, 1]; target ``boxes`` (N, 4)
    float32 xyxy pixels, ``labels`` (N,) int64 in 1..K, ``crowd_boxes`` (M, 4), ``image_id``,
    ``orig_size`` (H, W) (and ``masks`` where the format has them and they were asked for).
    """

    class_names: list[str]  # the names of labels 1..K
    label_to_category_id: dict[int, int]  # label 1..K -> the dataset's category id
    images: list[AnnotatedImage]  # in dataset order
    image_root: Path  # the folder the images' files are under
    voc_metric: bool  # Pascal VOC's mAP is scored beside COCO's AP

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]: ...

    def image_ids(self) -> list[int]: ...

    def to_coco_dict(self) -> dict[str, Any]: ...

    def ground_truth(self) -> list[dict[str, Any]]: ...


class AnnotatedDataset(Dataset):
    """The items, ids and ground truths of a ``DetectionDataset``, from its ``images``.

    A format sets ``class_names``, ``label_to_category_id``, ``images`` and ``image_root``;
    ``keep_difficult`` keeps VOC's difficult objects in the training targets.
    """

    class_names: list[str]
    label_to_category_id: dict[int, int]
    images: list[AnnotatedImage]
    image_root: Path
    voc_metric = False
    keep_difficult = False

    def __len__(self) -> int:
        return len(self.images)

    def image_ids(self) -> list[int]:
        """The image ids, in dataset order (no image is decoded)."""
        return [record.image_id for record in self.images]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        record = self.images[index]
        image = read_image(record.file, record.recorded_hw)
        height, width = image.shape[-2:]
        boxes = clip_boxes(torch.from_numpy(record.boxes_xyxy), (height, width))  # the decoded size
        objects = torch.from_numpy(record.objects(with_difficult=self.keep_difficult))
        crowd = torch.from_numpy(record.is_crowd)
        kept = boxes[objects]
        visible = (kept[:, 2] > kept[:, 0]) & (kept[:, 3] > kept[:, 1])  # not clipped to nothing
        labels = torch.from_numpy(record.labels)[objects]
        target: dict[str, Any] = {"boxes": kept[visible], "labels": labels[visible],
                                  "crowd_boxes": boxes[crowd], "image_id": record.image_id,
                                  "orig_size": (int(height), int(width))}
        masks = self.masks(record, objects, (int(height), int(width)))
        if masks is not None:
            target["masks"] = masks[visible]
        return image, target

    def masks(self, record: AnnotatedImage, objects: torch.Tensor, image_hw: tuple[int, int]
              ) -> torch.Tensor | None:
        """(N, H, W) uint8 masks of the ``objects`` of ``record``, for formats that have them."""
        return None

    def to_coco_dict(self) -> dict[str, Any]:
        """The validated annotations in COCO form, for pycocotools: images numbered by their ids,
        annotations 1..M (the file's own ids may repeat), boxes as kept (clipped to the image),
        VOC's difficult objects left out unless ``keep_difficult``, segmentations where kept."""
        images, annotations = [], []
        for record in self.images:
            entry: dict[str, Any] = {"id": record.image_id,
                                     "file_name": _relative(record.file, self.image_root)}
            try:
                entry["height"], entry["width"] = record.image_hw()
            except DatasetError:
                pass  # an unreadable image: evaluation skips it and counts it
            images.append(entry)
            keep = record.objects(with_difficult=self.keep_difficult) | record.is_crowd
            for i in np.flatnonzero(keep):
                x1, y1, x2, y2 = (float(v) for v in record.boxes_xyxy[i])
                ann = {"id": len(annotations) + 1, "image_id": record.image_id,
                       "category_id": int(self.label_to_category_id[int(record.labels[i])]),
                       "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(record.areas[i]),
                       "iscrowd": int(record.is_crowd[i])}
                if record.segmentations is not None and record.segmentations[i] is not None:
                    ann["segmentation"] = json.loads(record.segmentations[i])
                annotations.append(ann)
        categories = [{"id": int(self.label_to_category_id[i + 1]), "name": name}
                      for i, name in enumerate(self.class_names)]
        return {"info": {}, "images": images, "annotations": annotations, "categories": categories}

    def ground_truth(self) -> list[dict[str, Any]]:
        """Every image's objects with their difficult flags, for ``fpn.evaluation.voc.voc_map``:
        ``image_id``, boxes (G, 4) float32 xyxy, labels int64 1..K, difficult bool (kept whatever
        ``keep_difficult`` says: VOC's metric ignores the detections that hit them). No image is read."""
        truths = []
        for record in self.images:
            objects = record.objects()
            truths.append({"image_id": record.image_id,
                           "boxes": torch.from_numpy(record.boxes_xyxy[objects]).reshape(-1, 4),
                           "labels": torch.from_numpy(record.labels[objects]),
                           "difficult": torch.from_numpy(record.difficult[objects])})
        return truths


BOX_NOT_FINITE = "box not finite"
BOX_EMPTY = "box of zero or negative size"
BOX_OUTSIDE = "box outside its image"


def box_in_image(xyxy: tuple[float, float, float, float], image_hw: tuple[int, int] | None
                 ) -> tuple[list[float] | None, str | None]:
    """(the box clipped to the image when its size is known, None), or (None, what is wrong)."""
    if not all(math.isfinite(v) for v in xyxy):
        return None, BOX_NOT_FINITE
    x1, y1, x2, y2 = xyxy
    if x2 <= x1 or y2 <= y1:
        return None, BOX_EMPTY
    if image_hw is None:
        return [x1, y1, x2, y2], None
    height, width = image_hw
    x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
    y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
    if x2 <= x1 or y2 <= y1:
        return None, BOX_OUTSIDE
    return [x1, y1, x2, y2], None


def _relative(file: Path, root: Path) -> str:
    return str(file.relative_to(root)) if file.is_relative_to(root) else str(file)


def record_of(image_id: int, file: Path, recorded_hw: tuple[int, int] | None, rows: list[tuple], *,
              segmentations: list[bytes] | None = None) -> AnnotatedImage:
    """An ``AnnotatedImage`` from rows ``(box_xyxy, label, is_crowd, difficult, area)``."""
    return AnnotatedImage(
        image_id, file, recorded_hw,
        np.array([r[0] for r in rows], dtype=np.float32).reshape(-1, 4),
        np.array([r[1] for r in rows], dtype=np.int64),
        np.array([r[2] for r in rows], dtype=bool),
        np.array([r[3] for r in rows], dtype=bool),
        np.array([r[4] for r in rows], dtype=np.float64),
        segmentations)


@dataclass
class Problem:
    """One kind of problem in a dataset: how often, and the first records it hit."""

    kind: str  # what is wrong, e.g. "bbox not 4 numbers"
    stops: bool  # True: the command stops on it; False: the records are skipped
    what: str = "annotation"  # what is skipped: an annotation, an image
    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, example: str, count: int = 1) -> None:
        self.count += count
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(example)

    def where(self) -> str:
        """The first records hit: ``ids 17, 40, 41, ...`` or ``a.txt line 3, ...``."""
        more = ", ..." if self.count > len(self.examples) else ""
        if self.examples and all(e.startswith("id ") for e in self.examples):
            return f"id{'s' if self.count > 1 else ''} {', '.join(e[3:] for e in self.examples)}{more}"
        return ", ".join(self.examples) + more

    def text(self) -> str:
        """``3 annotations skipped: bbox not 4 numbers (ids 17, 40, 41)``."""
        plural = "s" if self.count != 1 else ""
        return f"{self.count} {self.what}{plural} skipped: {self.kind} ({self.where()})"


class Problems:
    """The bad records found while reading one dataset, under the module's rule.

    ``skip(kind, example)``: the annotation is left out and counted; ``report()`` logs one
    warning line for all of them. ``stop(kind, message)``: a ``DatasetError`` naming ``file``,
    unless ``collect`` (``fpn browse --check``), which notes it and lets the reader go on.
    """

    def __init__(self, file: Path, *, collect: bool = False):
        self.file, self.collect = Path(file), collect
        self.found: dict[tuple[str, bool], Problem] = {}
        self.notes: list[str] = []  # what was repaired rather than skipped (clipped boxes, ...)

    def skip(self, kind: str, example: str, *, what: str = "annotation") -> None:
        self.found.setdefault((kind, False), Problem(kind, False, what)).add(example)

    def stop(self, kind: str, message: str, count: int = 1, *, file: Path | None = None) -> None:
        """Raise ``DatasetError("FILE: message")`` (``file``: the file it is in, when a dataset has
        several), or note it under ``collect``."""
        message = f"{file or self.file}: {message}"
        if not self.collect:
            raise DatasetError(message)
        self.found.setdefault((kind, True), Problem(kind, True, "record")).add(message, count)

    def skipped(self) -> int:
        return sum(p.count for p in self.found.values() if not p.stops)

    def problems(self) -> list[Problem]:
        return list(self.found.values())

    def report(self) -> None:
        """One warning line: every kind of skipped annotation with its count and first ids, and
        what was repaired."""
        parts = [p.text() for p in self.found.values() if not p.stops] + self.notes
        if parts:
            log.warning("%s: %s", self.file, "; ".join(parts))


def refuse_masks(masks: bool, why: str) -> None:
    """A ``ConfigError`` when instance masks are asked of a format that has none (``why``)."""
    if masks:
        raise ConfigError(f"model.proposals=segments needs instance masks and {why}: "
                          "use COCO-format data (data.format=coco)")
