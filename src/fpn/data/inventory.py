"""What a dataset holds, read from its annotations alone: each image's file, size, boxes and labels.

No image is decoded: sizes come from the annotation file, or else from the image file's header
(with its EXIF orientation applied, as ``read_image`` does).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fpn.data.coco import CocoDetection
from fpn.data.errors import DatasetError
from fpn.data.voc import VOCDetection

# EXIF orientations that turn the stored picture by 90 degrees (width and height swap)
_QUARTER_TURNS = {5, 6, 7, 8}


@dataclass
class AnnotatedImage:
    """One image's ground truth (crowd regions and VOC's dropped difficult objects left out)."""

    file: Path
    image_hw: tuple[int, int]  # (height, width) in pixels
    boxes_xyxy: np.ndarray  # (G, 4) float32, in the image's pixels
    labels: np.ndarray  # (G,) int64 in 1..K


def annotated_images(dataset: CocoDetection | VOCDetection) -> Iterator[AnnotatedImage]:
    """Every image of a COCO or VOC dataset with its boxes, in dataset order."""
    if isinstance(dataset, CocoDetection):
        for record in dataset.records:
            file = dataset.image_dir / record.file_name
            keep = ~record.is_crowd
            yield AnnotatedImage(file, record.recorded_hw or header_hw(file), record.boxes_xyxy[keep],
                                 record.labels[keep])
    elif isinstance(dataset, VOCDetection):
        for image_id, record in zip(dataset.ids, dataset.records, strict=True):
            file = dataset.root / "JPEGImages" / f"{image_id}.jpg"
            recorded = (record["height"], record["width"])
            yield AnnotatedImage(file, recorded if all(recorded) else header_hw(file),
                                 np.array(record["boxes"], dtype=np.float32).reshape(-1, 4),
                                 np.array(record["labels"], dtype=np.int64))
    else:
        raise TypeError(f"expected a CocoDetection or VOCDetection, got {type(dataset).__name__}")


def header_hw(path: Path) -> tuple[int, int]:
    """(height, width) of an image file, upright, read from its header only."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            if img.getexif().get(0x0112) in _QUARTER_TURNS:  # 0x0112: the EXIF orientation tag
                width, height = height, width
            return height, width
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file not found") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DatasetError(f"{path}: cannot read the image's header ({err})") from None
