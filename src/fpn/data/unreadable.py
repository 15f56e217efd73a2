"""Unreadable samples are reported, skipped and counted, in training and evaluation alike.

A missing, empty, truncated or non-image file raises ``DatasetError`` in a dataset; wrapped in
``SkippingUnreadable``, the sample becomes an ``Unreadable`` marker instead, ``collate_readable``
drops the markers from a batch and hands back their messages, and ``BadSampleCounter`` stops
the run with a summary once more than the allowed number were skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import Dataset

from fpn.errors import DatasetError, TooManyBadSamplesError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Unreadable:
    """Stands in a batch for a sample that could not be read; ``message`` names the file."""

    message: str


def load_or_unreadable(dataset: Dataset, index: int) -> Any:
    """``dataset[index]``, or an ``Unreadable`` marker (with a warning) if it cannot be read."""
    try:
        return dataset[index]
    except DatasetError as err:
        log.warning("skipping a bad sample: %s", err)
        return Unreadable(str(err))


class SkippingUnreadable(Dataset):
    """``dataset`` with unreadable samples turned into ``Unreadable`` markers."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return load_or_unreadable(self.dataset, index)


def collate_readable(batch: list) -> tuple[list, list, list[str]]:
    """(images, targets, messages of the unreadable samples dropped from this batch)."""
    good = [sample for sample in batch if not isinstance(sample, Unreadable)]
    bad = [sample.message for sample in batch if isinstance(sample, Unreadable)]
    return [s[0] for s in good], [s[1] for s in good], bad


@dataclass
class BadSampleCounter:
    """Counts skipped samples; past ``limit`` it raises ``TooManyBadSamplesError``."""

    limit: int
    limit_name: str = "train.max_bad_samples"
    count: int = 0
    messages: list[str] = field(default_factory=list)

    def add(self, messages: list[str] | int) -> None:
        if isinstance(messages, int):
            self.count += messages
        else:
            self.count += len(messages)
            self.messages += messages
        if self.count > self.limit:
            raise TooManyBadSamplesError(
                f"{self.count} sample(s) could not be read (limit {self.limit_name}={self.limit}); "
                "see the warnings above for the files")
