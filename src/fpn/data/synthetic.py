"""The built-in multi-scale benchmark: shapes over cluttered, textured backgrounds, COCO format.

Why it exists: the paper's claim is about scale. Here object sides are drawn log-uniformly from
8 px to three quarters of the image, so COCO's small (< 32²), medium (< 96²) and large bins
each hold a fair share; objects occlude one another; backgrounds carry gradients, noise and
line clutter that is not an object; shapes differ by shape, not by colour. Masks are exact (the
visible pixels of each object), boxes are the tight boxes of those masks, and everything is a
function of the seed.

``generate(out_dir)`` writes ``train/`` and ``val/``, each ``images/*.png`` + ``annotations.json``;
``variant="context"`` makes the benchmark of ``fpn.data.synthetic_context`` instead (docs/benchmarks.md),
and ``num_pretrain`` a ``pretrain/`` split for ``fpn pretrain``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from fpn.data import synthetic_context
from fpn.data.synthetic_shapes import (
    MIN_SIDE,
    MIN_VISIBLE_FRACTION,
    MIN_VISIBLE_PIXELS,
    SHAPES,
    background,
    object_mask,
)
from fpn.errors import ConfigError
from fpn.progress import progress as progress_bar

CLASSES = SHAPES  # the shapes benchmark's classes

def make_image(rng: np.random.Generator, size: int, max_objects: int = 8
               ) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One image (H, W, 3) uint8 and its objects as (class index, visible mask)."""
    image = background(rng, size).copy()
    max_side = 0.75 * size
    placed: list[tuple[int, np.ndarray]] = []
    for _ in range(int(rng.integers(2, max_objects + 1))):
        kind_index = int(rng.integers(len(CLASSES)))
        side = float(math.exp(rng.uniform(math.log(MIN_SIDE), math.log(max_side))))
        cx, cy = (float(v) for v in rng.uniform(side * 0.3, size - side * 0.3, 2))
        mask = object_mask(CLASSES[kind_index], size, cx, cy, side, float(rng.uniform(0, 2 * math.pi)))
        if mask.sum() < MIN_VISIBLE_PIXELS:
            continue
        colour = rng.integers(0, 256, 3).astype(np.int16)
        shade = rng.normal(0, 12, (size, size, 1)).astype(np.int16)
        image[mask] = np.clip(colour + shade[mask], 0, 255).astype(np.uint8)
        placed.append((kind_index, mask))
    objects = []
    covered = np.zeros((size, size), dtype=bool)
    for kind_index, mask in reversed(placed):  # later objects hide earlier ones
        visible = mask & ~covered
        covered |= mask
        if visible.sum() >= max(MIN_VISIBLE_PIXELS, MIN_VISIBLE_FRACTION * mask.sum()):
            objects.append((kind_index, visible))
    return image, objects[::-1]


def mask_to_annotation(mask: np.ndarray) -> dict[str, Any]:
    """COCO fields of one instance: compressed RLE, area, tight xywh box (pixel edges)."""
    ys, xs = np.nonzero(mask)
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    x0, y0 = int(xs.min()), int(ys.min())
    return {"segmentation": rle, "area": int(mask.sum()),
            "bbox": [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0], "iscrowd": 0}


@dataclass(frozen=True)
class Variant:
    """A benchmark: its classes and its image maker; ``pretrain_*`` label its pre-training split."""

    name: str
    description: str
    classes: list[str]
    pretrain_classes: list[str]
    # (rng, size, pretrain) -> image (H, W, 3) uint8 and its annotated objects as (class index, mask)
    make: Callable[[np.random.Generator, int, bool], tuple[np.ndarray, list[tuple[int, np.ndarray]]]]


def _make_shapes(rng: np.random.Generator, size: int, pretrain: bool) -> tuple[np.ndarray, list]:
    return make_image(rng, size)


def _make_context(rng: np.random.Generator, size: int, pretrain: bool) -> tuple[np.ndarray, list]:
    image, objects = synthetic_context.make_context_image(rng, size)
    return image, synthetic_context.annotated(objects, pretrain=pretrain)


def _make_context_paper(rng: np.random.Generator, size: int, pretrain: bool) -> tuple[np.ndarray, list]:
    image, objects = synthetic_context.make_context_image_paper(rng, size)
    return image, synthetic_context.annotated(objects, pretrain=pretrain)


# How object sizes relate to the image (docs/benchmarks.md): "scaled", the first benchmarks' (sizes
# relative to the image side, for geometry scaled with the image), or "paper" (sizes in pixels drawn
# like COCO's, for the paper's anchors and Eq. 1 unscaled; the context variant only).
GEOMETRIES = ("scaled", "paper")


def _variants() -> dict[tuple[str, str], Variant]:
    return {
        ("shapes", "scaled"): Variant("shapes", "five shapes in random colours over clutter (the demo's)",
                                      CLASSES, CLASSES, _make_shapes),
        ("context", "scaled"): Variant("context", "small shapes whose class is the region they lie in, and "
                                       "distractors (docs/benchmarks.md)", synthetic_context.CLASSES,
                                       synthetic_context.PRETRAIN_CLASSES, _make_context),
        ("context", "paper"): Variant("context", "shapes of COCO's sizes whose class is the region they lie "
                                      "in, regions as context only (docs/benchmarks.md)",
                                      synthetic_context.SHAPE_CLASSES, synthetic_context.PRETRAIN_CLASSES,
                                      _make_context_paper),
    }


def get_variant(name: str, geometry: str = "scaled") -> Variant:
    variants = _variants()
    if name not in {variant for variant, _ in variants}:
        raise ConfigError(f"unknown benchmark variant {name!r} (known: "
                          f"{', '.join(sorted({variant for variant, _ in variants}))})")
    if (name, geometry) not in variants:
        known = [g for variant, g in variants if variant == name]
        raise ConfigError(f"the {name} benchmark has no geometry {geometry!r} (it has: {', '.join(known)})")
    return variants[name, geometry]


# The random stream of each split: train and val as they always were; pre-training and calibration
# (the split schedules are chosen on, never the one a report scores) apart from both.
def _split_stream(split: str, seed: int) -> int:
    streams = {"train": seed * 2, "val": seed * 2 + 1, "pretrain": 2**31 + seed, "calibration": 2**32 + seed}
    return streams[split]


def generate_split(out_dir: str | Path, num_images: int, image_size: int, seed: int,
                   progress: bool = True, desc: str = "synth", *, variant: str = "shapes",
                   geometry: str = "scaled", pretrain: bool = False) -> dict[str, Any]:
    """Write ``num_images`` images and their COCO annotations into ``out_dir``.

    Image ``index`` is drawn from the random stream ``(seed, index)`` alone. ``pretrain`` labels
    the objects with the variant's pre-training classes.
    """
    maker = get_variant(variant, geometry)
    classes = maker.pretrain_classes if pretrain else maker.classes
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in progress_bar(range(num_images), desc=desc, enabled=progress):
        rng = np.random.default_rng([seed, index])
        pixels, objects = maker.make(rng, image_size, pretrain)
        file_name = f"{index:06d}.png"
        Image.fromarray(pixels).save(out_dir / "images" / file_name, compress_level=1)
        images.append({"id": index + 1, "file_name": file_name, "height": image_size, "width": image_size})
        for kind_index, mask in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1,
                                "category_id": kind_index + 1, **mask_to_annotation(mask)})
    description = (f"fpn synthetic benchmark, variant {variant}" if variant != "shapes"
                   else "fpn synthetic multi-scale shapes benchmark")
    description += f", {geometry} geometry" if geometry != "scaled" else ""
    description += " (pre-training labels)" if pretrain else ""
    dataset = {
        "info": {"description": description, "seed": seed, "variant": variant, "geometry": geometry},
        "images": images, "annotations": annotations,
        "categories": [{"id": i + 1, "name": name, "supercategory": variant}
                       for i, name in enumerate(classes)],
    }
    (out_dir / "annotations.json").write_text(json.dumps(dataset))
    return {"images": len(images), "objects": len(annotations), **size_bins(annotations)}


def size_bins(annotations: list[dict[str, Any]]) -> dict[str, float]:
    """Share of objects in COCO's small / medium / large area bins."""
    areas = np.array([a["area"] for a in annotations], dtype=np.float64)
    if areas.size == 0:
        return {"small": 0.0, "medium": 0.0, "large": 0.0}
    return {"small": round(float((areas < 32**2).mean()), 3),
            "medium": round(float(((areas >= 32**2) & (areas < 96**2)).mean()), 3),
            "large": round(float((areas >= 96**2).mean()), 3)}


def generate(out_dir: str | Path, *, num_train: int = 400, num_val: int = 100, num_pretrain: int = 0,
             num_calibration: int = 0, image_size: int = 512, seed: int = 0, variant: str = "shapes",
             geometry: str = "scaled", progress: bool = True) -> dict[str, Any]:
    """The benchmark: ``out_dir/train`` and ``out_dir/val``, and ``out_dir/pretrain`` and
    ``out_dir/calibration`` when their counts are > 0 (disjoint random streams of ``seed``)."""
    if image_size < 64:
        raise ConfigError(f"image_size {image_size} is too small (at least 64 px)")
    get_variant(variant, geometry)
    out_dir = Path(out_dir)
    splits = {"train": num_train, "val": num_val, "pretrain": num_pretrain, "calibration": num_calibration}
    return {split: generate_split(out_dir / split, count, image_size, _split_stream(split, seed), progress,
                                  f"synth {split}", variant=variant, geometry=geometry,
                                  pretrain=split == "pretrain")
            for split, count in splits.items() if count or split in ("train", "val")}
