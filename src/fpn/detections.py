"""What a detector found in one image: ``Detections``, drawn, saved, or written as JSON or CSV.

``fpn.Detector`` returns one per image. Boxes are in the pixels of the image as given (its EXIF
orientation applied), whatever size the network saw it at.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageOps
from torch import Tensor

from fpn.box_format import xyxy_to_xywh
from fpn.visualize import DRAW_SCORE_THRESH, ColourBy, draw_detections, draw_masks, save_picture, to_pil

# The columns of ``to_csv`` and of ``fpn predict``'s predictions.csv; boxes are x1, y1, x2, y2 pixels.
CSV_COLUMNS = ["file", "frame", "x1", "y1", "x2", "y2", "score", "label", "category_id", "name", "level"]
_FIELDS = ("boxes", "scores", "labels", "names", "levels")


@dataclass(eq=False)
class Detections:
    """The detections of one image, best first.

    Attributes:
        boxes: (D, 4) float32 ``x1, y1, x2, y2`` in the pixels of the image as given.
        scores: (D,) class probabilities (for the RPN alone: objectness).
        labels: (D,) int64 model labels 1..K (0: a class-agnostic proposal or segment).
        names: the class name of each detection.
        levels: (D,) int64, the k of the pyramid level P_k each detection's RoI was pooled from,
            chosen by Eq. 1 of docs/paper.md §3 from the RoI's size in the resized image (the
            proposal the box was regressed from, not the final box); None where the model has no
            RoI heads (the RPN alone, segment proposals).
        image_size: (height, width) of the image in pixels.
        category_ids: the dataset's category id of each detection (None where it has no class).
        source: the file the image came from, if any; ``frame``: its index in a video.
        image: the image itself for drawing (a PIL image or a 3 x H x W float tensor in [0, 1]),
            kept when it was given in memory; an image from a file is read again to be drawn.
        extras: what else the model returned (``proposals``, ``objectness``, ``masks`` ...).
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    names: list[str]
    levels: Tensor | None
    image_size: tuple[int, int]
    category_ids: list[int | None] = field(default_factory=list)
    source: str | None = None
    frame: int | None = None
    image: Image.Image | Tensor | None = field(default=None, repr=False)
    extras: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.category_ids:
            self.category_ids = [None] * len(self.boxes)

    @property
    def height(self) -> int:
        return int(self.image_size[0])

    @property
    def width(self) -> int:
        return int(self.image_size[1])

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def __repr__(self) -> str:
        top = zip(self.names[:3], self.scores[:3].tolist(), strict=True)
        best = ", ".join(f"{name} {score:.2f}" for name, score in top)
        more = ", ..." if len(self) > 3 else ""
        where = f" of {self.source}" if self.source else ""
        return (f"Detections({len(self)} in a {self.width}x{self.height} image{where}"
                + (f": {best}{more})" if len(self) else ")"))

    # dict-style access, as fpn.api.Detector returned dicts before Detections existed
    def __getitem__(self, key: str) -> Any:
        if key in _FIELDS:
            value = getattr(self, key)
            if value is not None:
                return value
        elif key in self.extras:
            return self.extras[key]
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default

    def keys(self) -> list[str]:
        return [k for k in _FIELDS if getattr(self, k) is not None] + list(self.extras)

    def above(self, score_thresh: float) -> Detections:
        """The detections scored at least ``score_thresh`` (a new object; the image is shared)."""
        keep = self.scores >= score_thresh
        index = torch.nonzero(keep).squeeze(1).tolist()
        extras = {k: v[keep] if torch.is_tensor(v) and v.shape[:1] == keep.shape else v
                  for k, v in self.extras.items()}
        return replace(self, boxes=self.boxes[keep], scores=self.scores[keep], labels=self.labels[keep],
                       names=[self.names[i] for i in index],
                       levels=None if self.levels is None else self.levels[keep],
                       category_ids=[self.category_ids[i] for i in index], extras=extras)

    def picture(self) -> Image.Image:
        """The image the detections belong to (re-read from ``source`` when not kept in memory)."""
        if isinstance(self.image, Image.Image):
            return self.image
        if self.image is not None:
            return to_pil(self.image)
        if self.source is None:
            raise ValueError("these detections keep no image and name no file: pass plot(image=...)")
        with Image.open(self.source) as img:
            return ImageOps.exif_transpose(img).convert("RGB")

    def plot(self, *, score_thresh: float = DRAW_SCORE_THRESH, colour_by: ColourBy = "class",
             image: Image.Image | None = None) -> Image.Image:
        """The image with the detections scored at least ``score_thresh`` drawn, best on top.

        One colour per class, or per pyramid level with ``colour_by="level"`` (the level is then
        written in each label). Segment proposals are drawn as mask overlays.
        """
        base = image if image is not None else self.picture()
        if "masks" in self.extras:
            return draw_masks(base, self.extras["masks"], self.scores, score_thresh)
        return draw_detections(base, self, score_thresh=score_thresh, colour_by=colour_by)

    def save(self, path: str | Path, **plot_args: Any) -> Path:
        """Write ``plot(**plot_args)`` to ``path`` (format from the suffix); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_picture(self.plot(**plot_args), path)
        return path

    def records(self) -> list[dict[str, Any]]:
        """One dict per detection: ``box`` [x1, y1, x2, y2] (to 0.01 px), ``score`` (unrounded, so that
        a threshold applied to it still holds), ``label``, ``category_id``, ``name``, ``level`` (None
        without RoI heads)."""
        levels = self.levels.tolist() if self.levels is not None else [None] * len(self)
        return [{"box": [round(v, 2) for v in box], "score": score, "label": label,
                 "category_id": category_id, "name": name, "level": level}
                for box, score, label, category_id, name, level in zip(
                    self.boxes.tolist(), self.scores.tolist(), self.labels.tolist(), self.category_ids,
                    self.names, levels, strict=True)]

    def coco_records(self) -> list[dict[str, Any]]:
        """COCO-style results (``bbox`` x, y, width, height) with the file, class name and level."""
        out = []
        segmentations = self.extras.get("segmentation")  # COCO RLE of segment proposals
        boxes_xywh = xyxy_to_xywh(self.boxes).tolist()
        for i, (record, xywh) in enumerate(zip(self.records(), boxes_xywh, strict=True)):
            item: dict[str, Any] = {"file_name": self.source, "bbox": [round(v, 2) for v in xywh],
                                    "score": record["score"]}
            if segmentations is not None:
                item["segmentation"] = segmentations[i]
            if self.frame is not None:
                item["frame"] = self.frame
            if record["label"] != 0:
                item.update(category_id=record["category_id"], category_name=record["name"],
                            level=record["level"])
            out.append(item)
        return out

    def to_json(self, path: str | Path | None = None, *, indent: int | None = 1) -> str:
        """``{"file", "frame", "width", "height", "detections": records()}`` as JSON; written to
        ``path`` too when given."""
        text = json.dumps({"file": self.source, "frame": self.frame, "width": self.width,
                           "height": self.height, "detections": self.records()}, indent=indent)
        if path is not None:
            Path(path).write_text(text)
        return text

    def csv_rows(self) -> Iterator[list[Any]]:
        """The rows of ``to_csv`` (columns ``CSV_COLUMNS``), without the header."""
        for r in self.records():
            yield [self.source or "", "" if self.frame is None else self.frame, *r["box"], r["score"],
                   r["label"], "" if r["category_id"] is None else r["category_id"], r["name"],
                   "" if r["level"] is None else r["level"]]

    def to_csv(self, path: str | Path | None = None) -> str:
        """One row per detection under a header (``CSV_COLUMNS``); written to ``path`` too when given."""
        buffer = io.StringIO()
        write_csv([self], buffer)
        if path is not None:
            Path(path).write_text(buffer.getvalue())
        return buffer.getvalue()


def write_csv(detections: Iterable[Detections], file: io.TextIOBase | Any, *, header: bool = True) -> int:
    """Write the detections of many images (under a header line unless ``header=False``, for appending)
    to an open text file; returns the number of rows."""
    writer = csv.writer(file, lineterminator="\n")
    if header:
        writer.writerow(CSV_COLUMNS)
    rows = 0
    for det in detections:
        for row in det.csv_rows():
            writer.writerow(row)
            rows += 1
    return rows
