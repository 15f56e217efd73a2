"""Classification samples cut from a detection dataset, for pre-training a backbone (``fpn pretrain``).

Each annotated object gives a square crop around its box with some context (the window is
``context`` times the box's longer side, its centre jittered), resized to ``crop_size``; crops of
background (windows that hold no object's centre) add a class 0. The crop of item ``i`` in epoch
``e`` is a function of ``(seed, e, i)`` alone, so pre-training is deterministic with any number of
loader workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from fpn.data.unreadable import Unreadable, load_or_unreadable


def boxes_and_labels(dataset: Dataset, index: int) -> tuple[np.ndarray, np.ndarray]:
    """The (N, 4) xyxy boxes and (N,) labels 1..K of image ``index``'s objects (crowd regions and
    difficult objects left out), read from the dataset's records, so no image is decoded."""
    images = getattr(dataset, "images", None)
    if images is not None:
        record = images[index]
        keep = record.objects(with_difficult=False)
        return record.boxes_xyxy[keep], record.labels[keep]
    _, target = dataset[index]
    return target["boxes"].numpy(), target["labels"].numpy()


@dataclass(frozen=True)
class CropEntry:
    image: int  # index in the detection dataset
    box_xyxy: tuple[float, float, float, float] | None  # None: a background crop
    label: int  # 1..K, 0 for background


class ObjectCrops(Dataset):
    """Object and background crops of the images ``indices`` of a detection dataset.

    Item ``i`` is epoch 0's ``(crop, label)``: crop 3 x crop_size x crop_size float in [0, 1] (RGB, as the
    dataset's images), label 0 (background) or the object's 1..K; or an ``Unreadable`` for an image
    that cannot be decoded (the loader skips it).

    Args:
        dataset: images and boxes (a ``fpn.data.dataset.DetectionDataset``).
        indices: the images to cut from (a held-out split takes the others).
        crop_size: side of every crop, in pixels.
        context: (min, max) window side / box's longer side, drawn log-uniformly per crop.
        background_per_object: background crops per object crop.
        min_window: the smallest window side, in image pixels.
        cache_mb: decoded images are kept in memory up to this size (per loader worker).
    """

    def __init__(self, dataset: Dataset, indices: list[int], *, crop_size: int = 64,
                 context: tuple[float, float] = (1.5, 3.0), background_per_object: float = 0.25,
                 min_window: float = 24.0, seed: int = 0, cache_mb: float = 1024.0):
        self.dataset = dataset
        self.crop_size = crop_size
        self.context = context
        self.min_window = min_window
        self.seed = seed
        self.entries: list[CropEntry] = []
        for index in indices:
            boxes, labels = boxes_and_labels(dataset, index)
            self.entries += [CropEntry(index, tuple(map(float, box)), int(label))
                             for box, label in zip(boxes, labels, strict=True)]
        objects = len(self.entries)
        for k in range(round(background_per_object * objects)):
            self.entries.append(CropEntry(indices[k % len(indices)], None, 0))
        self._cache: dict[int, Tensor] = {}
        self._cache_budget = int(cache_mb * 2**20)

    def __len__(self) -> int:
        return len(self.entries)

    def labels(self) -> list[int]:
        return [entry.label for entry in self.entries]

    def _image(self, index: int) -> Tensor | Unreadable:
        if index in self._cache:
            return self._cache[index]
        sample = load_or_unreadable(self.dataset, index)
        if isinstance(sample, Unreadable):
            return sample
        image = (sample[0] * 255).round().to(torch.uint8)  # 4x smaller in the cache, exact for 8-bit files
        if self._cache_budget >= image.numel():
            self._cache[index] = image
            self._cache_budget -= image.numel()
        return image

    def __getitem__(self, i: int) -> tuple[Tensor, int] | Unreadable:
        return self.crop(i, epoch=0)

    def crop(self, i: int, *, epoch: int) -> tuple[Tensor, int] | Unreadable:
        """Entry ``i`` as drawn in ``epoch`` (its window and flip)."""
        entry = self.entries[i]
        image = self._image(entry.image)
        if isinstance(image, Unreadable):
            return image
        rng = np.random.default_rng([self.seed, epoch, i])
        height, width = image.shape[-2:]
        if entry.box_xyxy is None:
            boxes, _ = boxes_and_labels(self.dataset, entry.image)
            window = background_window(rng, (height, width), boxes, self.min_window)
        else:
            window = object_window(rng, entry.box_xyxy, self.context, self.min_window)
        crop = crop_and_resize(image, window, self.crop_size)
        if rng.random() < 0.5:
            crop = crop.flip(-1)
        return crop, entry.label


def object_window(rng: np.random.Generator, box_xyxy: tuple[float, float, float, float],
                  context: tuple[float, float], min_window: float) -> tuple[float, float, float, float]:
    """A square window around a box: side = context x the box's longer side, centre jittered."""
    x1, y1, x2, y2 = box_xyxy
    side = max(x2 - x1, y2 - y1, 1.0)
    window = max(min_window, side * math.exp(rng.uniform(math.log(context[0]), math.log(context[1]))))
    cx, cy = (x1 + x2) / 2 + rng.uniform(-0.15, 0.15) * side, (y1 + y2) / 2 + rng.uniform(-0.15, 0.15) * side
    return cx - window / 2, cy - window / 2, cx + window / 2, cy + window / 2


def background_window(rng: np.random.Generator, image_hw: tuple[int, int], boxes_xyxy: np.ndarray,
                      min_window: float, tries: int = 20) -> tuple[float, float, float, float]:
    """A square window whose central half holds no object's centre (the last try if none does)."""
    height, width = image_hw
    largest = max(min_window, min(height, width))
    centres = (boxes_xyxy[:, :2] + boxes_xyxy[:, 2:]) / 2 if len(boxes_xyxy) else np.zeros((0, 2))
    for _ in range(tries):
        side = math.exp(rng.uniform(math.log(min_window), math.log(largest)))
        x1, y1 = rng.uniform(0, max(width - side, 0)), rng.uniform(0, max(height - side, 0))
        inner = (x1 + side / 4, y1 + side / 4, x1 + 3 * side / 4, y1 + 3 * side / 4)
        inside = ((centres[:, 0] >= inner[0]) & (centres[:, 0] <= inner[2])
                  & (centres[:, 1] >= inner[1]) & (centres[:, 1] <= inner[3]))
        if not inside.any():
            break
    return x1, y1, x1 + side, y1 + side


def crop_and_resize(image: Tensor, window_xyxy: tuple[float, float, float, float], size: int) -> Tensor:
    """(3, H, W) uint8 -> (3, size, size) float in [0, 1]: the window (rounded to whole pixels; zeros
    outside the image), resampled bilinearly with antialiasing."""
    height, width = image.shape[-2:]
    x1, y1, x2, y2 = (round(v) for v in window_xyxy)
    x2, y2 = max(x2, x1 + 1), max(y2, y1 + 1)
    inside = image[:, max(y1, 0):min(y2, height), max(x1, 0):min(x2, width)]
    pad = (max(-x1, 0), max(x2 - width, 0), max(-y1, 0), max(y2 - height, 0))  # left, right, top, bottom
    window = F.pad(inside.float(), pad) / 255
    return F.interpolate(window[None], size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False)[0]
