"""Proposal files: the fixed proposals of Fast R-CNN (docs/paper.md §3, Table 2), per image id.

``fpn proposals RUN --split val --output FILE`` writes one; ``data.train_proposals`` and
``data.val_proposals`` read them. One binary file, written and read image by image, so that a
100k-image set never has to be in memory at once, and compact (20 bytes a proposal).

Format (all integers int64 and floats float32, little-endian)::

    b"FPNPROP1"                                       8-byte magic
    per image, in the order written:
        image_id, count                               2 x int64
        boxes                                         count x 4 float32: x1, y1, x2, y2 in the
                                                      original image's pixels, best first
        objectness                                    count x float32, in [0, 1], decreasing
    index                                             num_images x 3 int64: image_id, offset of
                                                      the image's record, count
    metadata                                          UTF-8 JSON (what wrote it, for which data)
    trailer                                           index offset, num_images, metadata
                                                      offset, metadata length (4 x int64),
                                                      then b"FPNPEND1"

A reader seeks to the trailer, reads the index, then any image's proposals with one seek.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from fpn.errors import DatasetError, PathNotFoundError, output_dir

MAGIC, END_MAGIC = b"FPNPROP1", b"FPNPEND1"
_HEADER = struct.Struct("<qq")  # image_id, count
_TRAILER = struct.Struct("<qqqq8s")  # index offset, num_images, metadata offset, metadata length, magic


class ProposalWriter:
    """Streams proposals into ``path`` (written to a temporary file, renamed on ``close``)."""

    def __init__(self, path: str | Path, metadata: dict[str, Any] | None = None):
        self.path = Path(path)
        output_dir(self.path.parent)
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        self._file = self._tmp.open("wb")
        self._file.write(MAGIC)
        self._index: list[tuple[int, int, int]] = []
        self._seen: set[int] = set()
        self.metadata = dict(metadata or {})

    def add(self, image_id: int, boxes_xyxy: torch.Tensor, objectness: torch.Tensor) -> None:
        """One image's proposals: (P, 4) boxes in its original pixels and (P,) objectness."""
        image_id = int(image_id)
        if image_id in self._seen:
            raise ValueError(f"{self.path}: image id {image_id} written twice")
        boxes = boxes_xyxy.detach().to("cpu", torch.float32).numpy().reshape(-1, 4)
        scores = objectness.detach().to("cpu", torch.float32).numpy().reshape(-1)
        if len(boxes) != len(scores):
            raise ValueError(f"image {image_id}: {len(boxes)} boxes but {len(scores)} objectness values")
        self._index.append((image_id, self._file.tell(), len(boxes)))
        self._seen.add(image_id)
        self._file.write(_HEADER.pack(image_id, len(boxes)))
        self._file.write(boxes.astype("<f4").tobytes())
        self._file.write(scores.astype("<f4").tobytes())

    def close(self) -> Path:
        index_offset = self._file.tell()
        self._file.write(np.asarray(self._index, dtype="<i8").reshape(-1, 3).tobytes())
        meta = json.dumps({**self.metadata, "num_images": len(self._index),
                           "num_proposals": sum(c for _, _, c in self._index)}).encode()
        meta_offset = self._file.tell()
        self._file.write(meta)
        self._file.write(_TRAILER.pack(index_offset, len(self._index), meta_offset, len(meta), END_MAGIC))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> ProposalWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class ProposalFile:
    """Random access to a proposal file: ``file[image_id] -> (boxes (P, 4), objectness (P,))``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with self.path.open("rb") as f:
                if f.read(len(MAGIC)) != MAGIC or size < len(MAGIC) + _TRAILER.size:
                    raise DatasetError(f"{self.path}: not an fpn proposal file (written by `fpn proposals`)")
                f.seek(size - _TRAILER.size)
                index_offset, count, meta_offset, meta_length, end = _TRAILER.unpack(f.read(_TRAILER.size))
                if end != END_MAGIC:
                    raise DatasetError(f"{self.path}: truncated proposal file (no trailer)")
                f.seek(index_offset)
                index = np.frombuffer(f.read(count * 24), dtype="<i8").reshape(count, 3)
                f.seek(meta_offset)
                self.metadata = json.loads(f.read(meta_length).decode())
        except FileNotFoundError:
            raise PathNotFoundError(f"{self.path}: proposal file not found") from None
        except (struct.error, ValueError) as err:
            if isinstance(err, DatasetError):
                raise
            raise DatasetError(f"{self.path}: corrupt proposal file ({err})") from None
        self._where = {int(i): (int(offset), int(n)) for i, offset, n in index}

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, image_id: int) -> bool:
        return int(image_id) in self._where

    def image_ids(self) -> list[int]:
        return list(self._where)

    def __getitem__(self, image_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        offset, count = self._where[int(image_id)]
        with self.path.open("rb") as f:
            f.seek(offset + _HEADER.size)
            data = np.frombuffer(f.read(count * 20), dtype="<f4")
        boxes = torch.from_numpy(data[: count * 4].reshape(count, 4).copy())
        return boxes, torch.from_numpy(data[count * 4 :].copy())


class WithProposals(Dataset):
    """A detection dataset whose targets also carry the image's fixed ``proposals`` (best first).

    Every image of ``dataset`` must have an entry in the proposal file: a file written for another
    dataset is refused with the number of images it lacks. At most ``max_per_image`` proposals
    are kept per image (the file's best first).
    """

    def __init__(self, dataset: Dataset, proposal_file: str | Path, max_per_image: int, *, field: str = ""):
        self.dataset = dataset
        self.proposals = ProposalFile(proposal_file)
        self.max_per_image = max_per_image
        ids = dataset_image_ids(dataset)
        missing = [i for i in ids if i not in self.proposals]
        if missing:
            where = f" ({field})" if field else ""
            raise DatasetError(
                f"{self.proposals.path}{where}: {len(missing)} of the dataset's {len(ids)} images have no "
                f"proposals (first: image id {missing[0]}); was it written for another dataset or split?")

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, target = self.dataset[index]
        boxes, _ = self.proposals[target["image_id"]]
        return image, {**target, "proposals": boxes[: self.max_per_image]}

    def __getattr__(self, name: str):  # class names, images, to_coco_dict(), ... of the wrapped dataset
        if name in {"dataset", "proposals", "max_per_image"}:
            raise AttributeError(name)
        return getattr(self.dataset, name)


def dataset_image_ids(dataset: Dataset) -> list[int]:
    """The image ids of a dataset, without decoding its images."""
    if hasattr(dataset, "image_ids"):
        return [int(i) for i in dataset.image_ids()]
    raise TypeError(f"{type(dataset).__name__} does not list its image ids (needs an image_ids() method)")
