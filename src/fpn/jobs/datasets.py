"""The datasets a config names, and the ground truth evaluation scores against."""

from __future__ import annotations

from torch.utils.data import DataLoader, Dataset, Subset

from fpn import distributed
from fpn.config.schema import Config, DataConfig
from fpn.data.dataset import DetectionDataset
from fpn.data.formats import open_split
from fpn.data.proposals import WithProposals
from fpn.data.unreadable import SkippingUnreadable, collate_readable
from fpn.errors import ConfigError


def build_dataset(data: DataConfig, split: str, *, masks: bool = False) -> DetectionDataset:
    """The train or val dataset the config names, in its ``data.format`` (``fpn.data.formats``);
    ``masks``: instance masks are needed (decoded for training, kept for mask AR)."""
    return open_split(data, split, masks=masks)


def dataset_for(cfg: Config, split: str) -> Dataset:
    """The dataset ``cfg`` trains or evaluates on: with its fixed proposals for Fast R-CNN."""
    segments = cfg.model.proposals == "segments"  # docs/paper.md §5: trained on instance masks
    dataset = build_dataset(cfg.data, split, masks=segments)
    if cfg.model.proposals != "given":
        return dataset
    field = f"data.{split}_proposals"
    path = getattr(cfg.data, f"{split}_proposals")
    if not path:
        raise ConfigError(f"{field}: required by model.proposals=given (write one with "
                          f"`fpn proposals RPN_RUN --split {split} --output FILE`)")
    count = cfg.model.rpn.post_nms_top_n_train if split == "train" else cfg.model.rpn.post_nms_top_n_test
    return WithProposals(dataset, path, count, field=field)


def with_dataset_classes(cfg: Config, dataset) -> Config:
    """Set the number of classes and their names and ids from the training set."""
    names = list(dataset.class_names)
    cfg.model.roi_heads.num_classes = len(names)
    cfg.model.class_names = names
    cfg.model.category_ids = [int(dataset.label_to_category_id[i + 1]) for i in range(len(names))]
    return cfg


def label_to_category_id(cfg: Config) -> dict[int, int]:
    """Label 1..K of the model -> the dataset's category id."""
    return {i + 1: cid for i, cid in enumerate(cfg.model.category_ids)}


def val_loader(dataset: Dataset, batch_size: int = 2, workers: int = 0) -> DataLoader:
    """In order, unreadable images skipped (batches of ``(images, targets, skipped messages)``).

    Under torchrun, rank r takes the batches r, r + world_size, ... of the batches one process
    would make: each image is padded with the same neighbours, so its detections are the same.
    """
    dist = distributed.info()
    if dist.enabled:
        starts = range(dist.rank * batch_size, len(dataset), dist.world_size * batch_size)
        dataset = Subset(dataset, [i for start in starts for i in range(start, min(start + batch_size,
                                                                                     len(dataset)))])
    return DataLoader(SkippingUnreadable(dataset), batch_size=batch_size, shuffle=False, num_workers=workers,
                      collate_fn=collate_readable)


def coco_ground_truth(dataset: DetectionDataset) -> dict:
    """What pycocotools evaluates against: the dataset's validated records in COCO form (never the
    annotation file read again)."""
    return dataset.to_coco_dict()
