"""YOLO txt labels (``data.format=yolo``), as Ultralytics, Roboflow, Label Studio and CVAT export them.

Layout: an image folder, and for each image ``x.jpg`` a label file ``x.txt`` in the folder that
has ``labels`` in place of the last ``images`` of the image's path (Ultralytics' rule:
``images/train/x.jpg`` -> ``labels/train/x.txt``), else beside the image (CVAT's YOLO 1.1). One
object per line: ``class cx cy w h``, the class a 0-based index into the class names, the box's
centre and size as fractions of the image's width and height (a polygon line ``class x1 y1 x2 y2
...``, from a segmentation export, counts as its enclosing box). An image without a label file, or
with an empty one, has no objects.

Class names: a ``data.yaml`` (``names:`` a list, or a mapping from index to name) or a
``classes.txt`` (one name a line). From a config: ``data.{split}_images`` is the image folder and
``data.{split}_annotations`` that names file. ``fpn browse DIR`` finds them in a folder holding a
``data.yaml`` (its ``train:`` / ``val:`` entries name the image folders) or ``images/`` and
``labels/`` beside a ``classes.txt``.

Category ids are the YOLO class indices, image ids 1..N in the order of the sorted image paths.
The image sizes come from the images' headers at start-up (no image is decoded). Checked once,
under ``fpn.data.dataset``'s rule: a line that is not numbers, a box not finite, empty or outside
the image is skipped and counted; a class index not among the names stops the command (or is
skipped with ``data.on_bad_annotations=warn``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from fpn.config.schema import DataConfig
from fpn.data.dataset import (
    AnnotatedDataset,
    AnnotatedImage,
    Problems,
    box_in_image,
    record_of,
    refuse_masks,
)
from fpn.data.images import header_hw
from fpn.errors import DatasetError, PathNotFoundError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
LINE_NOT_NUMBERS = "line not 'class cx cy w h' numbers"
UNKNOWN_CLASS = "class index not among the names"


def read_class_names(path: Path) -> list[str]:
    """The class names of a ``data.yaml`` (``names``: list or {index: name}) or of a text file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise PathNotFoundError(f"{path}: class names file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: cannot read the class names ({err})") from None
    if path.suffix not in (".yaml", ".yml"):
        return [line.strip() for line in text.splitlines() if line.strip()]
    names = _yaml_mapping(path, text).get("names")
    if isinstance(names, dict) and sorted(names) == list(range(len(names))):
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names or not all(isinstance(n, str | int) for n in names):
        raise DatasetError(f"{path}: 'names' must be a list of class names, or a mapping 0..K-1 -> name")
    return [str(n) for n in names]


def _yaml_mapping(path: Path, text: str) -> dict[str, Any]:
    """A ``data.yaml``'s mapping; a ``DatasetError`` naming the file if it is not one."""
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0][:120]
        raise DatasetError(f"{path}: not valid YAML ({first})") from None
    if not isinstance(loaded, dict):
        raise DatasetError(f"{path}: not a YAML mapping with 'names'")
    return loaded


def label_file(image: Path) -> Path:
    """Where Ultralytics looks for an image's labels: ``images`` -> ``labels``, else beside it."""
    parts = image.with_suffix(".txt").parts
    if "images" in parts:
        last = len(parts) - 1 - parts[::-1].index("images")
        swapped = Path(*parts[:last], "labels", *parts[last + 1:])
        if swapped.is_file() or not image.with_suffix(".txt").is_file():
            return swapped
    return image.with_suffix(".txt")


def _line_box(values: list[str]) -> tuple[int, tuple[float, float, float, float]] | None:
    """(class, (cx, cy, w, h) normalised) of a label line, or None if it is not one."""
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        return None
    if len(numbers) < 5 or not numbers[0].is_integer() or numbers[0] < 0:
        return None
    if len(numbers) == 5:
        return int(numbers[0]), tuple(numbers[1:])  # type: ignore[return-value]
    if len(numbers) % 2 == 0:
        return None
    xs, ys = numbers[1::2], numbers[2::2]  # a polygon: its enclosing box
    width, height = max(xs) - min(xs), max(ys) - min(ys)
    return int(numbers[0]), (min(xs) + width / 2, min(ys) + height / 2, width, height)


class YOLODetection(AnnotatedDataset):
    """The images under ``image_dir`` with their YOLO label files (module docstring)."""

    def __init__(self, image_dir: str | Path, class_names: list[str], *, on_bad_annotations: str = "error",
                 collect: bool = False):
        self.image_dir = self.image_root = Path(image_dir)
        if not self.image_dir.is_dir():
            raise PathNotFoundError(f"{self.image_dir}: image folder not found")
        self.class_names = list(class_names)
        self.label_to_category_id = {i + 1: i for i in range(len(self.class_names))}
        self.on_bad_annotations = on_bad_annotations
        self.problems = Problems(self.image_dir, collect=collect)
        files = sorted(p for p in self.image_dir.rglob("*")
                       if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        self.images: list[AnnotatedImage] = [self._record(i + 1, file) for i, file in enumerate(files)]
        if not collect:
            self.problems.report()

    def _record(self, image_id: int, image: Path) -> AnnotatedImage:
        labels = label_file(image)
        try:
            hw = header_hw(image)
        except DatasetError:
            return record_of(image_id, image, None, [])  # unreadable: skipped when it is loaded
        try:
            lines = labels.read_text().splitlines() if labels.is_file() else []
        except (OSError, UnicodeDecodeError) as err:
            self.problems.stop("label file unreadable", f"cannot read the labels ({err})", file=labels)
            lines = []
        rows = [row for number, line in enumerate(lines, start=1) if line.strip()
                if (row := self._row(line.split(), hw, f"{labels.name} line {number}", labels)) is not None]
        return record_of(image_id, image, hw, rows)

    def _row(self, values: list[str], hw: tuple[int, int], where: str, labels: Path) -> tuple | None:
        parsed = _line_box(values)
        if parsed is None:
            self.problems.skip(LINE_NOT_NUMBERS, where)
            return None
        cls, (cx, cy, w, h) = parsed
        if cls >= len(self.class_names):
            if self.on_bad_annotations == "warn":
                self.problems.skip(UNKNOWN_CLASS, where)
            else:
                count = len(self.class_names)
                self.problems.stop(UNKNOWN_CLASS, f"line {where.rsplit(' ', 1)[1]}: class {cls} is not among "
                                   f"the {count} class names (0..{count - 1}); data.on_bad_annotations=warn "
                                   "skips such lines", file=labels)
            return None
        height, width = hw
        corners = ((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height)
        box, problem = box_in_image(corners, hw)
        if problem:
            self.problems.skip(problem, where)
            return None
        return box, cls + 1, False, False, (box[2] - box[0]) * (box[3] - box[1])


def from_config(data: DataConfig, split: str, *, masks: bool = False, collect: bool = False) -> YOLODetection:
    """``data.{split}_images`` with its labels; class names from ``data.{split}_annotations``."""
    refuse_masks(masks, "YOLO box labels have none")
    images = data.train_images if split == "train" else data.val_images
    names = data.train_annotations if split == "train" else data.val_annotations
    return YOLODetection(images, read_class_names(Path(names)), on_bad_annotations=data.on_bad_annotations,
                         collect=collect)


def from_path(path: Path, *, split: str, images: Path | None, data: DataConfig, collect: bool = False
              ) -> YOLODetection | None:
    """The YOLO set at ``path`` (a folder with a ``data.yaml``, or with ``images/`` and ``labels/``
    and a ``classes.txt`` or ``data.yaml``), ``split``'s images; None when ``path`` is not one."""
    if not path.is_dir():
        return None
    names_file = next((path / name for name in ("data.yaml", "data.yml", "classes.txt")
                       if (path / name).is_file()), None)
    if names_file is None or not ((path / "labels").is_dir() or names_file.suffix != ".txt"):
        return None
    image_dir = Path(images) if images else _split_images(path, names_file, split)
    return YOLODetection(image_dir, read_class_names(names_file), on_bad_annotations=data.on_bad_annotations,
                         collect=collect)


def _split_images(root: Path, names_file: Path, split: str) -> Path:
    """The image folder of ``split``: data.yaml's entry (relative to its ``path``, or to the
    dataset's folder; ``val`` also for "valid"), else ``images/<split>``, ``<split>/images``,
    ``images``."""
    spec = _yaml_mapping(names_file, names_file.read_text()) if names_file.suffix != ".txt" else {}
    entry = spec.get(split) or spec.get({"valid": "val", "val": "valid"}.get(split, split))
    if isinstance(entry, str):
        base = root / str(spec.get("path") or ".")
        inside = entry.replace("\\", "/").removeprefix("./")
        while inside.startswith("../"):  # Roboflow writes ../train/images for train/images
            inside = inside[3:]
        candidates = [base / entry, root / entry, root / inside]
        found = next((c for c in candidates if c.is_dir()), None)
        if found is not None:
            return found
    for candidate in (root / "images" / split, root / split / "images", root / "images"):
        if candidate.is_dir():
            return candidate
    raise DatasetError(f"{root}: no image folder for split {split!r} (looked for data.yaml's {split!r} "
                       f"entry, images/{split}, {split}/images and images/)")
