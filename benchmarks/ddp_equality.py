"""How far 2 processes under torchrun are from 1 process on the same global batches, in float32 or
float64, on real photos (docs/distributed.md, "What cannot be equal").

    python benchmarks/ddp_equality.py [--steps 3] [--dtype float64] [--photos DIR] [key=value ...]

Trains the configuration of issue 25 (ResNet-18 at width 8 with GroupNorm, d = 32, every image
resized to at most 160 px and padded to 160 x 160, batch 4, lr 0.02 without warm-up) from the
same seed once in one process and once with ``torchrun --nproc_per_node 2`` (gloo, CPU), then
prints the largest difference between the two runs' parameters. Overrides change the config,
e.g. ``model.input.size_divisibility=32`` (each batch padded to its own largest image) or
``"model.input.min_size_train=[96,128]"`` (a scale drawn per image). In float64 the rounding that
float32 amplifies over the steps is out of the way: what remains is a real difference.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils.data import Dataset

PHOTOS = "shared/data/coco-real-160"


def default_photos() -> Path:
    """$FPN_COCO_REAL, else the first shared/data/coco-real-160 beside the repository or above it."""
    if "FPN_COCO_REAL" in os.environ:
        return Path(os.environ["FPN_COCO_REAL"])
    repository = Path(__file__).resolve().parents[1]
    found = [f / PHOTOS for f in repository.parents if (f / PHOTOS).is_dir()]
    return found[0] if found else repository.parent / PHOTOS


CONFIG = ["model.backbone.depth=18", "model.backbone.width=8", "model.backbone.norm=gn",
          "model.backbone.freeze_at=0", "model.neck.channels=32", "model.roi_heads.fc_dim=64",
          "model.input.min_size_train=[160]", "model.input.min_size_test=160", "model.input.max_size=160",
          "model.input.size_divisibility=160", "model.rpn.batch_size_per_image=64",
          "model.roi_heads.batch_size_per_image=512", "model.rpn.pre_nms_top_n_train=300",
          "model.rpn.post_nms_top_n_train=100", "model.rpn.anchors.sizes={p2: [8], p3: [16], p4: [32], "
          "p5: [64], p6: [128]}", "train.batch_size=4", "train.base_batch_size=4", "train.warmup_iters=0",
          "train.device=cpu", "train.checkpoint_period=100000", "data.num_workers=0",
          "data.horizontal_flip=0.5"]


class InDtype(Dataset):
    """The training set with its images in ``dtype`` (the model is converted to it too)."""

    def __init__(self, dataset: Dataset, dtype: torch.dtype):
        self.dataset, self.dtype = dataset, dtype

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, target = self.dataset[index]
        return image.to(self.dtype), target


def train_once(out: Path, steps: int, dtype: torch.dtype, photos: Path, overrides: list[str]) -> None:
    """One run (this process is one rank when torchrun started it)."""
    from fpn.config.files import load_config
    from fpn.engine.train import train
    from fpn.jobs.datasets import dataset_for, with_dataset_classes
    from fpn.jobs.training import new_model

    data = [f"data.{split}_{kind}={photos}/{where}" for split in ("train", "val")
            for kind, where in (("images", "images"), ("annotations", "annotations.json"))]
    cfg = load_config("demo", [*CONFIG, *data, f"train.max_iter={steps}", *overrides])
    train_set = dataset_for(cfg, "train")
    cfg = with_dataset_classes(cfg, train_set)
    model = new_model(cfg.model, cfg.train.seed).to(dtype)
    train(model, InDtype(train_set, dtype), cfg, out, progress=False)


def largest_difference(a: Path, b: Path) -> tuple[float, str]:
    from fpn.engine.checkpoint import latest_checkpoint, load_checkpoint

    first = load_checkpoint(latest_checkpoint(a / "checkpoints"))[0]
    second = load_checkpoint(latest_checkpoint(b / "checkpoints"))[0]
    return max(((first[k] - second[k]).abs().max().item(), k) for k in first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--photos", type=Path, default=default_photos(),
                        help="a COCO folder: images/ and annotations.json (default: coco-real-160)")
    parser.add_argument("--rank-run", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    if args.rank_run is not None:  # inside torchrun, or the single process
        train_once(args.rank_run, args.steps, dtype, args.photos, args.overrides)
        return
    work = Path(tempfile.mkdtemp(prefix="ddp_equality_"))
    common = [__file__, "--steps", str(args.steps), "--dtype", args.dtype, "--photos", str(args.photos),
              *args.overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, *common, "--rank-run", str(work / "one")], check=True, env=env)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    subprocess.run([*torchrun, *common, "--rank-run", str(work / "two")], check=True, env=env)
    gap, name = largest_difference(work / "one", work / "two")
    print(f"{args.steps} steps, {args.dtype}, {' '.join(args.overrides) or 'the issue-25 config'}: "
          f"largest parameter difference between 1 and 2 processes {gap:.2g} ({name})")


if __name__ == "__main__":
    main()
