"""Video files in and out, frame by frame, through PyAV (FFmpeg's libraries; the ``video`` extra).

Frames come out as H x W x 3 uint8 RGB arrays; the annotated copy is written as H.264 in MP4
(MPEG-4 Part 2 where the FFmpeg build lacks libx264), at the input's average frame rate.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from fpn.errors import DatasetError, UserError

DEFAULT_FPS = Fraction(25)  # for a stream that declares no frame rate


class VideoSupportMissing(UserError, ImportError):
    """PyAV is not installed."""


def require_av() -> Any:
    """The ``av`` module, or a one-line error saying how to install it."""
    try:
        import av
    except ImportError:
        raise VideoSupportMissing("video files need PyAV: pip install 'fpn[video]' (or: pip install av)"
                                  ) from None
    return av


def video_info(path: str | Path) -> tuple[int, Fraction]:
    """(frame count as the container declares it, 0 when unknown; average frame rate)."""
    av = require_av()
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            return int(stream.frames or 0), Fraction(stream.average_rate or DEFAULT_FPS)
    except (av.FFmpegError, IndexError) as err:
        raise DatasetError(f"{path}: cannot read the video ({_first_line(err)})") from None


def read_frames(path: str | Path) -> Iterator[np.ndarray]:
    """The frames of the first video stream as H x W x 3 uint8 RGB arrays, in order."""
    av = require_av()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DatasetError(f"{path}: no video stream")
            for frame in container.decode(container.streams.video[0]):
                yield frame.to_ndarray(format="rgb24")
    except av.FFmpegError as err:
        raise DatasetError(f"{path}: cannot read the video ({_first_line(err)})") from None


class VideoWriter:
    """Frames (H x W x 3 uint8 RGB, all of one size) -> an MP4 file, written under a temporary
    name and renamed into place when closed without an error.

    Sizes must be even for the encoder's 4:2:0 chroma: an odd width or height gets one black
    column or row.
    """

    def __init__(self, path: str | Path, fps: Fraction, *, quality: int = 18):
        self.av = require_av()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp.mp4")
        self.container = self.av.open(str(self.tmp), "w")
        codec = "libx264" if "libx264" in self.av.codecs_available else "mpeg4"
        self.stream = self.container.add_stream(codec, rate=fps)
        self.stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            self.stream.options = {"crf": str(quality)}  # 18: visually lossless
        self.frames = 0

    def write(self, frame_rgb: np.ndarray) -> None:
        height, width = frame_rgb.shape[:2]
        if height % 2 or width % 2:
            frame_rgb = np.pad(frame_rgb, ((0, height % 2), (0, width % 2), (0, 0)))
        if self.frames == 0:
            self.stream.height, self.stream.width = frame_rgb.shape[:2]
        frame = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_rgb), format="rgb24")
        self.container.mux(self.stream.encode(frame))
        self.frames += 1

    def close(self, keep: bool = True) -> None:
        try:
            if keep and self.frames:
                self.container.mux(self.stream.encode(None))  # flush the encoder
        finally:
            self.container.close()
        if keep and self.frames:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close(keep=kind is None)


def _first_line(error: BaseException) -> str:
    lines = str(error).splitlines()
    return lines[0] if lines else type(error).__name__
