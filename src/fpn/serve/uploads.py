"""Uploaded bytes -> an image tensor, or a one-line reason why not (``UploadRejected``, an HTTP 4xx).

The checks run cheapest first: the request's size and type before its body is read (``UploadGuard``,
an ASGI middleware that also caps the body while it streams in), then the image's header (format,
width x height against a pixel limit) before any pixel is decoded, then the pixels themselves.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fpn.data.images import pil_to_tensor


class UploadRejected(HTTPException):
    """A bad upload: a 4xx status and a one-line ``detail`` (FastAPI sends it as ``{"detail": ...}``).

    An ``HTTPException``, so FastAPI passes it through its body parsing unchanged when the body
    cap fires in the middle of reading a multipart form.
    """


def decode_image(data: bytes, *, max_pixels: int) -> torch.Tensor:
    """Encoded image bytes -> 3 x H x W uint8, RGB, EXIF orientation applied (a third of the memory
    of floats while it waits in the queue; the detector takes either).

    Rejects: empty (400), not an image (400), more than ``max_pixels`` (413, read from the header
    before decoding, so a decompression bomb is never expanded), truncated or corrupt (400).
    """
    if not data:
        raise UploadRejected(400, "empty file: the 'image' field has no bytes")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:  # over 2x PIL's MAX_IMAGE_PIXELS: PIL refuses to open it
        bomb_limit = 2 * Image.MAX_IMAGE_PIXELS / 1e6
        raise UploadRejected(413, f"image too large: over {bomb_limit:.0f} megapixels, PIL's "
                                  f"decompression-bomb limit (the limit here: {max_pixels / 1e6:.1f})"
                             ) from err
    except UnidentifiedImageError as err:
        raise UploadRejected(400, f"not an image: no known image format in the {len(data)} bytes") from err
    width, height = image.size
    if width * height > max_pixels:
        raise UploadRejected(413, f"image too large: {width}x{height} = {width * height / 1e6:.1f} "
                                  f"megapixels, over the limit of {max_pixels / 1e6:.1f}")
    if width == 0 or height == 0:
        raise UploadRejected(400, f"empty image: {width}x{height} pixels")
    try:
        image.load()
        return _to_uint8(ImageOps.exif_transpose(image))
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UploadRejected(400, f"could not decode the {image.format} image: {reason}") from err


def _to_uint8(image: Image.Image) -> torch.Tensor:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit: scaled as fpn.data reads it
        return pil_to_tensor(image).mul_(255).round_().to(torch.uint8)
    pixels = np.asarray(image.convert("RGB")).copy()  # (H, W, 3)
    return torch.from_numpy(pixels).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)


class UploadGuard:
    """ASGI middleware for ``POST`` to ``paths``: multipart only (else 415), a non-empty body (else
    400) of at most ``max_bytes`` (else 413: at once from ``Content-Length``, or as soon as a
    streamed body passes the cap, so a 100 MB upload is never held in memory)."""

    def __init__(self, app: ASGIApp, *, paths: set[str], max_bytes: int):
        self.app = app
        self.paths = paths
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            return await self.app(scope, receive, send)
        rejected = self._check_headers(Headers(scope=scope))
        if rejected is not None:  # answered before a byte of the body is read
            response = JSONResponse({"detail": rejected.detail}, status_code=rejected.status_code)
            return await response(scope, receive, send)
        received = 0

        async def capped_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise UploadRejected(413, f"upload too large: over the limit of "
                                          f"{self.max_bytes / 2**20:.0f} MiB")
            return message

        await self.app(scope, capped_receive, send)

    def _check_headers(self, headers: Headers) -> UploadRejected | None:
        content_type = headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            return UploadRejected(415, f"expected a multipart/form-data upload with an 'image' field, got "
                                       f"content type {content_type or 'none'!r}")
        length = headers.get("content-length")
        if length is None:  # a chunked upload: capped while it streams
            return None
        if not length.isdigit():
            return UploadRejected(400, f"bad Content-Length {length!r}")
        if int(length) == 0:
            return UploadRejected(400, "empty body: upload an image as the multipart field 'image'")
        if int(length) > self.max_bytes:
            return UploadRejected(413, f"upload too large: {int(length) / 2**20:.1f} MiB, over the limit of "
                                       f"{self.max_bytes / 2**20:.0f} MiB")
        return None
