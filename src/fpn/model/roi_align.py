"""RoIAlign as a sparse matrix product, for training on CPUs (docs/paper.md §3).

Every RoIAlign output is a fixed weighted sum of feature-map pixels: per bin, ``g x g`` sampling
points, each interpolated bilinearly from its 4 neighbours (g = ``sampling_ratio``). Written as
a sparse matrix W of shape (R·S·S, N·H·W) with 4·g² entries a row, the pooling is W @ F over the
channels-last feature map F (N·H·W, C), and its gradient is Wᵀ @ dY: two multithreaded sparse
products, where torchvision's CPU backward scatters one value at a time on one thread.

The weights follow torchvision's ``roi_align`` exactly (box scaling, the ``aligned`` half-pixel
offset, the minimum RoI size of 1 when not aligned, points beyond one pixel outside the map
counting as zeros, clamping at the borders), so the results agree to float rounding
(``tests/model/test_roi_align.py``). Only a fixed ``sampling_ratio`` > 0 is served; the adaptive one
(0) varies the number of points per RoI and stays with torchvision.

Shape shorthand: R RoIs, S x S output bins, g x g sampling points per bin, N images, C channels.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor
from torchvision.ops import roi_align


def _axis(coords: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Sample coordinates along one axis -> the two neighbour indices and their weights (..., 2).

    As torchvision's ``bilinear_interpolate``: beyond [-1, size] the point contributes nothing;
    negative coordinates are clamped to 0 and the last pixel takes both neighbours.
    """
    inside = (coords >= -1.0) & (coords <= size)
    coords = coords.clamp(min=0)
    low = coords.floor().long()
    at_end = low >= size - 1
    low = low.clamp(max=size - 1)
    high = torch.where(at_end, low, low + 1)
    coords = torch.where(at_end, low.to(coords.dtype), coords)
    frac = coords - low.to(coords.dtype)
    weights = torch.stack([1 - frac, frac], dim=-1) * inside[..., None]
    return torch.stack([low, high], dim=-1), weights


def bilinear_weights(rois: Tensor, feature_hw: tuple[int, int], output_size: int, spatial_scale: float,
                     sampling_ratio: int, aligned: bool) -> tuple[Tensor, Tensor]:
    """Column indices into the flattened (N·H·W) map and weights, (R·S·S, 4·g²) each.

    ``rois``: (R, 5) rows of (image index, x1, y1, x2, y2) in image pixels.
    """
    height, width = feature_hw
    size, g, dtype = output_size, sampling_ratio, rois.dtype
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (rois[:, i] * spatial_scale - offset for i in range(1, 5))
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:  # torchvision forces malformed RoIs to 1x1
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    steps = torch.arange(size, dtype=dtype, device=rois.device)
    within = (torch.arange(g, dtype=dtype, device=rois.device) + 0.5) / g
    grid = (steps[:, None] + within[None, :]).reshape(-1)  # (S·g,) in bins
    ys = y1[:, None] + grid[None, :] * (roi_h / size)[:, None]  # (R, S·g)
    xs = x1[:, None] + grid[None, :] * (roi_w / size)[:, None]
    y_index, y_weight = _axis(ys, height)  # (R, S·g, 2)
    x_index, x_weight = _axis(xs, width)
    r = rois.shape[0]
    # (R, S, g, 2) on y and (R, S, g, 2) on x -> (R, Sy, Sx, gy, gx, 2y, 2x)
    y_index = y_index.reshape(r, size, 1, g, 1, 2, 1)
    y_weight = y_weight.reshape(r, size, 1, g, 1, 2, 1)
    x_index = x_index.reshape(r, 1, size, 1, g, 1, 2)
    x_weight = x_weight.reshape(r, 1, size, 1, g, 1, 2)
    image = rois[:, 0].long().reshape(r, 1, 1, 1, 1, 1, 1)
    columns = image * (height * width) + y_index * width + x_index  # (R, S, S, g, g, 2, 2)
    weights = y_weight * x_weight / (g * g)  # the bin is the mean of its points
    return columns.reshape(r * size * size, 4 * g * g), weights.reshape(r * size * size, 4 * g * g)


class _SparseProduct(torch.autograd.Function):
    """W @ F with the gradient Wᵀ @ dY into F (W holds no gradient)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)  # no bf16 sparse kernel on the CPU
    def forward(ctx, features_flat: Tensor, matrix: Tensor, transposed: Tensor) -> Tensor:
        ctx.transposed = transposed
        return matrix @ features_flat

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None, None]:
        return ctx.transposed @ grad_output.to(ctx.transposed.dtype), None, None


def _csr(rows: Tensor, columns: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    """A CSR matrix from entries sorted by row (repeated columns within a row add up)."""
    counts = torch.bincount(rows, minlength=shape[0])
    crow = torch.zeros(shape[0] + 1, dtype=torch.int64, device=rows.device)
    crow[1:] = torch.cumsum(counts, 0)
    return torch.sparse_csr_tensor(crow, columns, values, shape, check_invariants=False)


def roi_align_sparse(features: Tensor, rois: Tensor, output_size: int, spatial_scale: float,
                     sampling_ratio: int, aligned: bool = False) -> Tensor:
    """torchvision's ``roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned)``.

    Args:
        features: (N, C, H, W), best in channels-last memory (then flattening is free).
        rois: (R, 5) rows of (image index, x1, y1, x2, y2) in image pixels.
        sampling_ratio: points per bin side, > 0.
    Returns:
        (R, C, S, S) pooled features.
    """
    if sampling_ratio <= 0:
        raise ValueError("roi_align_sparse needs a fixed sampling_ratio > 0")
    n, c, h, w = features.shape
    size = output_size
    columns, weights = bilinear_weights(rois.detach(), (h, w), size, spatial_scale, sampling_ratio, aligned)
    columns, weights = columns.reshape(-1), weights.reshape(-1).to(features.dtype)
    per_row = 4 * sampling_ratio ** 2
    rows = torch.arange(columns.numel(), device=columns.device) // per_row
    shape = (rois.shape[0] * size * size, n * h * w)
    order = torch.argsort(columns, stable=True)  # the transpose: entries sorted by column
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        matrix = _csr(rows, columns, weights, shape)
        transposed = _csr(columns[order], rows[order], weights[order], (shape[1], shape[0]))
        flat = features.permute(0, 2, 3, 1).reshape(n * h * w, c)  # (N·H·W, C): a view if channels-last
        pooled = _SparseProduct.apply(flat, matrix, transposed).to(features.dtype)  # (R·S·S, C)
    return pooled.reshape(-1, size, size, c).permute(0, 3, 1, 2)  # (R, C, S, S)


def roi_align_for_training(features: Tensor, rois: Tensor, output_size: int, spatial_scale: float,
                           sampling_ratio: int, aligned: bool = False) -> Tensor:
    """RoIAlign for training: the sparse product on the CPU with a fixed sampling ratio (its backward
    pass is multithreaded), torchvision's ``roi_align`` where that does not apply (a GPU, or the
    adaptive ratio 0). What ``FasterRCNN(fast_training=...)`` gives ``MultiLevelRoIPooler``."""
    if features.is_cpu and sampling_ratio > 0:
        return roi_align_sparse(features, rois, output_size, spatial_scale, sampling_ratio, aligned)
    return roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned)
