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

from fpn.data.synthetic_shapes import (
    MIN_SIDE,
    MIN_VISIBLE_FRACTION,
    MIN_VISIBLE_PIXELS,
    SHAPES,
    background,
    object_mask,
    polygon,
)

REGIONS = ["ellipse", "hexagon"]
SHAPE_CLASSES = [f"{shape} in {region}" for region in REGIONS for shape in SHAPES]
CLASSES = SHAPE_CLASSES + REGIONS
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
    return _regions_apart(rng, size, [REGION_SIDE] * int(rng.integers(1, 3)), ELLIPSE_ASPECT)


def _regions_apart(rng: np.random.Generator, size: int, sides: list[tuple[float, float]],
                   ellipse_aspect: tuple[float, float]) -> list[Region]:
    """A region per ``sides`` range (its larger axis, of the image side), each at least 6 px from
    the others; one that finds no room in 12 tries is left out."""
    regions: list[Region] = []
    occupied = np.zeros((size, size), dtype=bool)
    for low, high in sides:
        for _attempt in range(12):
            kind = REGIONS[int(rng.integers(len(REGIONS)))]
            major = size * math.exp(rng.uniform(math.log(low), math.log(high)))
            aspect = float(rng.uniform(*ellipse_aspect)) if kind == "ellipse" else 1.0
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


# --- The paper's pixel geometry (docs/benchmarks.md, "geometry") ---------------------------------
# The paper's anchors and strides unscaled, and objects sized in pixels by COCO's own buckets, in a
# smaller field of view: sizes drawn by COCOeval's area (the visible mask's), 41% small, 34% medium,
# 25% large by count as on COCO, every shape in every bucket, large ones capped by the image. Regions are the
# context only (not annotated), so class and size are independent. Shapes do not overlap, so an
# object's annotated area is the area it was drawn with.
COCO_SHARES = {"small": 0.41, "medium": 0.34, "large": 0.25}
# The buckets objects are drawn from: large ones more often, since a region holds few of them and
# some find no room (measured: these weights give COCO_SHARES; tests/data/test_synthetic.py).
DRAW_WEIGHTS = {"small": 0.29, "medium": 0.23, "large": 0.48}
SMALLEST_AREA = 48.0  # px², a 7 x 7 square (MIN_VISIBLE_PIXELS is 24)
PAPER_REGION_SIDE = (0.6, 0.98)  # the first region's larger axis, of the image side
PAPER_SECOND_REGION_SIDE = (0.3, 0.6)
PAPER_ELLIPSE_ASPECT = (1.15, 1.5)
PAPER_SHAPES = (3, 8)  # shapes inside the regions per image
PAPER_FIT = 0.85  # a shape's circumscribed diameter: at most this fraction of its region's minor axis
GAP = 2  # px between two shapes, and between a shape and its region's outline


def shape_fill(kind: str) -> float:
    """A shape's area over its side² (``drawing.polygon``'s side): pi/4 for a circle."""
    if kind == "circle":
        return math.pi / 4
    points = polygon(kind, 0.0, 0.0, 1.0, 0.0)
    edges = zip(points, points[1:] + points[:1], strict=True)
    return abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in edges)) / 2  # the shoelace formula


def area_bounds(size: int) -> dict[str, tuple[float, float]]:
    """COCO's buckets as area ranges to draw from; the large bucket ends where the image caps it."""
    largest = max(96.0**2 * 1.5, (0.7 * size) ** 2)
    return {"small": (SMALLEST_AREA, 32.0**2), "medium": (32.0**2, 96.0**2), "large": (96.0**2, largest)}


def _circumradius(kind: str, side: float) -> float:
    """The radius of the disc a shape of ``side`` stays inside at any rotation."""
    if kind == "circle":
        return side / 2
    return max(math.hypot(x, y) for x, y in polygon(kind, 0.0, 0.0, side, 0.0))


def _place_paper_regions(rng: np.random.Generator, size: int) -> list[Region]:
    """A large region (large shapes need room), and half the time a second, smaller one."""
    sides = [PAPER_REGION_SIDE] + ([PAPER_SECOND_REGION_SIDE] if rng.random() < 0.5 else [])
    return _regions_apart(rng, size, sides, PAPER_ELLIPSE_ASPECT)


def _draw_bucket(rng: np.random.Generator) -> str:
    return str(rng.choice(list(DRAW_WEIGHTS), p=list(DRAW_WEIGHTS.values())))


def _largest_area(kind: str, region: Region) -> float:
    """The largest area a ``kind`` shape can have inside ``region`` (``PAPER_FIT``)."""
    side = PAPER_FIT * region.minor / (2 * _circumradius(kind, 1.0))
    return shape_fill(kind) * side**2


def _draw_object(rng: np.random.Generator, size: int, regions: list[Region]) -> tuple[float, int, int] | None:
    """(area, shape, region index) of one object: a bucket by ``DRAW_WEIGHTS``, a shape and a region
    that can hold it at that size (another shape if this one cannot), the area log-uniform in the
    bucket up to what the region holds."""
    low, high = area_bounds(size)[_draw_bucket(rng)]
    for shape in rng.permutation(len(SHAPES)):
        kind = SHAPES[int(shape)]
        fits = [i for i, region in enumerate(regions) if _largest_area(kind, region) >= low]
        if fits:
            index = fits[int(rng.integers(len(fits)))]
            top = min(high, _largest_area(kind, regions[index]))
            return float(math.exp(rng.uniform(math.log(low), math.log(top)))), int(shape), index
    return None


def _place_shape(rng: np.random.Generator, size: int, kind: str, side: float, allowed: np.ndarray
                 ) -> np.ndarray | None:
    """The mask of a ``kind`` shape of ``side`` drawn wholly inside ``allowed``, or None after a few
    tries. Centres are drawn where a square inside the shape's circumscribed disc fits (a necessary
    condition, cheap to compute)."""
    centres = ~_dilate(~allowed, int(_circumradius(kind, side) / math.sqrt(2)))
    ys, xs = np.nonzero(centres)
    for _ in range(20 if len(xs) else 0):
        pick = int(rng.integers(len(xs)))
        mask = object_mask(kind, size, float(xs[pick]), float(ys[pick]), side,
                           float(rng.uniform(0, 2 * math.pi)))
        if mask.sum() >= MIN_VISIBLE_PIXELS and not (mask & ~allowed).any():
            return mask
    return None


def make_context_image_paper(rng: np.random.Generator, size: int
                             ) -> tuple[np.ndarray, list[tuple[int, int, np.ndarray]]]:
    """``make_context_image`` at the paper's pixel geometry (the section's comment above).

    Regions come back with class index -1 (context, not objects) and their pre-training class, as
    distractors do.
    """
    image = background(rng, size).copy()
    regions = _place_paper_regions(rng, size)
    drawn: list[tuple[int, int, np.ndarray]] = []
    for region in regions:
        shade = rng.normal(0, 8, (int(region.mask.sum()), 1)).astype(np.int16)
        image[region.mask] = np.clip(region.colour + shade, 0, 255).astype(np.uint8)
        drawn.append((-1, len(SHAPES) + REGIONS.index(region.kind), region.mask))
    image = _clutter(rng, image, int(rng.integers(1, 5)))
    taken = np.zeros((size, size), dtype=bool)
    insides = [~_dilate(~region.mask, GAP) for region in regions]
    wanted = [_draw_object(rng, size, regions) for _ in range(int(rng.integers(*PAPER_SHAPES) + 1))]
    for area, shape, index in sorted(w for w in wanted if w is not None)[::-1]:  # the largest first
        kind, region = SHAPES[shape], regions[index]
        allowed = insides[index] & ~_dilate(taken, GAP)
        low = max(low for low, _ in area_bounds(size).values() if low <= area)  # its bucket's
        mask = None
        while mask is None and area >= low:  # no room: smaller, within the same bucket
            mask = _place_shape(rng, size, kind, math.sqrt(area / shape_fill(kind)), allowed)
            area *= 0.75
        if mask is not None:
            drawn.append((REGIONS.index(region.kind) * len(SHAPES) + shape, shape, mask))
            _paint(rng, image, mask, region.colour)
            taken |= mask
    any_region = np.zeros((size, size), dtype=bool)
    for region in regions:
        any_region |= region.mask
    outside = ~_dilate(any_region, 4)
    for _ in range(int(rng.integers(DISTRACTORS[0], DISTRACTORS[1] + 1))):
        shape = int(rng.integers(len(SHAPES)))
        area = math.exp(rng.uniform(math.log(SMALLEST_AREA), math.log(64.0**2)))
        side = math.sqrt(area / shape_fill(SHAPES[shape]))
        mask = _place_shape(rng, size, SHAPES[shape], side, outside & ~_dilate(taken, GAP))
        if mask is not None:
            drawn.append((-1, shape, mask))
            _paint(rng, image, mask, None)
            taken |= mask
    return image, _visible(drawn, size)
