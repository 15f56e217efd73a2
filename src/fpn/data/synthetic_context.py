"""The context benchmark: small objects whose class only their surroundings tell (docs/benchmarks.md).

The paper's argument for the top-down pathway (docs/paper.md §1) is that high-resolution maps
have low-level features only, while recognising a small object needs high-level semantics. Here
that is made literal: an image holds one or two large *regions*, an ellipse or a hexagon, and
small shapes inside them. A small shape's class is its shape **and** the kind of region it lies in
("star in hexagon" is not "star in ellipse"), and the same shapes outside every region are not
objects at all (distractors). A region's kind shows only in its whole outline, a hundred pixels or
more across: its inside has the same random colour and noise for both kinds. So a window of ~50 px
around a small object (what a stride-4 feature of a shallow network sees) can read the shape, but
not the class; a feature that also sees the region can.

Classes (12): the 5 shapes x 2 region kinds, then the 2 regions themselves (large objects). Object
sizes: shapes from 8 px to about a fifth of the image (most of them COCO-small), regions from 0.4
to 0.94 of the image side. Clutter (lines, arcs) covers the background and, more sparsely, the
regions.

A third split, ``pretrain``, drawn from another random stream, labels every shape by its shape
alone (distractors too) and every region by its kind: 7 generic classes, for pre-training a
backbone as a classifier (``fpn pretrain``), as the paper's backbones were pre-trained on ImageNet's
labels and not on COCO's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from fpn.data.drawing import (
    MIN_SIDE,
    MIN_VISIBLE_FRACTION,
    MIN_VISIBLE_PIXELS,
    SHAPES,
    background,
    object_mask,
)

REGIONS = ["ellipse", "hexagon"]
CLASSES = [f"{shape} in {region}" for region in REGIONS for shape in SHAPES] + REGIONS
PRETRAIN_CLASSES = SHAPES + REGIONS

REGION_SIDE = (0.45, 0.95)  # the larger axis of a region, as a fraction of the image side
ELLIPSE_ASPECT = (1.3, 1.8)  # major / minor axis: an ellipse is never a circle
SHAPE_MAX = (0.45, 0.3)  # a shape's side: at most this fraction of its region's minor axis / of the image
SHAPES_PER_REGION = (3, 8)
DISTRACTORS = (1, 6)
MIN_CONTRAST = 120  # L1 distance between a shape's colour and its region's (of 765)


def _region_mask(kind: str, size: int, cx: float, cy: float, major: float, aspect: float, angle: float
                 ) -> np.ndarray:
    """A filled ellipse (major x major/aspect) or regular hexagon (``major`` across its corners)."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    cos, sin = math.cos(angle), math.sin(angle)
    if kind == "ellipse":
        a, b = major / 2, major / 2 / aspect
        points = [(a * math.cos(t), b * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 96, endpoint=False)]
    else:
        r = major / 2
        points = [(r * math.cos(k * math.pi / 3), r * math.sin(k * math.pi / 3)) for k in range(6)]
    draw.polygon([(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in points], fill=1)
    return np.asarray(canvas, dtype=bool)


@dataclass(frozen=True)
class Region:
    kind: str  # one of REGIONS
    mask: np.ndarray  # (H, W) bool
    minor: float  # the smallest width across it, in pixels
    colour: np.ndarray  # (3,) its fill colour


def _place_regions(rng: np.random.Generator, size: int) -> list[Region]:
    """One or two regions at least 6 px apart."""
    regions: list[Region] = []
    occupied = np.zeros((size, size), dtype=bool)
    for _ in range(int(rng.integers(1, 3))):
        for _attempt in range(12):
            kind = REGIONS[int(rng.integers(len(REGIONS)))]
            major = size * math.exp(rng.uniform(math.log(REGION_SIDE[0]), math.log(REGION_SIDE[1])))
            aspect = float(rng.uniform(*ELLIPSE_ASPECT)) if kind == "ellipse" else 1.0
            cx, cy = (float(v) for v in rng.uniform(major * 0.45, size - major * 0.45, 2))
            mask = _region_mask(kind, size, cx, cy, major, aspect, float(rng.uniform(0, math.pi)))
            if not (mask & occupied).any():
                minor = major / aspect if kind == "ellipse" else major * math.sqrt(3) / 2
                regions.append(Region(kind, mask, minor, rng.integers(0, 256, 3).astype(np.int16)))
                occupied |= _dilate(mask, 6)
                break
    return regions


def _dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """``mask`` grown by ``pixels`` in every direction (a square structuring element)."""
    height, width = mask.shape
    padded = np.pad(mask, pixels)
    rows = np.zeros((height + 2 * pixels, width), dtype=bool)
    for dx in range(2 * pixels + 1):  # along x, then along y
        rows |= padded[:, dx:dx + width]
    grown = np.zeros((height, width), dtype=bool)
    for dy in range(2 * pixels + 1):
        grown |= rows[dy:dy + height]
    return grown


def _shape_inside(rng: np.random.Generator, size: int, allowed: np.ndarray, max_side: float
                  ) -> tuple[int, np.ndarray] | None:
    """A random shape whose whole mask lies in ``allowed``, or None after a few tries."""
    ys, xs = np.nonzero(allowed)
    if len(xs) == 0 or max_side <= MIN_SIDE:
        return None
    for _ in range(20):
        shape = int(rng.integers(len(SHAPES)))
        side = float(math.exp(rng.uniform(math.log(MIN_SIDE), math.log(max_side))))
        pick = int(rng.integers(len(xs)))
        mask = object_mask(SHAPES[shape], size, float(xs[pick]), float(ys[pick]), side,
                            float(rng.uniform(0, 2 * math.pi)))
        if mask.sum() >= MIN_VISIBLE_PIXELS and not (mask & ~allowed).any():
            return shape, mask
    return None


def _shape_colour(rng: np.random.Generator, background: np.ndarray | None) -> np.ndarray:
    for _ in range(10):
        colour = rng.integers(0, 256, 3).astype(np.int16)
        if background is None or np.abs(colour - background).sum() >= MIN_CONTRAST:
            break
    return colour


def _clutter(rng: np.random.Generator, image: np.ndarray, count: int) -> np.ndarray:
    """Lines and arcs over the whole image (never one of the classes)."""
    size = image.shape[0]
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    for _ in range(count):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, size, 4))
        if rng.random() < 0.6:
            draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(1, 3)))
        else:
            box = (min(x0, x1), min(y0, y1), max(x0, x1) + 1, max(y0, y1) + 1)
            draw.arc(box, float(rng.uniform(0, 360)), float(rng.uniform(0, 360)), fill=colour, width=1)
    return np.asarray(canvas).copy()


def make_context_image(rng: np.random.Generator, size: int
                       ) -> tuple[np.ndarray, list[tuple[int, int, np.ndarray]]]:
    """One image (H, W, 3) uint8 and its objects as (class index, pretrain class index, visible mask).

    Distractors (shapes outside every region) have class index -1: they are objects only for
    pre-training, which labels shapes by shape alone.
    """
    image = background(rng, size).copy()
    regions = _place_regions(rng, size)
    # (class, pretrain class, full mask) in drawing order: regions first, shapes over them
    drawn: list[tuple[int, int, np.ndarray]] = []
    for region in regions:
        shade = rng.normal(0, 8, (int(region.mask.sum()), 1)).astype(np.int16)
        image[region.mask] = np.clip(region.colour + shade, 0, 255).astype(np.uint8)
        kind = REGIONS.index(region.kind)
        drawn.append((len(SHAPES) * len(REGIONS) + kind, len(SHAPES) + kind, region.mask))
    image = _clutter(rng, image, int(rng.integers(1, 5)))
    for region in regions:
        inside = ~_dilate(~region.mask, 2)  # a 2-px margin from the outline
        max_side = min(SHAPE_MAX[0] * region.minor, SHAPE_MAX[1] * size)
        for _ in range(int(rng.integers(SHAPES_PER_REGION[0], SHAPES_PER_REGION[1] + 1))):
            placed = _shape_inside(rng, size, inside, max_side)
            if placed is not None:
                shape, shape_mask = placed
                drawn.append((REGIONS.index(region.kind) * len(SHAPES) + shape, shape, shape_mask))
                _paint(rng, image, shape_mask, region.colour)
    any_region = np.zeros((size, size), dtype=bool)
    for region in regions:
        any_region |= region.mask
    outside = ~_dilate(any_region, 4)
    for _ in range(int(rng.integers(DISTRACTORS[0], DISTRACTORS[1] + 1))):
        placed = _shape_inside(rng, size, outside, SHAPE_MAX[1] * size)
        if placed is not None:
            shape, shape_mask = placed
            drawn.append((-1, shape, shape_mask))
            _paint(rng, image, shape_mask, None)
    return image, _visible(drawn, size)


def _paint(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, region_colour) -> None:
    colour = _shape_colour(rng, region_colour)
    shade = rng.normal(0, 12, (int(mask.sum()), 1)).astype(np.int16)
    image[mask] = np.clip(colour + shade, 0, 255).astype(np.uint8)


def _visible(drawn: list[tuple[int, int, np.ndarray]], size: int) -> list[tuple[int, int, np.ndarray]]:
    """Later objects hide earlier ones; an object hidden too much is dropped."""
    covered = np.zeros((size, size), dtype=bool)
    objects = []
    for class_index, pretrain_index, mask in reversed(drawn):
        visible = mask & ~covered
        covered |= mask
        if visible.sum() >= max(MIN_VISIBLE_PIXELS, MIN_VISIBLE_FRACTION * mask.sum()):
            objects.append((class_index, pretrain_index, visible))
    return objects[::-1]


def annotated(objects: list[tuple[int, int, np.ndarray]], *, pretrain: bool) -> list[tuple[int, np.ndarray]]:
    """(class index, mask) of the objects a split annotates: detection classes, or pretraining's."""
    if pretrain:
        return [(generic, mask) for _, generic, mask in objects]
    return [(index, mask) for index, _, mask in objects if index >= 0]
