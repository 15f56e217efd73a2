"""Reading image files, for every dataset format and for ``fpn predict``: decoded pixels
(``read_image``) or only the size in the file's header (``header_hw``)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from fpn.errors import DatasetError

log = logging.getLogger(__name__)

# EXIF orientations that turn the stored picture by 90 degrees (width and height swap)
_QUARTER_TURNS = {5, 6, 7, 8}


def read_image(path: Path, expected_hw: tuple[int, int] | None = None) -> torch.Tensor:
    """A 3 x H x W float tensor in [0, 1], RGB, with the EXIF orientation applied.

    Annotation tools disagree on whether boxes refer to the stored pixels or to the upright
    photo. When the annotation file records the image size (``expected_hw``) and only the
    stored pixels have that size (a 90-degree EXIF rotation), the stored pixels are used, so
    that the boxes stay consistent with the pixels.
    """
    try:
        with Image.open(path) as img:
            img.load()
            upright = ImageOps.exif_transpose(img)
            stored_hw, upright_hw = (img.height, img.width), (upright.height, upright.width)
            if expected_hw and upright_hw != tuple(expected_hw) and stored_hw == tuple(expected_hw):
                log.warning("%s: EXIF rotation ignored: the annotations give the stored size %s",
                            path, stored_hw)
            else:
                img = upright
            return pil_to_tensor(img)
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file not found") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DatasetError(f"{path}: cannot decode the image ({err})") from None


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """A PIL image of any mode (greyscale, RGBA, palette, CMYK, 16-bit) -> 3 x H x W in [0, 1]."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit: scale 0..65535 to 0..255
        img = Image.fromarray((np.asarray(img, dtype=np.float64) / 257).clip(0, 255).astype(np.uint8))
    array = np.asarray(img.convert("RGB"), dtype=np.uint8)
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError("empty image")
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)


def header_hw(path: Path) -> tuple[int, int]:
    """(height, width) of an image file, upright, read from its header only."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            if img.getexif().get(0x0112) in _QUARTER_TURNS:  # 0x0112: the EXIF orientation tag
                width, height = height, width
            return height, width
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file not found") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DatasetError(f"{path}: cannot read the image's header ({err})") from None
