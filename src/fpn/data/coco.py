"""COCO-format detection datasets, tolerant of real-world files.

Read and checked once (the rule for bad records is ``fpn.data.dataset``'s):

- Category ids may be anything (COCO's 1..90 with gaps): labels are contiguous 1..K in the
  order of the ids, mapped back through ``label_to_category_id``. Ids must be integers, unique.
- ``iscrowd`` regions go to ``target["crowd_boxes"]``: the model ignores anchors and RoIs inside
  them instead of taking them as background, as the COCO protocol ignores them.
- Images without annotations are kept as negatives. Image ids must be integers (evaluation and
  proposal files key images by them), ``file_name`` a path inside the image folder, ``height``
  and ``width`` (when given) positive whole numbers; otherwise the command stops naming the image.
- An annotation whose ``bbox`` is not 4 finite numbers, has zero or negative size, or lies outside
  its image is skipped; boxes reaching outside the image are clipped; one warning counts both.
- Annotations naming an image or category id that the file does not define, images repeating an
  earlier image id, and a ``segmentation`` that is neither polygons nor RLE raise ``DatasetError``;
  with ``on_bad_annotations="warn"`` they are dropped (the first of repeated images is kept).
- A ``file_name`` that is absolute or leaves the image folder (``../../etc/passwd``) is refused
  naming the image, unless ``allow_outside_image_paths`` (``data.allow_outside_image_paths``):
  an annotation file from elsewhere must not make training read arbitrary files.
- Images are only indexed at start-up; each is decoded when it is first asked for. The ground
  truth pycocotools scores against is ``to_coco_dict()`` of the checked records, never the file.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path, PureWindowsPath
from typing import Any, Literal

import numpy as np
import torch

from fpn.config.schema import DataConfig
from fpn.data.dataset import AnnotatedDataset, AnnotatedImage, Problems, record_of
from fpn.errors import DatasetError

log = logging.getLogger(__name__)

# fault -> (singular, plural) for the error; the warning says what was dropped
_FAULTS = {
    "duplicate_image_id": ("image repeats an earlier image id", "images repeat an earlier image id"),
    "unknown_image": ("annotation names an image id not in 'images'",
                      "annotations name image ids not in 'images'"),
    "unknown_category": ("annotation names a category id not in 'categories'",
                         "annotations name category ids not in 'categories'"),
    "bad_segmentation": ("annotation has a malformed segmentation",
                         "annotations have malformed segmentations"),
}
# the kinds of skipped annotations, as the warning names them
BBOX_NOT_4_NUMBERS = "bbox not 4 numbers"
BBOX_NOT_FINITE = "bbox not finite"
BBOX_EMPTY = "bbox of zero or negative size"
BBOX_OUTSIDE = "bbox outside its image"
NOT_AN_OBJECT = "not a JSON object"
BAD_ISCROWD = "iscrowd not 0 or 1"


def _require(condition: bool, file: Path, problem: str) -> None:
    if not condition:
        raise DatasetError(f"{file}: {problem}")


def load_coco_json(ann_file: str | Path) -> dict[str, Any]:
    """The JSON, checked for the structure a detection dataset needs (the lists; their records are
    checked by ``CocoDetection``)."""
    ann_file = Path(ann_file)
    try:
        data = json.loads(ann_file.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{ann_file}: annotation file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise DatasetError(f"{ann_file}: not valid JSON ({str(err)[:160]})") from None
    except IsADirectoryError:
        raise DatasetError(f"{ann_file}: a folder, not an annotation file") from None
    _require(isinstance(data, dict), ann_file, "expected a JSON object with images, annotations, categories")
    for key in ("images", "categories"):
        _require(key in data, ann_file, f"not COCO format: no '{key}' list")
        _require(isinstance(data[key], list), ann_file, f"'{key}' must be a list")
    data.setdefault("annotations", [])
    _require(isinstance(data["annotations"], list), ann_file, "'annotations' must be a list")
    return data


def _check_images(images: list[Any], problems: Problems) -> list[dict[str, Any]]:
    """The images whose id, file_name, height and width are usable (the others stop the command,
    or with ``problems.collect`` are noted and left out)."""
    kept = []
    for i, img in enumerate(images):
        if not isinstance(img, dict) or not isinstance(img.get("file_name"), str) or not img["file_name"]:
            problems.stop("image without file_name", f"images[{i}] needs an integer 'id' and a 'file_name'")
        elif not _is_int(img.get("id")):
            problems.stop("image id not an integer",
                          f"images[{i}] has id {_short(img.get('id'))}: image ids must be integers, as in "
                          "COCO's format (number the images and use those numbers as the annotations' "
                          "image_id)")
        elif bad := next((k for k in ("height", "width") if not _is_size(img.get(k))), None):
            problems.stop("image size not a positive whole number",
                          f"image {_short(img['id'])}: {bad} {_short(img[bad])} is not a positive whole "
                          "number")
        else:
            kept.append(img)
    return kept


def _check_categories(categories: list[Any], problems: Problems) -> list[dict[str, Any]]:
    """The categories with an integer id, unique, and a text name (missing or empty: the id)."""
    kept, seen = [], {}
    for i, cat in enumerate(categories):
        if not isinstance(cat, dict) or not _is_int(cat.get("id")):
            problems.stop("category id not an integer", f"categories[{i}] needs an integer 'id'")
        elif cat["id"] in seen:
            first = seen[cat["id"]]
            problems.stop("category id repeated",
                          f"categories[{first}] and categories[{i}] have the same id {cat['id']} "
                          f"({_short(categories[first].get('name'))} and {_short(cat.get('name'))}): "
                          "category ids must be unique")
        elif not isinstance(cat.get("name", ""), str):
            problems.stop("category name not text",
                          f"categories[{i}] (id {cat['id']}): name {_short(cat['name'])} is not text")
        else:
            seen[cat["id"]] = i
            kept.append(cat)
    return kept


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_size(value: Any) -> bool:
    """An image side as COCO records it: absent, or a positive whole number (480 or 480.0)."""
    if value is None:
        return True
    return _is_number(value) and value > 0 and float(value).is_integer()


def segmentation_problem(segmentation: Any, image_hw: tuple[Any, Any] = (None, None)) -> str | None:
    """What is wrong with a COCO ``segmentation``, or None: absent, polygons (a list of lists of at
    least 4 numbers, x y pairs) or RLE ({"counts": str or list of counts, "size": [height, width]}).

    pycocotools trusts what it is given: a polygon corner at 1e308 makes it rasterise until memory
    runs out, RLE counts that do not add up to height x width make it write past its buffer. So
    polygons must lie within ``POLYGON_MARGIN`` image sides of the image (of ``MAX_SIDE`` pixels
    when its size is unknown) and an RLE's counts must cover its size exactly, which must be the
    image's when known."""
    if segmentation is None:
        return None
    if isinstance(segmentation, list):
        return _polygons_problem(segmentation, image_hw)
    if isinstance(segmentation, dict):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if not (isinstance(size, list) and len(size) == 2
                and all(_is_int(v) and 0 <= v <= MAX_SIDE for v in size)):
            return "an RLE needs 'size': [height, width]"
        if None not in image_hw and tuple(size) != tuple(image_hw):
            return f"an RLE of size {size} on an image of {list(image_hw)} (height, width)"
        if isinstance(counts, str):
            counts = _rle_string_counts(counts)
        elif not (isinstance(counts, list) and all(_is_int(v) and v >= 0 for v in counts)):
            counts = None
        if counts is None:
            return "an RLE needs 'counts': a string or a list of non-negative integers"
        if sum(counts) != size[0] * size[1]:
            return (f"an RLE's counts add up to {_short(sum(counts))} pixels, not height x width = "
                    f"{size[0] * size[1]}")
        return None
    return f"expected polygons (a list) or an RLE (an object), got {type(segmentation).__name__}"


MAX_SIDE = 100_000  # pixels: a larger image side is not a photograph
POLYGON_MARGIN = 1.0  # image sides a polygon may reach outside its image


def _polygons_problem(polygons: list[Any], image_hw: tuple[Any, Any]) -> str | None:
    height, width = (MAX_SIDE, MAX_SIDE) if None in image_hw else image_hw
    for polygon in polygons:
        if not isinstance(polygon, list) or not all(_is_number(v) for v in polygon):
            return "a polygon must be a list of numbers (x1, y1, x2, y2, ...)"
        if len(polygon) < 4 or len(polygon) % 2:
            return f"a polygon has {len(polygon)} coordinates (an even number, at least 4, expected)"
        for values, side, axis in ((polygon[0::2], width, "x"), (polygon[1::2], height, "y")):
            if min(values) < -POLYGON_MARGIN * side or max(values) > (1 + POLYGON_MARGIN) * side:
                return f"a polygon reaches {axis} = {max(values, key=abs):g}, far outside the image"
    return None


def _rle_string_counts(text: str) -> list[int] | None:
    """The counts of a compressed RLE string (COCO's: 5-bit groups offset by 48, 0x20 continues,
    0x10 signs the last group; from the third count on, a difference to the count two before),
    or None if it is not one or a count is negative."""
    counts: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(text):
                return None
            code = ord(text[position]) - 48
            if not 0 <= code < 64:
                return None
            value |= (code & 0x1F) << shift
            more = bool(code & 0x20)
            position, shift = position + 1, shift + 5
            if not more and code & 0x10:
                value |= -1 << shift
        if len(counts) > 2:
            value += counts[-2]
        if value < 0:
            return None
        counts.append(value)
    return counts


def _is_number(value: Any) -> bool:
    """A finite int or float (not a bool; an int too large for a float is not finite)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def check_file_name(file_name: str) -> str | None:
    """Why ``file_name`` would be read from outside its image folder (absolute, a drive, or more
    ``..`` than folders), or None. A lexical check: symbolic links inside the folder are the
    folder owner's business. Backslashes count as separators (files made on Windows)."""
    if file_name.startswith(("/", "\\")) or PureWindowsPath(file_name).drive:
        return "is absolute"
    depth = 0
    for part in re.split(r"[\\/]", file_name):
        if part in ("", "."):
            continue
        depth += -1 if part == ".." else 1
        if depth < 0:
            return "leaves the image folder"
    return None


class CocoDetection(AnnotatedDataset):
    """Images and boxes (and optionally masks) of a COCO instances file.

    Item ``i`` is ``(image, target)`` (``fpn.data.dataset.DetectionDataset``), with ``masks``
    (N, H, W) uint8 under ``load_masks``. ``keep_segmentations`` keeps every annotation's mask for
    ``to_coco_dict`` (the ground truth of mask AR); ``load_masks`` implies it.

    Start-up reads the JSON once and keeps only compact per-image arrays (the parsed JSON is
    freed), so a 100k-image annotation file costs little memory in every loader worker, and
    no image is decoded before it is asked for. ``collect``: note every problem in ``problems``
    instead of stopping at the first (``fpn browse --check``).
    """

    def __init__(self, image_dir: str | Path, ann_file: str | Path, *, load_masks: bool = False,
                 keep_segmentations: bool = False, on_bad_annotations: Literal["error", "warn"] = "error",
                 allow_outside_image_paths: bool = False, collect: bool = False):
        if on_bad_annotations not in ("error", "warn"):
            raise ValueError(f"on_bad_annotations must be 'error' or 'warn', not {on_bad_annotations!r}")
        self.image_dir = self.image_root = Path(image_dir)
        self.ann_file = Path(ann_file)
        self.load_masks = load_masks
        self.keep_segmentations = keep_segmentations or load_masks
        self.on_bad_annotations = on_bad_annotations
        self.problems = Problems(self.ann_file, collect=collect)
        data = load_coco_json(self.ann_file)
        totals = {"images": len(data["images"]), "annotations": len(data["annotations"])}  # in the file
        images = _check_images(data["images"], self.problems)
        if not allow_outside_image_paths:
            images = _refuse_outside_paths(images, self.problems)
        categories = sorted(_check_categories(data["categories"], self.problems), key=lambda c: c["id"])
        images, annotations, faults = _drop_bad_ids(images, {c["id"] for c in categories},
                                                    data["annotations"], self.problems)
        if faults and (on_bad_annotations == "error" or collect):
            for kind, (count, first) in faults.items():
                self.problems.stop(_FAULTS[kind][1], f"{_describe({kind: (count, first)})}; "
                                   "on_bad_annotations='warn' (data.on_bad_annotations) drops them", count)
        self.category_id_to_label = {c["id"]: i + 1 for i, c in enumerate(categories)}
        self.label_to_category_id = {label: cid for cid, label in self.category_id_to_label.items()}
        self.class_names = [c.get("name") or str(c["id"]) for c in categories]
        self.stats = {**totals, "kept": 0,
                      "clipped": 0, "dropped_degenerate": 0, "crowd": 0, "images_without_annotations": 0,
                      **{kind: faults.get(kind, (0, None))[0] for kind in _FAULTS}}
        self.images = self._index(images, annotations)
        del data
        if faults:
            self.problems.notes.insert(0, f"dropped: {_describe(faults)}")
        if self.stats["clipped"]:
            self.problems.notes.append(f"{self.stats['clipped']} annotation(s) clipped to their image")
        if not collect:
            self.problems.report()

    def _index(self, images: list[dict], annotations: list[dict]) -> list[AnnotatedImage]:
        per_image: dict[int, list[tuple]] = {img["id"]: [] for img in images}
        segmentations: dict[int, list[bytes | None]] = {img["id"]: [] for img in images}
        sizes = {img["id"]: (img.get("height"), img.get("width")) for img in images}
        for i, ann in enumerate(annotations):  # _drop_bad_ids left only known image and category ids
            name = _annotation_name(ann, i)
            box, problem = _checked_box(ann.get("bbox"), sizes[ann["image_id"]])
            crowd = ann.get("iscrowd", 0)
            if problem is None and crowd not in (0, 1):
                problem = BAD_ISCROWD
            if problem is not None:
                self.problems.skip(problem, name)
                self.stats["dropped_degenerate"] += problem != BAD_ISCROWD
                continue
            xyxy, clipped = box
            area = ann.get("area")
            if not (_is_number(area) and area >= 0):
                area = (xyxy[2] - xyxy[0]) * (xyxy[3] - xyxy[1])
            self.stats["clipped"] += clipped
            self.stats["crowd" if crowd else "kept"] += 1
            per_image[ann["image_id"]].append((xyxy, self.category_id_to_label[ann["category_id"]],
                                               bool(crowd), False, float(area)))
            if self.keep_segmentations:
                segmentation = ann.get("segmentation")
                segmentations[ann["image_id"]].append(None if segmentation is None
                                                      else json.dumps(segmentation).encode())
        records = []
        for img in images:
            rows = per_image[img["id"]]
            self.stats["images_without_annotations"] += not any(not row[2] for row in rows)
            height, width = sizes[img["id"]]
            recorded = (int(height), int(width)) if height is not None and width is not None else None
            kept = segmentations[img["id"]] if self.keep_segmentations else None
            records.append(record_of(img["id"], self.image_dir / img["file_name"], recorded, rows,
                                     segmentations=kept))
        return records

    def masks(self, record: AnnotatedImage, objects: torch.Tensor, image_hw: tuple[int, int]
              ) -> torch.Tensor | None:
        if not self.load_masks:
            return None
        chosen = [record.segmentations[i] or b"null" for i in np.flatnonzero(objects.numpy())]
        return _masks(chosen, *image_hw, self.ann_file)


def _annotation_name(ann: dict[str, Any], index: int) -> str:
    """``id 17``, or ``annotations[3]`` for an annotation without a usable id."""
    return f"id {_short(ann['id'])}" if isinstance(ann.get("id"), int | str) else f"annotations[{index}]"


def _refuse_outside_paths(images: list[dict], problems: Problems) -> list[dict]:
    kept = []
    for img in images:
        if problem := check_file_name(img["file_name"]):
            problems.stop("file_name outside the image folder",
                          f"image {_short(img['id'])}: file_name {_short(img['file_name'])} "
                          f"{problem}; refused (data.allow_outside_image_paths=true reads it anyway)")
        else:
            kept.append(img)
    return kept


def _hashable(value: Any) -> Any:
    return value if isinstance(value, int | str | float | type(None)) else None


def _drop_bad_ids(images: list[dict], category_ids: set[int], annotations: list[Any], problems: Problems
                  ) -> tuple[list[dict], list[dict], dict[str, tuple[int, str]]]:
    """The images without those repeating an earlier image id (the first is kept), and the
    annotations without those naming an image or category id not defined in the file, or with a
    malformed segmentation; annotations that are not JSON objects are skipped in ``problems``.

    Returns (images, annotations, {fault: (count, first offender)}); one pass, O(images + annotations).
    """
    found: dict[str, list] = {}

    def note(kind: str, first: str) -> None:
        found.setdefault(kind, [0, first])[0] += 1

    kept_images, image_ids = [], set()
    sizes = {img["id"]: (img.get("height"), img.get("width")) for img in images}
    for img in images:
        if img["id"] in image_ids:
            note("duplicate_image_id", f"image {_short(img['id'])}")
        else:
            image_ids.add(img["id"])
            kept_images.append(img)
    kept = []
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            problems.skip(NOT_AN_OBJECT, f"annotations[{i}]")
            continue
        has_id = isinstance(ann.get("id"), int | str)
        name = f"annotation {_short(ann['id'])}" if has_id else f"annotations[{i}]"
        if _hashable(ann.get("image_id")) not in image_ids or isinstance(ann.get("image_id"), bool):
            note("unknown_image", f"{name}, image {_short(ann.get('image_id'))}")
        elif (_hashable(ann.get("category_id")) not in category_ids
              or isinstance(ann.get("category_id"), bool)):
            note("unknown_category", f"{name}, category {_short(ann.get('category_id'))}")
        elif problem := segmentation_problem(ann.get("segmentation"), sizes[ann["image_id"]]):
            note("bad_segmentation", f"{name}: {problem}")
        else:
            kept.append(ann)
    return kept_images, kept, {kind: (count, first) for kind, (count, first) in found.items()}


def _describe(faults: dict[str, tuple[int, str]]) -> str:
    """``3 annotations name category ids not in 'categories' (first: annotation 17, category 99)``."""
    return "; ".join(f"{faults[kind][0]} {_FAULTS[kind][faults[kind][0] != 1]} (first: {faults[kind][1]})"
                     for kind in _FAULTS if kind in faults)


def _short(value: Any) -> str:
    """repr of an id on one line, cut to 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _checked_box(bbox: Any, size: tuple[Any, Any]) -> tuple[tuple[list[float], int] | None, str | None]:
    """xywh -> ((xyxy clipped to the image when its size is known, 1 if clipped), None), or
    (None, the kind of problem)."""
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in bbox):
        return None, BBOX_NOT_4_NUMBERS
    if not all(_is_number(v) for v in bbox):
        return None, BBOX_NOT_FINITE
    x, y, w, h = (float(v) for v in bbox)
    x1, y1, x2, y2 = x, y, x + w, y + h
    if not (math.isfinite(x2) and math.isfinite(y2)):
        return None, BBOX_NOT_FINITE
    if w <= 0 or h <= 0:
        return None, BBOX_EMPTY
    height, width = size
    if height is None or width is None:
        return ([x1, y1, x2, y2], 0), None
    cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
    cx2, cy2 = min(max(x2, 0.0), width), min(max(y2, 0.0), height)
    if cx2 - cx1 <= 0 or cy2 - cy1 <= 0:
        return None, BBOX_OUTSIDE
    return ([cx1, cy1, cx2, cy2], int((cx1, cy1, cx2, cy2) != (x1, y1, x2, y2))), None


def from_config(data: DataConfig, split: str, *, masks: bool = False, collect: bool = False) -> CocoDetection:
    """The ``split`` ("train" or "val") of ``data.{split}_images`` / ``data.{split}_annotations``;
    ``masks``: decode the instance masks (training) or keep them for mask AR (evaluation)."""
    from fpn.errors import PathNotFoundError

    images = data.train_images if split == "train" else data.val_images
    annotations = data.train_annotations if split == "train" else data.val_annotations
    for path, key in ((images, "images"), (annotations, "annotations")):
        if not Path(path).exists():
            raise PathNotFoundError(f"{path}: not found (data.{split}_{key} in the config; "
                                    "`fpn synth DIR` makes the built-in benchmark)")
    return CocoDetection(images, annotations, load_masks=masks and split == "train", keep_segmentations=masks,
                         on_bad_annotations=data.on_bad_annotations,
                         allow_outside_image_paths=data.allow_outside_image_paths, collect=collect)


def from_path(path: Path, *, split: str, images: Path | None, data: DataConfig, collect: bool = False
              ) -> CocoDetection | None:
    """The COCO dataset at ``path`` (an annotation JSON, a folder holding ``annotations.json`` or
    ``<split>/annotations.json``), images in ``images``, else ``images/`` beside the JSON, else its
    folder; None when ``path`` is not one."""
    candidates = [path] if path.is_file() else [path / "annotations.json", path / split / "annotations.json"]
    ann_file = next((c for c in candidates if c.is_file()), None)
    if ann_file is None:
        return None
    if images is None:
        beside = ann_file.parent / "images"
        images = beside if beside.is_dir() else ann_file.parent
    dataset = CocoDetection(images, ann_file, on_bad_annotations=data.on_bad_annotations,
                            allow_outside_image_paths=data.allow_outside_image_paths, collect=collect)
    first = next((r.file for r in dataset.images), None)
    if first is not None and not first.is_file():
        dataset.problems.stop("images not found", f"its images are not in {images} (no {first.name} "
                              "there): pass --images DIR")
    return dataset


def _masks(segmentations: list[bytes], height: int, width: int, ann_file: Path) -> torch.Tensor:
    """(N, H, W) uint8 masks from polygons, compressed or uncompressed RLE."""
    from pycocotools import mask as mask_utils

    masks = np.zeros((len(segmentations), height, width), dtype=np.uint8)
    for i, encoded in enumerate(segmentations):
        seg = json.loads(encoded)
        if not seg:
            continue
        try:
            if isinstance(seg, list):  # polygons
                rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
            elif isinstance(seg.get("counts"), list):  # uncompressed RLE
                rle = mask_utils.frPyObjects(seg, height, width)
            else:
                rle = dict(seg)
                if isinstance(rle["counts"], str):
                    rle["counts"] = rle["counts"].encode("ascii")
            decoded = mask_utils.decode(rle)
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as err:
            log.warning("%s: an unreadable segmentation is left empty (%s)", ann_file, err)
            continue
        if decoded.shape[:2] == (height, width):
            masks[i] = decoded.reshape(height, width)
    return torch.from_numpy(masks)

