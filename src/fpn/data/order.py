"""The order in which training sees its data: seeded epochs, seeded flips, batches forever.

Resuming is exact because nothing here depends on history: the order of epoch ``e`` and the flip
of sample ``i`` are functions of (seed, epoch, index), and ``DataPosition`` (epoch, batches of
it consumed, bad samples skipped) is all a checkpoint needs to continue where a run stopped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from fpn.data.transforms import hflip
from fpn.data.unreadable import BadSampleCounter, Unreadable, collate_readable, load_or_unreadable
from fpn.errors import ConfigError, DatasetError

# Two large primes that spread (seed, epoch, index) over distinct random streams.
EPOCH_SALT = 1_000_003
SAMPLE_SALT = 1_000_033


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of an epoch's data order."""
    return seed * EPOCH_SALT + epoch


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's flip and of the model's anchor and RoI sampling for it."""
    return epoch_seed(seed, epoch) * SAMPLE_SALT + index


class EpochView(Dataset):
    """A training dataset seen through one epoch: a seeded order and seeded flips.

    Item ``i`` of epoch ``e`` is always the same sample with the same flip, whichever worker
    loads it, so a resumed run sees exactly the data the uninterrupted run would have.

    With ``world_size`` ranks, each global batch of ``global_batch`` samples is cut into equal
    consecutive shares, and rank ``r`` sees the r-th share of every batch: together the ranks
    see exactly the batches one process would.
    """

    def __init__(self, dataset: Dataset, seed: int, flip_prob: float, global_batch: int = 1,
                 rank: int = 0, world_size: int = 1):
        if global_batch % world_size:
            raise ConfigError(f"train.batch_size={global_batch} is not divisible by {world_size} processes")
        self.dataset = dataset
        self.seed = seed
        self.flip_prob = flip_prob
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.rank = rank
        self.epoch = 0
        self.order: list[int] = []
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        order = torch.randperm(len(self.dataset), generator=g).tolist()
        usable = len(order) // self.global_batch * self.global_batch  # whole global batches only
        share = [(i % self.global_batch) // self.local_batch for i in range(usable)]  # rank of position i
        self.order = [order[i] for i in range(usable) if share[i] == self.rank]

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int):
        index = self.order[i]
        sample = load_or_unreadable(self.dataset, index)  # a corrupt or missing image: report, skip
        if isinstance(sample, Unreadable):
            return sample
        image, target = sample
        seed = sample_seed(self.seed, self.epoch, index)
        g = torch.Generator().manual_seed(seed)
        if self.flip_prob > 0 and torch.rand((), generator=g).item() < self.flip_prob:
            image, target = hflip(image, target)
        target = {**target, "sample_seed": seed % 2**62}  # the model's anchor/RoI sampling
        return image, target


@dataclass
class DataPosition:
    """Where training is in its data: what a checkpoint stores to resume the same order."""

    epoch: int = 0
    index_in_epoch: int = 0  # batches of the current epoch already handed out
    bad_samples: int = 0  # unreadable samples skipped so far


def training_batches(view: EpochView, position: DataPosition, *, seed: int, max_bad_samples: int,
                     workers: int) -> Iterator[tuple[list, list]]:
    """(images, targets) batches forever, epoch after epoch, starting at ``position`` and
    advancing it as batches are handed out.

    Bad samples are dropped and counted; past ``max_bad_samples`` the run stops
    (``TooManyBadSamplesError``).
    """
    bad_samples = BadSampleCounter(max_bad_samples, count=position.bad_samples)
    while True:
        view.set_epoch(position.epoch)
        loader = DataLoader(view, batch_size=view.local_batch, shuffle=False, num_workers=workers,
                            collate_fn=collate_readable, drop_last=True, persistent_workers=False,
                            generator=torch.Generator().manual_seed(seed + position.epoch))
        if len(loader) == 0:
            raise DatasetError(f"the training set ({len(view.dataset)} images) is smaller than one batch "
                               f"({view.global_batch})")
        for i, (images, targets, bad) in enumerate(loader):
            if i < position.index_in_epoch:
                continue  # resumed mid-epoch: these batches were already used
            bad_samples.add(len(bad))
            position.bad_samples = bad_samples.count
            position.index_in_epoch += 1
            if images:  # else every sample of this batch was bad
                yield images, targets
        position.epoch += 1
        position.index_in_epoch = 0
