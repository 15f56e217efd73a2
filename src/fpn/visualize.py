"""Drawing detections, ground truth (boxes) and segment proposals (mask overlays) on images.

Boxes are drawn by ``torchvision.utils.draw_bounding_boxes``; the labels by us, because
torchvision puts each label at its box's top-left corner inside the box, where a box at the
right edge of the picture runs its label off the image. Drawing order is by score, lowest
first, so the best detection's box and label end up on top; labels are drawn after all boxes, so
no outline crosses a label.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

# 20 colours that stay apart on photos (Sasha Trubetskoy's list of distinct colours, reordered).
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
           (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
           (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128)]
DRAW_SCORE_THRESH = 0.5  # the default threshold of every drawing (detections below it are not drawn)

ColourBy = Literal["class", "level"]


def colour_of(index: int) -> tuple[int, int, int]:
    """The palette's colour for a class label (1..K; 0 = a class-agnostic proposal) or a level k."""
    return PALETTE[index % len(PALETTE)]


def to_pil(image: torch.Tensor) -> Image.Image:
    """A 3 x H x W float tensor in [0, 1] -> an RGB PIL image."""
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


def line_width(image_size: tuple[int, int]) -> int:
    """Box outline width for a (width, height) picture: 2 px up to 500 px, then 1 px per 250."""
    return max(2, round(min(image_size) / 250))


def label_font(image_size: tuple[int, int]) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's own font at a size that grows with the (width, height) picture (10 px at 320 px)."""
    size = max(10, round(min(image_size) / 32))
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: its fixed bitmap font
        return ImageFont.load_default()


def draw_detections(
    image: Image.Image,
    detections: Mapping[str, Any] | Any,
    class_names: Sequence[str] | None = None,
    score_thresh: float = DRAW_SCORE_THRESH,
    *,
    colour_by: ColourBy = "class",
) -> Image.Image:
    """A copy of ``image`` with the detections scored at least ``score_thresh`` boxed and labelled.

    ``detections`` holds ``boxes`` (D, 4) xyxy in the image's pixels and ``labels`` (D,), and
    optionally ``scores`` (D,) (none: ground truth, all drawn, no score written), ``names`` (the
    class name of each; else ``class_names[label - 1]``) and ``levels`` (D,) (the pyramid level
    k of each, needed with ``colour_by="level"``, which colours P_k and writes it in the label).
    """
    canvas = image.convert("RGB")
    boxes = torch.as_tensor(detections["boxes"], dtype=torch.float32).reshape(-1, 4).cpu()
    labels = [int(v) for v in torch.as_tensor(detections["labels"]).reshape(-1).tolist()]
    scores = detections.get("scores")
    scores = None if scores is None else [float(v) for v in torch.as_tensor(scores).reshape(-1).tolist()]
    levels = detections.get("levels")
    if colour_by == "level" and levels is None:
        raise ValueError("colour_by='level' needs the pyramid level of each detection ('levels')")
    levels = None if levels is None else [int(v) for v in torch.as_tensor(levels).reshape(-1).tolist()]
    names = detections.get("names") or [_name(label, class_names) for label in labels]
    order = range(len(labels)) if scores is None else sorted(
        (i for i in range(len(labels)) if scores[i] >= score_thresh), key=lambda i: scores[i])
    order = [i for i in order if boxes[i, 2] > boxes[i, 0] and boxes[i, 3] > boxes[i, 1]]
    if not order:
        return canvas.copy()
    colours = [colour_of(levels[i] if colour_by == "level" else labels[i]) for i in order]
    texts = [" ".join([names[i], *([f"{scores[i]:.2f}"] if scores is not None else []),
                       *([f"P{levels[i]}"] if colour_by == "level" else [])]) for i in order]
    drawn = _draw_boxes(canvas, boxes[order], colours)
    _draw_labels(drawn, boxes[order].tolist(), texts, colours)
    return drawn


def _name(label: int, class_names: Sequence[str] | None) -> str:
    if class_names and 0 < label <= len(class_names):
        return class_names[label - 1]
    return "object" if label == 0 else str(label)  # 0: a class-agnostic proposal


def _draw_boxes(canvas: Image.Image, boxes_xyxy: torch.Tensor, colours: list[tuple[int, int, int]]
                ) -> Image.Image:
    """torchvision's outlines, in the given order (later ones on top)."""
    from torchvision.utils import draw_bounding_boxes

    pixels = torch.from_numpy(np.asarray(canvas, dtype=np.uint8).copy()).permute(2, 0, 1)  # (3, H, W)
    width, height = canvas.size
    clipped = boxes_xyxy.clone()
    clipped[:, 0::2] = clipped[:, 0::2].clamp(0, width - 1)
    clipped[:, 1::2] = clipped[:, 1::2].clamp(0, height - 1)
    out = draw_bounding_boxes(pixels, clipped, colors=colours, width=line_width(canvas.size))
    return Image.fromarray(out.permute(1, 2, 0).numpy())


def _draw_labels(canvas: Image.Image, boxes: list[list[float]], texts: list[str],
                 colours: list[tuple[int, int, int]]) -> None:
    """Each text on a filled tag in its box's colour, above the box's top-left corner (inside the
    box where there is no room above), moved left or up so that it stays inside the picture."""
    draw = ImageDraw.Draw(canvas)
    font = label_font(canvas.size)
    for box, text, colour in zip(boxes, texts, colours, strict=True):
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tag_w, tag_h = right - left + 4, bottom - top + 2
        x, y = label_position(box, (tag_w, tag_h), canvas.size)
        draw.rectangle((x, y, x + tag_w - 1, y + tag_h - 1), fill=colour)
        ink = (0, 0, 0) if sum(colour) > 300 else (255, 255, 255)
        draw.text((x + 2 - left, y + 1 - top), text, fill=ink, font=font)


def label_position(box_xyxy: Sequence[float], tag_wh: tuple[int, int], image_size: tuple[int, int]
                   ) -> tuple[int, int]:
    """Top-left corner of a ``tag_wh`` label for a box in a (width, height) picture.

    Above the box when it fits, else just inside its top edge; then shifted left and up as far as
    needed to end inside the picture (a tag wider than the picture starts at x = 0).
    """
    width, height = image_size
    tag_w, tag_h = tag_wh
    x, y = int(box_xyxy[0]), int(box_xyxy[1]) - tag_h
    if y < 0:
        y = int(box_xyxy[1])
    x = max(0, min(x, width - tag_w))
    y = max(0, min(y, height - tag_h))
    return x, y


def save_picture(image: Image.Image, path: Path) -> None:
    """Save in the format the suffix names (JPEG at quality 95: box outlines stay sharp)."""
    if path.suffix.lower() in (".jpg", ".jpeg"):
        image.save(path, quality=95)
    else:
        image.save(path)


def draw_masks(image: Image.Image, masks: torch.Tensor, scores: torch.Tensor,
               score_thresh: float = DRAW_SCORE_THRESH, opacity: float = 0.5) -> Image.Image:
    """A copy of ``image`` with each mask (K, H, W) bool above ``score_thresh`` overlaid in its own
    colour (``opacity`` of the colour over the pixels) and its score written at its top-left,
    the best mask drawn last."""
    canvas = np.asarray(image.convert("RGB"), dtype=np.float32).copy()
    shown = []
    order = sorted(range(len(scores)), key=lambda i: float(scores[i]))
    all_masks = masks.cpu().numpy().astype(bool)
    for i in order:
        mask, score = all_masks[i], float(scores[i])
        if score < score_thresh or not mask.any():
            continue
        colour = np.array(colour_of(i), dtype=np.float32)
        canvas[mask] = (1 - opacity) * canvas[mask] + opacity * colour
        ys, xs = np.nonzero(mask)
        shown.append(([int(xs.min()), int(ys.min())], f"{score:.2f}", colour_of(i)))
    drawn = Image.fromarray(canvas.round().clip(0, 255).astype(np.uint8))
    if shown:
        corners, texts, colours = zip(*shown, strict=True)
        _draw_labels(drawn, [[x, y, x, y] for x, y in corners], list(texts), list(colours))
    return drawn


def save_masks_drawn(image: Image.Image, masks: torch.Tensor, scores: torch.Tensor, path: str | Path,
                     score_thresh: float = DRAW_SCORE_THRESH) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_picture(draw_masks(image, masks, scores, score_thresh), path)
    return path
