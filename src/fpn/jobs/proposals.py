"""Writing the proposals of a trained RPN for every image of a split (docs/paper.md §3, Table 2).

The file feeds Fast R-CNN on fixed proposals (``model.proposals=given`` with
``data.train_proposals`` / ``data.val_proposals``); its format is in ``fpn.data.proposals``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from fpn.data.proposals import ProposalWriter
from fpn.data.unreadable import BadSampleCounter
from fpn.errors import ConfigError
from fpn.jobs.datasets import build_dataset, val_loader
from fpn.jobs.evaluation import open_run

log = logging.getLogger(__name__)


@torch.inference_mode()
def run_proposals(checkpoint: str | Path, split: str, output: str | Path, overrides: list[str] | None = None,
                  *, progress: bool = True) -> dict[str, Any]:
    """Proposals of the run's RPN (test-time settings) for every readable image of ``split``.

    ``model.rpn.post_nms_top_n_test`` (overridable) proposals per image, best first, in each
    image's original pixels. Unreadable images are skipped (at most ``train.max_bad_samples``)
    and have no entry, so a Fast R-CNN config reading the file refuses that dataset by name.
    """
    if split not in ("train", "val"):
        raise ValueError(f"--split must be train or val, not {split!r}")
    cfg, detector, _ = open_run(checkpoint, overrides)
    if detector.model.rpn is None:
        raise ConfigError(f"{checkpoint}: this run has no RPN (model.proposals=given); proposals come "
                         "from a run of the RPN alone or of Faster R-CNN")
    dataset = build_dataset(cfg.data, split)
    metadata = {"checkpoint": str(checkpoint), "split": split,
                "images": cfg.data.train_images if split == "train" else cfg.data.val_images,
                "proposals_per_image": cfg.model.rpn.post_nms_top_n_test,
                "box_format": "xyxy, original image pixels"}
    skipped = BadSampleCounter(cfg.train.max_bad_samples)
    with ProposalWriter(output, metadata) as writer:
        loader = val_loader(dataset, workers=min(2, cfg.data.num_workers))
        for images, targets, bad in tqdm(loader, desc=f"proposals ({split})", disable=not progress,
                                         dynamic_ncols=True):
            skipped.add(bad)
            if not images:
                continue
            outputs = detector.model([img.to(detector.device) for img in images], return_proposals=True)
            for out, target in zip(outputs, targets, strict=True):
                writer.add(target["image_id"], out["proposals"], out["objectness"])
    if skipped.count:
        log.warning("%d unreadable image(s) have no proposals in %s", skipped.count, output)
    return {"path": Path(output), "images": len(dataset) - skipped.count, "skipped": skipped.messages}
