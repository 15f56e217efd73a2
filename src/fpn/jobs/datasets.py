"""The datasets a config names, and the ground truth evaluation scores against."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import DataLoader, Dataset, Subset

from fpn.config import Config, DataConfig
from fpn.data import CocoDetection, VOCDetection
from fpn.data.proposals import WithProposals
from fpn.data.unreadable import SkippingUnreadable, collate_readable
from fpn.engine import distributed
from fpn.errors import ConfigError, PathNotFoundError


def build_dataset(data: DataConfig, split: str, *, load_masks: bool = False) -> Dataset:
    """The train or val dataset the config names (COCO format or Pascal VOC); ``load_masks`` adds
    the COCO instance masks (polygons or RLE) to the targets."""
    match data.format:
        case "coco":
            images = data.train_images if split == "train" else data.val_images
            annotations = data.train_annotations if split == "train" else data.val_annotations
            for path, key in ((images, "images"), (annotations, "annotations")):
                if not Path(path).exists():
                    raise PathNotFoundError(f"{path}: not found (data.{split}_{key} in the config; "
                                            "`fpn synth DIR` makes the built-in benchmark)")
            return CocoDetection(images, annotations, load_masks=load_masks,
                                 on_bad_annotations=data.on_bad_annotations,
                                 allow_outside_image_paths=data.allow_outside_image_paths)
        case "voc":
            return VOCDetection(data.voc_root, split=split, class_names=data.voc_classes or None)
    raise ValueError(f"unknown data format {data.format!r}")


def dataset_for(cfg: Config, split: str) -> Dataset:
    """The dataset ``cfg`` trains or evaluates on: with its fixed proposals for Fast R-CNN."""
    segments = cfg.model.proposals == "segments"  # docs/paper.md §5: trained on instance masks
    if segments and cfg.data.format == "voc":
        raise ConfigError("model.proposals=segments needs instance masks and VOC has none here: "
                          "use COCO-format data (data.format=coco)")
    # evaluation scores against the annotation file itself: only training decodes the masks
    dataset = build_dataset(cfg.data, split, load_masks=segments and split == "train")
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


def coco_ground_truth(dataset):
    """What pycocotools evaluates against: the COCO file, or VOC converted to COCO."""
    if hasattr(dataset, "coco_gt"):
        return dataset.coco_gt()
    return dataset.to_coco_dict()
