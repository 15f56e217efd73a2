"""``fpn browse``: look at a dataset before training an FPN on it.

Writes, for a COCO, Pascal VOC or YOLO dataset: ``gt/`` (the ground truth of a few images drawn, one
colour per class, or per pyramid level), ``class_counts.png``, ``object_sizes.png`` (the
distribution of sqrt(box area) with COCO's small / medium / large buckets: areas below 32², below
96², above), ``levels.png`` (the share of objects per pyramid level under Eq. 1 for a config,
docs/paper.md §3) and ``summary.json`` with the numbers behind them. No image is decoded except
those drawn. ``check_dataset`` (``--check``) lists every record a command would refuse or skip.
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

from fpn.config.files import load_config
from fpn.config.schema import Config
from fpn.data.dataset import AnnotatedImage, DetectionDataset, Problem
from fpn.data.formats import open_path, open_split
from fpn.data.images import header_hw, read_image
from fpn.errors import DatasetError
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
                 cfg: Config | None = None, collect: bool = False) -> DetectionDataset:
    """The dataset at a path, in whichever format it is (``fpn.data.formats.open_path``): a COCO
    annotation JSON (images in ``images``, else the folder ``images`` beside it, else the JSON's
    folder), a folder holding ``annotations.json`` (or ``<split>/annotations.json``, as ``fpn
    synth`` writes), a VOC root (``split`` names the list; the classes are ``data.voc_classes``,
    else Pascal's 20) or a YOLO folder (``data.yaml`` or ``classes.txt`` beside ``labels/``).
    ``data=None``: the config's data. ``collect``: note every problem instead of stopping."""
    data_cfg = (cfg or load_config("demo")).data
    if data is None:
        return open_split(data_cfg, split, collect=collect)
    return open_path(data, split=split, images=images, data=data_cfg, collect=collect)


def objects_of(record: AnnotatedImage) -> tuple[np.ndarray, np.ndarray]:
    """(G, 4) boxes and (G,) labels of an image's objects (crowd regions and VOC's difficult
    objects left out, as training leaves them out)."""
    keep = record.objects(with_difficult=False)
    return record.boxes_xyxy[keep], record.labels[keep]


def run_browse(data: str | Path | None, out_dir: str | Path, *, images: str | Path | None = None,
               split: str = "train", config: str | Path = "demo", overrides: list[str] | None = None,
               num_images: int = 16, colour_by: ColourBy = "class") -> BrowseSummary:
    """Pictures, charts and ``summary.json`` of a dataset (module docstring) in ``out_dir``."""
    cfg = load_config(config, overrides)
    dataset = open_dataset(data, images=images, split=split, cfg=cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    inventory = list(dataset.images)
    names = list(dataset.class_names)
    summary = summarise(inventory, names, cfg, dataset=str(data or f"{config} data.{split}"),
                        config=str(config))
    summary.drawn = draw_ground_truth(inventory, names, cfg, out_dir / "gt", num_images=num_images,
                                      root=dataset.image_root, colour_by=colour_by)
    summary.charts = plot_charts(inventory, summary, out_dir)
    (out_dir / "summary.json").write_text(json.dumps(summary.__dict__, indent=1))
    return summary


@dataclass
class CheckReport:
    """Every problem of a dataset at once (``fpn browse DATA --check``), by kind."""

    dataset: str
    images: int
    objects: int
    problems: list[Problem]

    @property
    def clean(self) -> bool:
        return not self.problems

    def text(self) -> str:
        """A heading line, then per kind: whether it stops a command or is skipped, the count, and
        the first records it hit (one a line for the stops, whose messages are long)."""
        lines = [f"{self.dataset}: {self.images} images, {self.objects} objects kept; "
                 + (f"{len(self.problems)} kind(s) of problem" if self.problems else "no problems")]
        for problem in sorted(self.problems, key=lambda p: not p.stops):
            if problem.stops:
                lines.append(f"  stops training and evaluation: {problem.kind}: {problem.count}")
                lines += [f"    {example}" for example in problem.examples]
            else:
                lines.append(f"  skipped: {problem.kind}: {problem.count} {problem.what}(s) "
                             f"({problem.where()})")
        return "\n".join(lines)


def check_dataset(data: str | Path | None, *, images: str | Path | None = None, split: str = "train",
                  config: str | Path = "demo", overrides: list[str] | None = None) -> CheckReport:
    """Every problem the commands would stop on or skip (``fpn.data.dataset``'s rule), counted by
    kind with the first examples; the images' headers are read, none is decoded."""
    cfg = load_config(config, overrides)
    name = str(data or f"{config} data.{split}")
    try:
        dataset = open_dataset(data, images=images, split=split, cfg=cfg, collect=True)
    except DatasetError as err:  # the file itself cannot be read: nothing further to check
        return CheckReport(name, 0, 0, [Problem("the dataset cannot be read", True, "file", 1, [str(err)])])
    problems = dataset.problems.problems()
    unreadable = Problem("image file unreadable", False, "image")
    for record in dataset.images:
        try:
            header_hw(record.file)
        except DatasetError as err:
            unreadable.add(str(err))
    if unreadable.count:
        problems.append(unreadable)
    objects = sum(len(objects_of(record)[1]) for record in dataset.images)
    return CheckReport(name, len(dataset.images), objects, problems)


def summarise(inventory: list[AnnotatedImage], class_names: list[str], cfg: Config, *, dataset: str,
              config: str) -> BrowseSummary:
    """Counts per class, per COCO size bucket and per pyramid level (``level_shares``)."""
    objects = [objects_of(item) for item in inventory]
    labels = Counter(int(label) for _, item_labels in objects for label in item_labels)
    areas = np.concatenate([_areas(boxes) for boxes, _ in objects] or [np.zeros(0)])
    buckets = {"small": int((areas < SMALL_AREA).sum()),
               "medium": int(((areas >= SMALL_AREA) & (areas < MEDIUM_AREA)).sum()),
               "large": int((areas >= MEDIUM_AREA).sum())}
    boxes_and_sizes = ((torch.from_numpy(boxes), item.image_hw())
                       for item, (boxes, _) in zip(inventory, objects, strict=True))
    shares = level_shares(boxes_and_sizes, cfg.model)
    return BrowseSummary(
        dataset=dataset, images=len(inventory), objects=int(areas.size),
        images_without_objects=sum(1 for _, item_labels in objects if len(item_labels) == 0),
        class_counts={name: labels.get(i + 1, 0) for i, name in enumerate(class_names)},
        size_buckets=buckets, level_shares=shares, config=config, resize=_resize_text(cfg))


def _areas(boxes_xyxy: np.ndarray) -> np.ndarray:
    return (boxes_xyxy[:, 2] - boxes_xyxy[:, 0]) * (boxes_xyxy[:, 3] - boxes_xyxy[:, 1])


def _share(count: int, total: int) -> str:
    return f"{count / total * 100:.1f}%" if total else "-"


def _resize_text(cfg: Config) -> str:
    return f"shorter side {cfg.model.input.min_size_test}, longer at most {cfg.model.input.max_size}"


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
            image = to_pil(read_image(item.file, item.recorded_hw))
        except DatasetError as err:
            log.warning("not drawn: %s", err)
            continue
        boxes, labels = objects_of(item)
        truth = {"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels),
                 "levels": gt_levels(torch.from_numpy(boxes), (image.height, image.width), cfg.model)}
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
    sides = np.sqrt(np.concatenate([_areas(objects_of(item)[0]) for item in inventory] or [np.zeros(0)]))
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

