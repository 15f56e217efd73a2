"""Images as users hand them over: files and folders, PIL images, NumPy arrays, tensors.

Every form becomes the model's input, a 3 x H x W float tensor in [0, 1], RGB. Arrays and tensors
say their layout and range by their shape and dtype:

- ``uint8``: values 0..255;
- a float dtype: values in [0, 1] (checked: 0..255 floats or normalised images are refused);
- layout: H x W x 3 (NumPy's, PIL's and OpenCV's) or 3 x H x W (PyTorch's), told apart by the
  axis of length 3; H x W is greyscale. An array whose first and last axes both have length 3
  cannot be told apart and is refused. Channels are RGB (OpenCV's BGR arrays need
  ``array[..., ::-1]``).
- 4 dimensions: a batch of such images (N x H x W x 3 or N x 3 x H x W).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from fpn.data.images import pil_to_tensor
from fpn.errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}
# float images may stray this far outside [0, 1] (resampling overshoot) before they are refused
FLOAT_RANGE_SLACK = 0.01


class ImageInputError(UserError, ValueError):
    """An image handed to the detector whose type, layout or value range is not one it reads."""


def find_images(folder: str | Path) -> list[Path]:
    """The image files under ``folder`` (recursively, by suffix), sorted by path."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def is_batch(image: Any) -> bool:
    """A 4-D array or tensor: a batch of images."""
    return isinstance(image, np.ndarray | torch.Tensor) and image.ndim == 4


def pil_image_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image of any mode, its EXIF orientation applied -> 3 x H x W float in [0, 1]."""
    return pil_to_tensor(ImageOps.exif_transpose(image))


def array_image_tensor(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """One image as an array or tensor (module docstring) -> 3 x H x W float in [0, 1], RGB.

    The result stays on the input's device; a uint8 input is converted, a float one is checked.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(image)) if isinstance(image, np.ndarray) else image
    kind = "array" if isinstance(image, np.ndarray) else "tensor"
    shape = tuple(tensor.shape)
    if tensor.dtype != torch.uint8 and not tensor.is_floating_point():
        raise ImageInputError(f"an image {kind} of dtype {tensor.dtype} is not read: use uint8 (0..255) "
                              "or a float dtype (0..1)")
    if tensor.ndim == 2:
        tensor = tensor[None].expand(3, *shape)
    elif tensor.ndim == 3 and shape[0] == 3 and shape[-1] == 3:
        raise ImageInputError(f"an image {kind} of shape {shape} is ambiguous (H x W x 3 or 3 x H x W?): "
                              "pass a PIL image, or a tensor of another size")
    elif tensor.ndim == 3 and shape[-1] == 3:
        tensor = tensor.permute(2, 0, 1)
    elif not (tensor.ndim == 3 and shape[0] == 3):
        raise ImageInputError(f"an image {kind} of shape {shape} is not read: expected H x W x 3 or "
                              "3 x H x W (RGB), or H x W (greyscale)")
    if min(tensor.shape[1:]) == 0:
        raise ImageInputError(f"an image {kind} of shape {shape} is empty")
    if tensor.dtype == torch.uint8:
        return tensor.float().div_(255)
    low, high = float(tensor.min()), float(tensor.max())
    if low < -FLOAT_RANGE_SLACK or high > 1 + FLOAT_RANGE_SLACK:
        raise ImageInputError(f"a float image {kind} must hold values in [0, 1]; this one spans "
                              f"[{low:.3g}, {high:.3g}] (0..255 floats: divide by 255, or pass uint8; "
                              "normalised images: undo the normalisation)")
    return tensor.float().clamp(0, 1)
