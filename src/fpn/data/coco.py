"""COCO-format detection datasets, tolerant of real-world files.

- Category ids may be anything (COCO's 1..90 with gaps): labels are contiguous 1..K in the
  order of the ids, mapped back through ``label_to_category_id``.
- ``iscrowd`` regions go to ``target["crowd_boxes"]``: the model ignores anchors and RoIs inside
  them instead of taking them as background, as the COCO protocol ignores them.
- Images without annotations are kept as negatives.
- Degenerate boxes (non-finite, zero or negative size) are dropped, boxes reaching outside the
  image are clipped; both are counted in ``dataset.stats`` and reported once.
- Annotations naming an image or category id that the file does not define, and images
  repeating an earlier image id, raise ``DatasetError``; with ``on_bad_annotations="warn"``
  they are dropped (the first of repeated images is kept), counted and reported once, and
  ``coco_gt()`` leaves them out of the evaluation too.
- A file that is not COCO raises ``DatasetError`` naming the file and the problem; so does an
  unreadable image when it is loaded. Image and category ids must be integers (COCO's format:
  evaluation and proposal files key images by them), category ids unique.
- A ``segmentation`` that is neither polygons (lists of numbers) nor RLE (``counts``, ``size``)
  is refused naming the annotation (with ``on_bad_annotations="warn"``: dropped), so that
  pycocotools never meets it.
- A ``file_name`` that is absolute or leaves the image folder (``../../etc/passwd``) is refused
  naming the image, unless ``allow_outside_image_paths`` (``data.allow_outside_image_paths``):
  an annotation file from elsewhere must not make training read arbitrary files.
- Images are only indexed at start-up; each is decoded when it is first asked for.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from fpn.box_format import clip_boxes
from fpn.data.errors import DatasetError

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


def read_image(path: Path, expected_hw: tuple[int, int] | None = None) -> torch.Tensor:
    """A 3 x H x W float tensor in [0, 1], RGB, with the EXIF orientation applied.

    Annotation tools disagree on whether boxes refer to the stored pixels or to the upright
    photo. When the annotation file records the image size (``expected_hw``) and only the
    stored pixels have that size (a 90-degree EXIF rotation), the stored pixels are used, so
    that the boxes stay consistent with the pixels.
    """
    try:
        with Image.open(path) as img:
            img.load()
            upright = ImageOps.exif_transpose(img)
            stored_hw, upright_hw = (img.height, img.width), (upright.height, upright.width)
            if expected_hw and upright_hw != tuple(expected_hw) and stored_hw == tuple(expected_hw):
                log.warning("%s: EXIF rotation ignored: the annotations give the stored size %s",
                            path, stored_hw)
            else:
                img = upright
            return pil_to_tensor(img)
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file not found") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DatasetError(f"{path}: cannot decode the image ({err})") from None


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """A PIL image of any mode (greyscale, RGBA, palette, CMYK, 16-bit) -> 3 x H x W in [0, 1]."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit: scale 0..65535 to 0..255
        img = Image.fromarray((np.asarray(img, dtype=np.float64) / 257).clip(0, 255).astype(np.uint8))
    array = np.asarray(img.convert("RGB"), dtype=np.uint8)
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError("empty image")
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)


def _require(condition: bool, file: Path, problem: str) -> None:
    if not condition:
        raise DatasetError(f"{file}: {problem}")


def load_coco_json(ann_file: str | Path) -> dict[str, Any]:
    """The JSON, checked for the structure a detection dataset needs."""
    ann_file = Path(ann_file)
    try:
        data = json.loads(ann_file.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{ann_file}: annotation file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"{ann_file}: not valid JSON ({err})") from None
    _require(isinstance(data, dict), ann_file, "expected a JSON object with images, annotations, categories")
    for key in ("images", "categories"):
        _require(key in data, ann_file, f"not COCO format: no '{key}' list")
        _require(isinstance(data[key], list), ann_file, f"'{key}' must be a list")
    data.setdefault("annotations", [])
    _require(isinstance(data["annotations"], list), ann_file, "'annotations' must be a list")
    for i, img in enumerate(data["images"]):
        _require(isinstance(img, dict) and isinstance(img.get("file_name"), str),
                 ann_file, f"images[{i}] needs an integer 'id' and a 'file_name'")
        _require(_is_int(img.get("id")), ann_file,
                 f"images[{i}] has id {_short(img.get('id'))}: image ids must be integers, as in COCO's "
                 "format (number the images and use those numbers as the annotations' image_id)")
    seen: dict[int, int] = {}
    for i, cat in enumerate(data["categories"]):
        _require(isinstance(cat, dict) and _is_int(cat.get("id")), ann_file,
                 f"categories[{i}] needs an integer 'id'")
        _require(cat["id"] not in seen, ann_file,
                 f"categories[{seen.get(cat['id'])}] and categories[{i}] have the same id {cat['id']} "
                 f"({_short(data['categories'][seen.get(cat['id'], i)].get('name'))} and "
                 f"{_short(cat.get('name'))}): category ids must be unique")
        seen[cat["id"]] = i
    return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def segmentation_problem(segmentation: Any) -> str | None:
    """What is wrong with a COCO ``segmentation``, or None: absent, polygons (a list of lists of at
    least 4 numbers, x y pairs) or RLE ({"counts": str or list of counts, "size": [height, width]})."""
    if segmentation is None:
        return None
    if isinstance(segmentation, list):
        for polygon in segmentation:
            if not isinstance(polygon, list) or not all(_is_number(v) for v in polygon):
                return "a polygon must be a list of numbers (x1, y1, x2, y2, ...)"
            if len(polygon) < 4 or len(polygon) % 2:
                return f"a polygon has {len(polygon)} coordinates (an even number, at least 4, expected)"
        return None
    if isinstance(segmentation, dict):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) and v >= 0 for v in size)):
            return "an RLE needs 'size': [height, width]"
        if isinstance(counts, str) or isinstance(counts, list) and all(_is_int(v) and v >= 0 for v in counts):
            return None
        return "an RLE needs 'counts': a string or a list of non-negative integers"
    return f"expected polygons (a list) or an RLE (an object), got {type(segmentation).__name__}"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


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


@dataclass
class ImageRecord:
    """What one image needs at training time, stored compactly (no per-annotation dicts)."""

    image_id: Any
    file_name: str
    recorded_hw: tuple[int, int] | None
    boxes_xyxy: np.ndarray  # (N, 4) float32, objects then crowd regions
    labels: np.ndarray  # (N,) int64 in 1..K
    is_crowd: np.ndarray  # (N,) bool
    segmentations: list[bytes] | None  # JSON of each non-crowd object's mask, with load_masks


class CocoDetection(Dataset):
    """Images and boxes (and optionally masks) of a COCO instances file.

    Item ``i`` is ``(image, target)``: image 3 x H x W float in [0, 1]; target ``boxes`` (N, 4)
    float32 xyxy pixels, ``labels`` (N,) int64 in 1..K, ``crowd_boxes`` (M, 4), ``image_id``,
    ``orig_size`` (H, W), and ``masks`` (N, H, W) uint8 with ``load_masks``.

    Start-up reads the JSON once and keeps only compact per-image arrays (the parsed JSON is
    freed), so a 100k-image annotation file costs little memory in every loader worker, and
    no image is decoded before it is asked for.
    """

    def __init__(self, image_dir: str | Path, ann_file: str | Path, *, load_masks: bool = False,
                 on_bad_annotations: Literal["error", "warn"] = "error",
                 allow_outside_image_paths: bool = False):
        if on_bad_annotations not in ("error", "warn"):
            raise ValueError(f"on_bad_annotations must be 'error' or 'warn', not {on_bad_annotations!r}")
        self.image_dir = Path(image_dir)
        self.ann_file = Path(ann_file)
        self.load_masks = load_masks
        self.on_bad_annotations = on_bad_annotations
        data = load_coco_json(self.ann_file)
        if not allow_outside_image_paths:
            _refuse_outside_paths(data["images"], self.ann_file)
        totals = {"images": len(data["images"]), "annotations": len(data["annotations"])}  # in the file
        faults = _drop_bad_ids(data)
        if faults and on_bad_annotations == "error":
            raise DatasetError(f"{self.ann_file}: {_describe(faults)}; "
                               "on_bad_annotations='warn' (data.on_bad_annotations) drops them")
        categories = sorted(data["categories"], key=lambda c: c["id"])
        self.category_id_to_label = {c["id"]: i + 1 for i, c in enumerate(categories)}
        self.label_to_category_id = {label: cid for cid, label in self.category_id_to_label.items()}
        self.class_names = [str(c.get("name", c["id"])) for c in categories]
        self.stats = {**totals, "kept": 0,
                      "clipped": 0, "dropped_degenerate": 0, "crowd": 0, "images_without_annotations": 0,
                      **{kind: faults.get(kind, (0, None))[0] for kind in _FAULTS}}
        self.records = self._index(data["images"], data["annotations"])
        del data
        self._report(faults)

    def _index(self, images: list[dict], annotations: list[Any]) -> list[ImageRecord]:
        per_image: dict[Any, list[tuple[list[float], int, bool, Any]]] = {img["id"]: [] for img in images}
        sizes = {img["id"]: (img.get("height"), img.get("width")) for img in images}
        for ann in annotations:  # _drop_bad_ids left only known image and category ids
            label = self.category_id_to_label[ann["category_id"]]
            box = _checked_box(ann.get("bbox"), sizes[ann["image_id"]])
            if box is None:
                self.stats["dropped_degenerate"] += 1
                continue
            xyxy, clipped = box
            crowd = bool(ann.get("iscrowd", 0))
            self.stats["clipped"] += clipped
            self.stats["crowd" if crowd else "kept"] += 1
            per_image[ann["image_id"]].append((xyxy, label, crowd, ann.get("segmentation")))
        records = []
        for img in images:
            anns = per_image[img["id"]]
            self.stats["images_without_annotations"] += not any(not crowd for _, _, crowd, _ in anns)
            height, width = sizes[img["id"]]
            recorded = (height, width) if isinstance(height, int) and isinstance(width, int) else None
            records.append(ImageRecord(
                img["id"], img["file_name"], recorded,
                np.array([a[0] for a in anns], dtype=np.float32).reshape(-1, 4),
                np.array([a[1] for a in anns], dtype=np.int64),
                np.array([a[2] for a in anns], dtype=bool),
                [json.dumps(a[3]).encode() for a in anns if not a[2]] if self.load_masks else None,
            ))
        return records

    def _report(self, faults: dict[str, tuple[int, str]]) -> None:
        """One warning with the counts of everything dropped or clipped."""
        parts = [f"dropped: {_describe(faults)}"] if faults else []
        boxes = {k: self.stats[k] for k in ("clipped", "dropped_degenerate") if self.stats[k]}
        parts += [f"{v} annotation(s) {k.replace('_', ' ')}" for k, v in boxes.items()]
        if parts:
            log.warning("%s: %s", self.ann_file, "; ".join(parts))

    def image_ids(self) -> list[Any]:
        """The image ids, in dataset order (no image is decoded)."""
        return [record.image_id for record in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def coco_gt(self):
        """The ground truth for pycocotools: the annotation file itself, or, when images or
        annotations were dropped for their ids, a ``COCO`` object of the file without them."""
        if not any(self.stats[kind] for kind in _FAULTS):
            return self.ann_file
        from pycocotools.coco import COCO

        data = load_coco_json(self.ann_file)  # re-read: the dataset keeps no parsed JSON
        _drop_bad_ids(data)
        data.setdefault("info", {})
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO()
            coco.dataset = data
            coco.createIndex()
        return coco

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        record = self.records[index]
        image = read_image(self.image_dir / record.file_name, record.recorded_hw)
        height, width = image.shape[-2:]
        crowd = torch.from_numpy(record.is_crowd)
        boxes = clip_boxes(torch.from_numpy(record.boxes_xyxy), (height, width))  # the decoded size
        target: dict[str, Any] = {
            "boxes": boxes[~crowd],
            "labels": torch.from_numpy(record.labels)[~crowd],
            "crowd_boxes": boxes[crowd],
            "image_id": record.image_id,
            "orig_size": (int(height), int(width)),
        }
        if self.load_masks:
            target["masks"] = _masks(record.segmentations, height, width, self.ann_file)
        kept = target["boxes"]
        keep = (kept[:, 2] > kept[:, 0]) & (kept[:, 3] > kept[:, 1])  # not clipped to nothing
        for key in ("boxes", "labels", "masks"):
            if key in target:
                target[key] = target[key][keep]
        return image, target


def _refuse_outside_paths(images: list[dict], ann_file: Path) -> None:
    for img in images:
        problem = check_file_name(img["file_name"])
        if problem:
            raise DatasetError(f"{ann_file}: image {_short(img['id'])}: file_name {_short(img['file_name'])} "
                               f"{problem}; refused (data.allow_outside_image_paths=true reads it anyway)")


def _hashable(value: Any) -> Any:
    return value if isinstance(value, int | str | float | type(None)) else None


def _drop_bad_ids(data: dict[str, Any]) -> dict[str, tuple[int, str]]:
    """Drop, in place, images repeating an earlier image id (the first is kept) and annotations
    naming an image or category id not defined in the file.

    Returns {fault: (count, first offender)} for the faults found; one pass, O(images + annotations).
    """
    found: dict[str, list] = {}

    def note(kind: str, first: str) -> None:
        found.setdefault(kind, [0, first])[0] += 1

    images, image_ids = [], set()
    for img in data["images"]:
        if img["id"] in image_ids:
            note("duplicate_image_id", f"image {_short(img['id'])}")
        else:
            image_ids.add(img["id"])
            images.append(img)
    category_ids = {cat["id"] for cat in data["categories"]}
    annotations = []
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            note("unknown_image", f"annotations[{i}] (not an object)")
            continue
        has_id = isinstance(ann.get("id"), int | str)
        name = f"annotation {_short(ann['id'])}" if has_id else f"annotations[{i}]"
        if _hashable(ann.get("image_id")) not in image_ids:
            note("unknown_image", f"{name}, image {_short(ann.get('image_id'))}")
        elif _hashable(ann.get("category_id")) not in category_ids:
            note("unknown_category", f"{name}, category {_short(ann.get('category_id'))}")
        elif problem := segmentation_problem(ann.get("segmentation")):
            note("bad_segmentation", f"{name}: {problem}")
        else:
            annotations.append(ann)
    if found:
        data["images"], data["annotations"] = images, annotations
    return {kind: (count, first) for kind, (count, first) in found.items()}


def _describe(faults: dict[str, tuple[int, str]]) -> str:
    """``3 annotations name category ids not in 'categories' (first: annotation 17, category 99)``."""
    return "; ".join(f"{faults[kind][0]} {_FAULTS[kind][faults[kind][0] != 1]} (first: {faults[kind][1]})"
                     for kind in _FAULTS if kind in faults)


def _short(value: Any) -> str:
    """repr of an id on one line, cut to 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _checked_box(bbox: Any, size: tuple[Any, Any]) -> tuple[list[float], int] | None:
    """xywh -> (xyxy clipped to the image when its size is known, 1 if clipped), or None."""
    if not isinstance(bbox, list | tuple) or len(bbox) != 4:
        return None
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        return None
    x1, y1, x2, y2 = x, y, x + w, y + h
    height, width = size
    if isinstance(height, int | float) and isinstance(width, int | float) and height > 0 and width > 0:
        cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
        cx2, cy2 = min(max(x2, 0.0), width), min(max(y2, 0.0), height)
        if cx2 - cx1 <= 0 or cy2 - cy1 <= 0:
            return None
        return [cx1, cy1, cx2, cy2], int((cx1, cy1, cx2, cy2) != (x1, y1, x2, y2))
    return [x1, y1, x2, y2], 0


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

