"""Anchors per pyramid level (docs/paper.md §2): one scale per level, three aspect ratios.

Shape shorthand: L levels, A anchors per cell, Hi x Wi the size of level i.
Flattening order is (level, y, x, anchor), the order torchvision and detectron2 use, so the
RPN head's outputs line up with these anchors after the permute in ``rpn.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def cell_anchors(sizes: list[float], aspect_ratios: list[float], round_to_int: bool) -> Tensor:
    """(A, 4) anchors centred on (0, 0), ratio-major: A = len(aspect_ratios) * len(sizes).

    An aspect ratio r = h / w keeps the area size²: h = size·√r, w = size/√r.
    """
    scales = torch.as_tensor(sizes, dtype=torch.float32)
    ratios = torch.as_tensor(aspect_ratios, dtype=torch.float32)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    widths = (w_ratios[:, None] * scales[None, :]).reshape(-1)
    heights = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    anchors = torch.stack([-widths, -heights, widths, heights], dim=1) / 2
    return anchors.round() if round_to_int else anchors


def grid_anchors(base_anchors: Tensor, feature_hw: tuple[int, int], stride_hw: tuple[int, int]) -> Tensor:
    """(Hi·Wi·A, 4) anchors of one level: ``base_anchors`` (A, 4) shifted to every cell corner."""
    height, width = feature_hw
    stride_h, stride_w = stride_hw
    device = base_anchors.device
    shifts_x = torch.arange(width, dtype=torch.int32, device=device) * stride_w
    shifts_y = torch.arange(height, dtype=torch.int32, device=device) * stride_h
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=2).reshape(-1, 1, 4)
    # (Hi·Wi, 1, 4) + (1, A, 4) -> (Hi·Wi·A, 4)
    return (shifts + base_anchors.reshape(1, -1, 4)).reshape(-1, 4)


class AnchorGenerator(nn.Module):
    """Anchors for a set of named levels, cached per (feature sizes, image size, device).

    Args:
        sizes_per_level: anchor sizes (square roots of areas) for each level, e.g.
            ``{"p2": [32], ..., "p6": [512]}``.
        strides: the declared stride of each level, e.g. ``{"p2": 4, ..., "p6": 64}``.
        aspect_ratios: h / w ratios, the same on every level.
        round_cell_anchors: round cell anchors to integers, as torchvision does.
        stride_from_feature_size: derive strides as padded_image_size // feature_size, as
            torchvision does (differs from the declared stride on P6 for odd P5 sizes).
        max_cached_sizes: how many distinct (feature sizes, image size, device) keys the cache
            holds before it is emptied; bounds memory when every image has its own size.
    """

    def __init__(
        self,
        sizes_per_level: dict[str, list[float]],
        strides: dict[str, int],
        aspect_ratios: list[float],
        *,
        round_cell_anchors: bool = True,
        stride_from_feature_size: bool = False,
        max_cached_sizes: int = 64,
    ):
        super().__init__()
        self.max_cached_sizes = max_cached_sizes
        self.levels = list(sizes_per_level)
        self.strides = {level: strides[level] for level in self.levels}
        self.stride_from_feature_size = stride_from_feature_size
        self._cell = {
            level: cell_anchors(sizes, aspect_ratios, round_cell_anchors)
            for level, sizes in sizes_per_level.items()
        }
        self._cache: dict[tuple, list[Tensor]] = {}

    def num_anchors_per_cell(self, level: str) -> int:
        return self._cell[level].shape[0]

    def forward(self, feature_hw: dict[str, tuple[int, int]], padded_hw: tuple[int, int],
                device: torch.device) -> list[Tensor]:
        """L x (Hi·Wi·A, 4) anchors in input-image pixels, one tensor per level."""
        exporting = torch.compiler.is_exporting()  # traced sizes are symbols: nothing to cache by
        key = (tuple(feature_hw[level] for level in self.levels), tuple(padded_hw), str(device))
        cached = None if exporting else self._cache.get(key)
        if cached is not None:
            return cached
        anchors = []
        for level in self.levels:
            hw = feature_hw[level]
            if self.stride_from_feature_size:
                stride_hw = (padded_hw[0] // hw[0], padded_hw[1] // hw[1])
            else:
                stride_hw = (self.strides[level], self.strides[level])
            anchors.append(grid_anchors(self._cell[level].to(device), hw, stride_hw))
        if exporting:
            return anchors
        if len(self._cache) > self.max_cached_sizes:  # many image sizes in a row: keep memory bounded
            self._cache.clear()
        self._cache[key] = anchors
        return anchors
