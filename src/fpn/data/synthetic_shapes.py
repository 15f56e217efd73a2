"""Drawing primitives of the synthetic benchmarks: shapes, textured backgrounds, masks.

Shared by the ``shapes`` benchmark (``fpn.data.synthetic``) and the ``context`` one
(``fpn.data.synthetic_context``); everything is a function of the random generator passed in.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ["circle", "square", "triangle", "star", "cross"]
MIN_SIDE = 8.0
MIN_VISIBLE_FRACTION = 0.35  # an object hidden more than this is dropped
MIN_VISIBLE_PIXELS = 24


def polygon(kind: str, cx: float, cy: float, side: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a shape of the given side (its unrotated bounding-box side), rotated."""
    r = side / 2
    match kind:
        case "square":
            pts = [(-r, -r), (r, -r), (r, r), (-r, r)]
        case "triangle":
            pts = [(r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
        case "star":
            pts = [((r if i % 2 == 0 else 0.45 * r) * math.cos(-math.pi / 2 + i * math.pi / 5),
                    (r if i % 2 == 0 else 0.45 * r) * math.sin(-math.pi / 2 + i * math.pi / 5))
                   for i in range(10)]
        case "cross":
            t = r / 3
            pts = [(-t, -r), (t, -r), (t, -t), (r, -t), (r, t), (t, t), (t, r), (-t, r), (-t, t), (-r, t),
                   (-r, -t), (-t, -t)]
        case _:
            raise ValueError(kind)
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in pts]


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A textured, cluttered background: a colour gradient, noise, blurred blobs and lines."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    direction = rng.uniform(0, 2 * math.pi)
    t = (np.cos(direction) * xx + np.sin(direction) * yy)
    t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
    image = c0 * (1 - t[..., None]) + c1 * t[..., None]
    coarse = rng.normal(0, 25, (size // 16 + 1, size // 16 + 1, 3)).astype(np.float32)
    image += np.kron(coarse, np.ones((16, 16, 1), np.float32))[:size, :size]
    image += rng.normal(0, 10, (size, size, 3))
    canvas = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(4, 14))):  # clutter: lines and arcs, never one of the classes
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, size, 4))
        if rng.random() < 0.6:
            draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(1, 4)))
        else:
            box = (min(x0, x1), min(y0, y1), max(x0, x1) + 1, max(y0, y1) + 1)
            draw.arc(box, float(rng.uniform(0, 360)), float(rng.uniform(0, 360)), fill=colour,
                     width=int(rng.integers(1, 3)))
    return np.asarray(canvas)


def object_mask(kind: str, size: int, cx: float, cy: float, side: float, angle: float) -> np.ndarray:
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if kind == "circle":
        r = side / 2
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=1)
    else:
        draw.polygon(polygon(kind, cx, cy, side, angle), fill=1)
    return np.asarray(canvas, dtype=bool)
