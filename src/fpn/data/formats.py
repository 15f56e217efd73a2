"""The dataset formats, in one table: every job opens a dataset through it.

A format is a module with two functions, each returning a ``DetectionDataset``
(``fpn.data.dataset``):

- ``from_config(data, split, *, masks, collect)``: the ``split`` ("train" / "val") a config's
  ``data.*`` fields name (``masks``: the instance masks are needed; a format without them refuses);
- ``from_path(path, *, split, images, data, collect)``: the dataset at a path (``fpn browse DATA``),
  or None when the path is not one of this format.

``collect`` notes every problem in ``dataset.problems`` instead of stopping at the first
(``fpn browse --check``). A new format is one module and one line in ``FORMATS``.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from fpn.config.schema import DataConfig
from fpn.data import coco, voc, yolo
from fpn.data.dataset import DetectionDataset
from fpn.errors import ConfigError, DatasetError, PathNotFoundError

FORMATS: dict[str, ModuleType] = {  # data.format -> its module; from_path tries them in this order
    "coco": coco,
    "voc": voc,
    "yolo": yolo,
}


def format_module(name: str) -> ModuleType:
    """The module of ``data.format`` ``name``; a ``ConfigError`` naming the known ones otherwise."""
    if name not in FORMATS:
        raise ConfigError(f"data.format: unknown format {name!r} (one of {', '.join(FORMATS)})")
    return FORMATS[name]


def open_split(data: DataConfig, split: str, *, masks: bool = False, collect: bool = False
               ) -> DetectionDataset:
    """The train or val dataset ``data`` names, in its ``data.format``."""
    return format_module(data.format).from_config(data, split, masks=masks, collect=collect)


def open_path(path: str | Path, *, split: str = "train", images: str | Path | None = None,
              data: DataConfig | None = None, collect: bool = False) -> DetectionDataset:
    """The dataset at ``path``, in whichever format it is (``FORMATS``' order)."""
    path, data = Path(path), data or DataConfig()
    if not path.exists():
        raise PathNotFoundError(f"{path}: no such file or folder")
    for module in FORMATS.values():
        dataset = module.from_path(path, split=split, images=Path(images) if images else None, data=data,
                                   collect=collect)
        if dataset is not None:
            return dataset
    raise DatasetError(f"{path}: not a dataset (looked for a COCO annotation file, annotations.json, "
                       f"{split}/annotations.json, VOC's Annotations/ and ImageSets/Main/, or YOLO's "
                       "data.yaml or classes.txt beside labels/)")
