"""``fpn pretrain``: a backbone of one's own, pre-trained as a classifier of object crops.

The paper's detectors start from ImageNet weights (docs/paper.md §6). A backbone no one has
published weights for (a narrow ResNet-18 for a CPU, say) can get a comparable start from the
detection data itself: crops of its training objects with context, and of background, each
classified by a linear layer on C5 (``fpn.model.classifier``). Held-out images (never trained
on) measure the accuracy. The result is an fpn run that holds only ``backbone.*`` weights, so
``fpn train --init RUN`` starts a detector from it (docs/pretraining.md).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from fpn.config.schema import Config, to_dict
from fpn.data.crops import ObjectCrops
from fpn.engine.checkpoint import save_checkpoint
from fpn.engine.pretrain import evaluate_classifier, train_classifier
from fpn.engine.rng import seed_everything
from fpn.errors import ConfigError, DatasetError
from fpn.hardware import resolve_device
from fpn.jobs.datasets import build_dataset
from fpn.model.classifier import BackboneClassifier
from fpn.model.preprocess import Preprocessor

RESULT = "pretrain.json"


def split_images(count: int, held_out: float, seed: int) -> tuple[list[int], list[int]]:
    """(training images, held-out images): a seeded random ``held_out`` share is held out."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    held = max(1, round(held_out * count)) if held_out > 0 else 0
    if count - held < 1:
        raise ConfigError(f"pretrain.held_out={held_out} leaves no image of {count} to train on")
    return sorted(order[held:]), sorted(order[:held])


def run_pretrain(cfg: Config, out_dir: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Pre-train ``cfg.model.backbone`` on crops of ``cfg.data``'s training set; write the run.

    Returns the held-out accuracy (and the majority class's share beside it), the classes, the
    loss log and the seconds taken; the same is written to ``out_dir/pretrain.json``.
    """
    out_dir = Path(out_dir)
    pcfg = cfg.pretrain
    dataset = build_dataset(cfg.data, "train")
    train_images, held_images = split_images(len(dataset), pcfg.held_out, pcfg.seed)
    options = {"crop_size": pcfg.crop_size, "context": tuple(pcfg.context),
               "background_per_object": pcfg.background_per_object}
    train_crops = ObjectCrops(dataset, train_images, seed=pcfg.seed, **options)
    if not len(train_crops):
        raise DatasetError(f"{cfg.data.train_annotations}: no objects to pre-train on")
    classes = ["background", *dataset.class_names]
    seed_everything(pcfg.seed)
    model = BackboneClassifier(cfg.model.backbone, num_classes=len(classes))
    device = resolve_device(cfg.train.device)
    normalize = _normalizer(cfg, device)
    start = time.perf_counter()
    log = train_classifier(model, train_crops, pcfg, normalize=normalize, device=device,
                           workers=cfg.data.num_workers, progress=progress)
    seconds = time.perf_counter() - start
    held = {}
    if held_images:
        held_crops = ObjectCrops(dataset, held_images, seed=pcfg.seed + 1, **options)
        held = evaluate_classifier(model, held_crops, normalize=normalize, device=device)
    result = {"held_out": held, "classes": classes, "train_images": len(train_images),
              "held_out_images": len(held_images), "train_crops": len(train_crops), "seconds": seconds,
              "log": log}
    weights = {key: value.cpu() for key, value in model.backbone_state_dict().items()}
    save_checkpoint(out_dir / "checkpoints", pcfg.iters, weights, None, to_dict(cfg))
    (out_dir / RESULT).write_text(json.dumps(result, indent=1))
    return result


def _normalizer(cfg: Config, device: torch.device):
    """The detector's own input normalisation (channel order, scale, mean, std), batched."""
    preprocess = Preprocessor(cfg.model.input).to(device)
    return lambda images: torch.stack([preprocess.normalize(image) for image in images])


def describe(result: dict[str, Any]) -> str:
    """One line: held-out accuracy against the majority class's share."""
    held = result["held_out"]
    if not held:
        return f"pre-trained on {result['train_crops']} crops (no held-out images)"
    return (f"held-out accuracy {held['accuracy']:.3f} on {held['crops']} crops of "
            f"{result['held_out_images']} images ({len(result['classes'])} classes with background; "
            f"the majority class is {held['majority']:.3f} of them)")
