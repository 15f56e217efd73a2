"""Drawing detections (boxes) and segment proposals (mask overlays) on images, for ``fpn predict``
and the demo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]


def to_pil(image: torch.Tensor) -> Image.Image:
    """A 3 x H x W float tensor in [0, 1] -> an RGB PIL image."""
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


def draw_detections(
    image: Image.Image,
    detections: dict[str, torch.Tensor],
    class_names: list[str] | None = None,
    score_thresh: float = 0.3,
) -> Image.Image:
    """A copy of ``image`` with each detection above ``score_thresh`` boxed and labelled."""
    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    boxes = detections["boxes"].tolist()
    for box, score, label in zip(boxes, detections["scores"].tolist(), detections["labels"].tolist(),
                                 strict=True):
        if score < score_thresh:
            continue
        colour = PALETTE[label % len(PALETTE)]
        if class_names and 0 < label <= len(class_names):
            name = class_names[label - 1]
        else:
            name = "object" if label == 0 else str(label)  # 0: a class-agnostic proposal
        draw.rectangle(box, outline=colour, width=2)
        text = f"{name} {score:.2f}"
        left, top, right, bottom = draw.textbbox((box[0], box[1]), text, font=font)
        y = max(0, box[1] - (bottom - top) - 2)
        draw.rectangle((box[0], y, box[0] + right - left + 4, y + bottom - top + 2), fill=colour)
        draw.text((box[0] + 2, y), text, fill=(0, 0, 0), font=font)
    return canvas


def save_drawn(image: Image.Image, detections: dict[str, torch.Tensor], path: str | Path,
               class_names: list[str] | None = None, score_thresh: float = 0.3) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_detections(image, detections, class_names, score_thresh).save(path)
    return path


def draw_masks(image: Image.Image, masks: torch.Tensor, scores: torch.Tensor, score_thresh: float = 0.3,
               opacity: float = 0.5) -> Image.Image:
    """A copy of ``image`` with each mask (K, H, W) bool above ``score_thresh`` overlaid in its own
    colour (``opacity`` of the colour over the pixels) and its score written at its top-left."""
    canvas = np.asarray(image.convert("RGB"), dtype=np.float32).copy()
    shown = []
    for i, (mask, score) in enumerate(zip(masks.cpu().numpy().astype(bool), scores.tolist(), strict=True)):
        if score < score_thresh or not mask.any():
            continue
        colour = np.array(PALETTE[i % len(PALETTE)], dtype=np.float32)
        canvas[mask] = (1 - opacity) * canvas[mask] + opacity * colour
        ys, xs = np.nonzero(mask)
        shown.append((int(xs.min()), int(ys.min()), PALETTE[i % len(PALETTE)], score))
    drawn = Image.fromarray(canvas.round().clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(drawn)
    font = ImageFont.load_default()
    for x, y, colour, score in shown:
        text = f"{score:.2f}"
        left, top, right, bottom = draw.textbbox((x, y), text, font=font)
        draw.rectangle((x, y, x + right - left + 4, y + bottom - top + 2), fill=colour)
        draw.text((x + 2, y), text, fill=(0, 0, 0), font=font)
    return drawn


def save_masks_drawn(image: Image.Image, masks: torch.Tensor, scores: torch.Tensor, path: str | Path,
                     score_thresh: float = 0.3) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_masks(image, masks, scores, score_thresh).save(path)
    return path
