"""Preprocessing, kept outside the network so that it can be called alone or replaced:
resize (shorter side / longest side), normalise, pad the batch to a multiple of 32, and the
inverse mapping of boxes back to the original images (docs/paper.md §1, §6).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fpn.box_format import TARGET_BOX_KEYS
from fpn.config.read_only import frozen
from fpn.config.schema import InputConfig
from fpn.model.across_processes import largest_across_processes


@dataclass
class ImageBatch:
    """A padded batch and the sizes needed to undo the preprocessing."""

    tensor: Tensor  # (N, 3, H, W), H and W multiples of size_divisibility
    image_sizes: list[tuple[int, int]]  # (h, w) of each resized image inside the padding
    original_sizes: list[tuple[int, int]]  # (h, w) of each input image
    proposals: list[Tensor] | None = None  # given proposals (P, 4) per image, in resized pixels

    @property
    def padded_hw(self) -> tuple[int, int]:
        return int(self.tensor.shape[-2]), int(self.tensor.shape[-1])


def resize_scale(image_hw: tuple[int, int], min_size: int, max_size: int) -> float:
    """Scale that brings the shorter side to ``min_size`` unless the longer would pass ``max_size``.

    ``torch.sym_min`` / ``sym_max`` are ``min`` / ``max`` on plain numbers; on the symbolic sizes
    of ``fpn export`` they keep the graph valid for every image size.
    """
    height, width = image_hw
    return torch.sym_min(min_size / torch.sym_min(height, width), max_size / torch.sym_max(height, width))


def padded_size(side: int, size_divisibility: int) -> int:
    """``side`` rounded up to a multiple of ``size_divisibility``."""
    return (side + size_divisibility - 1) // size_divisibility * size_divisibility


def rescale_boxes(boxes_xyxy: Tensor, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> Tensor:
    """Map boxes between two sizes of the same image (x by the width ratio, y by the height's)."""
    ratio_h = torch.tensor(to_hw[0], dtype=torch.float32) / torch.tensor(from_hw[0], dtype=torch.float32)
    ratio_w = torch.tensor(to_hw[1], dtype=torch.float32) / torch.tensor(from_hw[1], dtype=torch.float32)
    scale = torch.stack([ratio_w, ratio_h, ratio_w, ratio_h]).to(boxes_xyxy)
    return boxes_xyxy * scale


class Preprocessor(nn.Module):
    """Images of any size (list of 3 x H x W floats in [0, 1], RGB) -> an ``ImageBatch``.

    Args:
        settings: ``model.input``; kept as a read-only copy (``fpn.config.read_only.frozen``), since the mean
            and std buffers are made from it here, once.
    """

    def __init__(self, settings: InputConfig):
        super().__init__()
        self.settings = frozen(settings)
        self.register_buffer("mean", torch.tensor(self.settings.pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.settings.pixel_std).view(3, 1, 1), persistent=False)

    def normalize(self, image: Tensor) -> Tensor:
        if self.settings.pixel_scale != 1.0:
            image = image * self.settings.pixel_scale
        if self.settings.channel_order == "BGR":
            image = image.flip(0)
        return (image - self.mean) / self.std

    def resize(self, image: Tensor, min_size: int) -> Tensor:
        scale = resize_scale(tuple(image.shape[-2:]), min_size, self.settings.max_size)
        graph = torch.jit.is_tracing() or torch.compiler.is_compiling()  # keep the op in a graph
        if isinstance(scale, float) and scale == 1.0 and not graph:
            return image  # bilinear at scale 1 samples every pixel at its own centre: the identity
        return F.interpolate(image[None], scale_factor=scale, mode="bilinear",
                             recompute_scale_factor=True, align_corners=False)[0]

    def pad(self, images: list[Tensor]) -> Tensor:
        """Zero-pad to a common size, a multiple of ``size_divisibility``, at the bottom right.

        In training under DistributedDataParallel the size is that of the largest image of the
        global batch, on every process (``fpn.model.across_processes``), as one process pads it.
        """
        div = self.settings.size_divisibility
        height, width = max(img.shape[1] for img in images), max(img.shape[2] for img in images)
        if self.training:
            height, width = largest_across_processes(height, width, device=images[0].device)
        height, width = padded_size(height, div), padded_size(width, div)
        batch = images[0].new_zeros((len(images), 3, height, width))
        for i, img in enumerate(images):
            batch[i, :, : img.shape[1], : img.shape[2]].copy_(img)
        return batch

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None, *,
        proposals: list[Tensor] | None = None, min_size: int | None = None,
    ) -> tuple[ImageBatch, list[dict[str, Tensor]] | None]:
        """Normalise and resize every image (and its target boxes and given proposals), then pad.

        Target ``masks`` stay in the original pixels: the segment-proposal head maps its regions
        back to them instead of resizing every full mask (docs/paper.md §5).

        In training the shorter side is drawn from ``min_size_train`` per image (``training_size``);
        in eval it is ``min_size_test``. ``min_size`` replaces either (one scale of an image pyramid).
        """
        if proposals is not None and len(proposals) != len(images):
            raise ValueError(f"{len(proposals)} proposal sets for {len(images)} images")
        for i, img in enumerate(images):
            if img.dim() != 3 or img.shape[0] != 3:
                raise ValueError(f"image {i}: expected a 3 x H x W tensor, got shape {tuple(img.shape)}")
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        resized, new_targets = [], [] if targets is not None else None
        for i, img in enumerate(images):
            if min_size is not None:
                shorter = min_size
            elif self.training:
                target = targets[i] if targets is not None else None
                shorter = training_size(self.settings.min_size_train, target)
            else:
                shorter = self.settings.min_size_test
            img = self.resize(self.normalize(img), shorter)
            resized.append(img)
            if targets is not None:
                new_targets.append(_rescale_target(targets[i], original_sizes[i], tuple(img.shape[-2:])))
        sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in resized]
        if proposals is not None:
            proposals = [rescale_boxes(boxes.to(torch.float32), from_hw, to_hw)
                         for boxes, from_hw, to_hw in zip(proposals, original_sizes, sizes, strict=True)]
        return ImageBatch(self.pad(resized), sizes, original_sizes, proposals), new_targets


def training_size(sizes: list[int], target: dict | None) -> int:
    """The shorter side drawn for one training image: from the image's own random stream when its
    target carries a ``sample_seed`` (so the draw does not depend on which images share its batch
    or its process: N processes draw what one does), else from Python's global one."""
    if len(sizes) == 1:
        return sizes[0]
    seed = target.get("sample_seed") if target is not None else None
    return (random if seed is None else random.Random(int(seed))).choice(sizes)


def _rescale_target(target: dict[str, Tensor], from_hw: tuple[int, int], to_hw: tuple[int, int]
                    ) -> dict[str, Tensor]:
    target = dict(target)
    for key in TARGET_BOX_KEYS:
        if key in target:
            target[key] = rescale_boxes(target[key].to(torch.float32), from_hw, to_hw)
    return target
