"""``fpn browse``: look at a dataset before training an FPN on it.

Writes, for a COCO or Pascal VOC dataset: ``gt/`` (the ground truth of a few images drawn, one
colour per class, or per pyramid level), ``class_counts.png``, ``object_sizes.png`` (the
distribution of sqrt(box area) with COCO's small / medium / large buckets: areas below 32², below
96², above), ``levels.png`` (the share of objects per pyramid level under Eq. 1 for a config,
docs/paper.md §3) and ``summary.json`` with the numbers behind them. No image is decoded except
those drawn.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fpn.config import Config, load_config
from fpn.data import CocoDetection, DatasetError, VOCDetection, read_image
from fpn.data.inventory import AnnotatedImage, annotated_images
from fpn.errors import PathNotFoundError
from fpn.jobs.datasets import build_dataset
from fpn.model.level_assignment import gt_levels, level_shares
from fpn.visualize import ColourBy, draw_detections, save_picture, to_pil

log = logging.getLogger(__name__)

SMALL_AREA, MEDIUM_AREA = 32**2, 96**2  # COCO's buckets: small < 32², medium < 96² <= large
BUCKET_COLOURS = {"small": "#4c72b0", "medium": "#dd8452", "large": "#55a868"}
BAR_COLOUR = "#4c72b0"


@dataclass
class BrowseSummary:
    dataset: str
    images: int
    objects: int
    images_without_objects: int
    class_counts: dict[str, int]
    size_buckets: dict[str, int]  # COCO small / medium / large by box area in the image's pixels
    level_shares: dict[str, float]
    config: str
    resize: str
    drawn: list[str] = field(default_factory=list)
    charts: list[str] = field(default_factory=list)

    def text(self) -> str:
        """The summary as the command prints it."""
        width = max([len(n) for n in self.class_counts] + [5])
        lines = [f"{self.dataset}: {self.images} images, {self.objects} objects "
                 f"({self.images_without_objects} images without any)",
                 *(f"  {name:<{width}}  {count}" for name, count in self.class_counts.items()),
                 "object sizes (COCO buckets by box area): " + ", ".join(
                     f"{k} {v} ({_share(v, self.objects)})" for k, v in self.size_buckets.items()),
                 f"pyramid levels under Eq. 1 for {self.config} ({self.resize}): " + ", ".join(
                     f"{level.upper()} {share * 100:.1f}%" for level, share in self.level_shares.items())]
        return "\n".join(lines)


def open_dataset(data: str | Path | None, *, images: str | Path | None = None, split: str = "train",
                 cfg: Config | None = None) -> CocoDetection | VOCDetection:
    """A COCO or VOC dataset from a path: an annotation JSON (images in ``images``, else the folder
    ``images`` beside it, else the JSON's folder), a VOC root (``Annotations``, ``ImageSets/Main``,
    ``JPEGImages``; ``split`` names the list; the classes are ``data.voc_classes``, else Pascal's
    20), a folder holding ``annotations.json`` (and ``images/``),
    or the root of ``fpn synth`` (``<split>/annotations.json``). ``data=None``: the config's data."""
    if data is None:
        return build_dataset((cfg or load_config("demo")).data, split)
    path = Path(data)
    if path.is_file():
        return _coco(path, images)
    if (path / "Annotations").is_dir() and (path / "ImageSets" / "Main").is_dir():
        return VOCDetection(path, split=split, class_names=cfg.data.voc_classes if cfg else None)
    for candidate in (path / "annotations.json", path / split / "annotations.json"):
        if candidate.is_file():
            return _coco(candidate, images)
    if not path.exists():
        raise PathNotFoundError(f"{path}: no such file or folder")
    raise DatasetError(f"{path}: not a dataset (looked for a COCO annotation file, annotations.json, "
                       f"{split}/annotations.json, or VOC's Annotations/ and ImageSets/Main/)")


def _coco(annotations: Path, images: str | Path | None) -> CocoDetection:
    if images is None:
        beside = annotations.parent / "images"
        images = beside if beside.is_dir() else annotations.parent
    dataset = CocoDetection(images, annotations)
    first = next((r.file_name for r in dataset.records), None)
    if first is not None and not (Path(images) / first).is_file():
        raise DatasetError(f"{annotations}: its images are not in {images} (no {first} there): "
                           "pass --images DIR")
    return dataset


def run_browse(data: str | Path | None, out_dir: str | Path, *, images: str | Path | None = None,
               split: str = "train", config: str | Path = "demo", overrides: list[str] | None = None,
               num_images: int = 16, colour_by: ColourBy = "class") -> BrowseSummary:
    """Pictures, charts and ``summary.json`` of a dataset (module docstring) in ``out_dir``."""
    cfg = load_config(config, overrides)
    dataset = open_dataset(data, images=images, split=split, cfg=cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    inventory = list(annotated_images(dataset))
    names = list(dataset.class_names)
    summary = summarise(inventory, names, cfg, dataset=str(data or f"{config} data.{split}"),
                        config=str(config))
    summary.drawn = draw_ground_truth(inventory, names, cfg, out_dir / "gt", num_images=num_images,
                                      root=_image_root(dataset), colour_by=colour_by)
    summary.charts = plot_charts(inventory, summary, out_dir)
    (out_dir / "summary.json").write_text(json.dumps(summary.__dict__, indent=1))
    return summary


def summarise(inventory: list[AnnotatedImage], class_names: list[str], cfg: Config, *, dataset: str,
              config: str) -> BrowseSummary:
    """Counts per class, per COCO size bucket and per pyramid level (``level_shares``)."""
    labels = Counter(int(label) for item in inventory for label in item.labels)
    areas = np.concatenate([_areas(item.boxes_xyxy) for item in inventory] or [np.zeros(0)])
    buckets = {"small": int((areas < SMALL_AREA).sum()),
               "medium": int(((areas >= SMALL_AREA) & (areas < MEDIUM_AREA)).sum()),
               "large": int((areas >= MEDIUM_AREA).sum())}
    boxes_and_sizes = ((torch.from_numpy(item.boxes_xyxy), item.image_hw) for item in inventory)
    shares = level_shares(boxes_and_sizes, cfg.model)
    return BrowseSummary(
        dataset=dataset, images=len(inventory), objects=int(areas.size),
        images_without_objects=sum(1 for item in inventory if len(item.labels) == 0),
        class_counts={name: labels.get(i + 1, 0) for i, name in enumerate(class_names)},
        size_buckets=buckets, level_shares=shares, config=config, resize=_resize_text(cfg))


def _areas(boxes_xyxy: np.ndarray) -> np.ndarray:
    return (boxes_xyxy[:, 2] - boxes_xyxy[:, 0]) * (boxes_xyxy[:, 3] - boxes_xyxy[:, 1])


def _share(count: int, total: int) -> str:
    return f"{count / total * 100:.1f}%" if total else "-"


def _resize_text(cfg: Config) -> str:
    return f"shorter side {cfg.model.input.min_size_test}, longer at most {cfg.model.input.max_size}"


def _image_root(dataset: CocoDetection | VOCDetection) -> Path:
    return dataset.image_dir if isinstance(dataset, CocoDetection) else dataset.root / "JPEGImages"


def draw_ground_truth(inventory: list[AnnotatedImage], class_names: list[str], cfg: Config, out_dir: Path, *,
                      num_images: int, root: Path, colour_by: ColourBy = "class") -> list[str]:
    """The ground truth of ``num_images`` images spread evenly over the dataset, drawn into
    ``out_dir`` under their paths relative to the image folder; returns those paths."""
    if not inventory or num_images <= 0:
        return []
    count = min(num_images, len(inventory))
    picks = sorted({round(i * (len(inventory) - 1) / max(1, count - 1)) for i in range(count)})
    drawn = []
    for index in picks:
        item = inventory[index]
        try:
            image = to_pil(read_image(item.file, item.image_hw))
        except DatasetError as err:
            log.warning("not drawn: %s", err)
            continue
        truth = {"boxes": torch.from_numpy(item.boxes_xyxy), "labels": torch.from_numpy(item.labels),
                 "levels": gt_levels(torch.from_numpy(item.boxes_xyxy), item.image_hw, cfg.model)}
        relative = item.file.relative_to(root) if item.file.is_relative_to(root) else Path(item.file.name)
        path = out_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        save_picture(draw_detections(image, truth, class_names, colour_by=colour_by), path)
        drawn.append(str(relative))
    return drawn


def plot_charts(inventory: list[AnnotatedImage], summary: BrowseSummary, out_dir: Path) -> list[str]:
    """``class_counts.png``, ``object_sizes.png``, ``levels.png`` (matplotlib, the ``plots`` extra);
    returns the files written (none, with a warning, without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("the charts need matplotlib: pip install 'fpn[plots]'; wrote the pictures and "
                    "summary.json only")
        return []
    files = [_class_chart(plt, summary, out_dir / "class_counts.png"),
             _size_chart(plt, inventory, summary, out_dir / "object_sizes.png"),
             _level_chart(plt, summary, out_dir / "levels.png")]
    return [path.name for path in files]


def _class_chart(plt, summary: BrowseSummary, path: Path) -> Path:
    names = list(summary.class_counts)
    fig, ax = plt.subplots(figsize=(6, 1 + 0.3 * max(1, len(names))))
    ax.barh(range(len(names)), list(summary.class_counts.values()), color=BAR_COLOUR)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()  # the first class on top
    ax.set(xlabel="objects", title=f"objects per class ({summary.images} images)")
    return _save(plt, fig, path)


def _size_chart(plt, inventory: list[AnnotatedImage], summary: BrowseSummary, path: Path) -> Path:
    sides = np.sqrt(np.concatenate([_areas(item.boxes_xyxy) for item in inventory] or [np.zeros(0)]))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if sides.size:
        top = max(float(sides.max()), 2 * math.sqrt(MEDIUM_AREA))
        bins = np.geomspace(max(1.0, float(sides.min())), top * 1.001, 40)
        small, medium = math.sqrt(SMALL_AREA), math.sqrt(MEDIUM_AREA)
        edges = {"small": (0, small), "medium": (small, medium), "large": (medium, math.inf)}
        for bucket, (low, high) in edges.items():
            part = sides[(sides >= low) & (sides < high)]
            ax.hist(part, bins=bins, color=BUCKET_COLOURS[bucket],
                    label=f"{bucket}: {summary.size_buckets[bucket]} ({_share(len(part), sides.size)})")
        ax.set_xscale("log")
        ax.legend(fontsize=8)
    ax.set(xlabel="sqrt(box area), pixels of the original images", ylabel="objects",
           title="object sizes (COCO buckets: area < 32², < 96², larger)")
    return _save(plt, fig, path)


def _level_chart(plt, summary: BrowseSummary, path: Path) -> Path:
    levels = list(summary.level_shares)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(range(len(levels)), [summary.level_shares[k] * 100 for k in levels], color=BAR_COLOUR)
    ax.set_xticks(range(len(levels)), [k.upper() for k in levels])
    ax.set(ylabel="% of objects", title=f"Eq. 1 level of each object ({summary.config})")
    ax.set_xlabel(summary.resize, fontsize=8)
    return _save(plt, fig, path)


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

