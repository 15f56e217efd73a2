"""Shared fixtures: a tiny synthetic dataset and a tiny, fast configuration of the detector."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_configure(config) -> None:
    """Under pytest-xdist (``scripts/test.sh`` runs two workers) each worker gets its share of the
    cores, as do the subprocesses its tests start: two workers of all the cores each would fight
    for them (OpenMP threads spin while they wait)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# ResNet-18 at width 8, d = 32, 96-px images: the paper's architecture at a size that trains in
# a fraction of a second per step on a CPU.
TINY_MODEL = [
    "model.backbone.depth=18", "model.backbone.width=8", "model.backbone.norm=gn",
    "model.backbone.freeze_at=0", "model.neck.channels=32", "model.roi_heads.fc_dim=64",
    "model.input.min_size_train=[96]", "model.input.min_size_test=96", "model.input.max_size=96",
    "model.rpn.batch_size_per_image=64", "model.roi_heads.batch_size_per_image=64",
    "model.rpn.pre_nms_top_n_train=300", "model.rpn.post_nms_top_n_train=100",
    "model.rpn.pre_nms_top_n_test=300", "model.rpn.post_nms_top_n_test=100",
    "model.rpn.anchors.sizes={p2: [8], p3: [16], p4: [32], p5: [64], p6: [128]}",
]


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory):
    """A 6 + 3 image synthetic benchmark at 96 px (COCO format on disk)."""
    from fpn.data.synthetic import generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, num_train=6, num_val=3, image_size=96, seed=1, progress=False)
    return root


def data_overrides(root) -> list[str]:
    return [f"data.train_images={root}/train/images", f"data.train_annotations={root}/train/annotations.json",
            f"data.val_images={root}/val/images", f"data.val_annotations={root}/val/annotations.json",
            "data.num_workers=0"]


def assert_same_detections(want: dict, got: dict, box_tol: float, score_tol: float,
                           cut_tol: float | None = None, cap: int = 100) -> None:
    """``got`` holds ``want``'s detections up to float rounding, in any order.

    An untrained detector scores many boxes almost alike (adjacent scores 1e-8 apart), so rounding
    that differs between code paths or CPUs may swap neighbours in the ranking, and at the top-``cap``
    cut may swap which of two near-equal scores stays. So: the same count; every detection of
    ``want`` scored more than ``cut_tol`` (default ``score_tol``; give it about 10x the largest score
    difference the two paths show) above a full list's last score has a counterpart of the same label
    within ``box_tol`` px and ``score_tol``; and the sorted scores agree within ``score_tol``.
    """
    import torch

    from fpn.output_comparison import output_difference

    assert len(got["boxes"]) == len(want["boxes"]) > 0
    sure = torch.ones(len(want["scores"]), dtype=torch.bool)
    if len(want["scores"]) >= cap:
        sure = want["scores"] > want["scores"].min() + (score_tol if cut_tol is None else cut_tol)
    assert int(sure.sum()) >= len(sure) // 2, "too many near-equal scores at the cut for a comparison"
    clear = {k: want[k][sure] for k in ("boxes", "scores", "labels")}
    box_diff, score_diff, unmatched = output_difference([clear], [got], match_px=box_tol)
    assert unmatched == 0, f"{unmatched} of {int(sure.sum())} detections have no counterpart"
    assert score_diff <= score_tol, f"score difference {score_diff:.2e}"
    torch.testing.assert_close(got["scores"].sort().values, want["scores"].sort().values,
                               atol=score_tol, rtol=0)


def randomise_norm_statistics(module) -> None:
    """Seeded, non-trivial scales, shifts and running statistics for every (Frozen)BatchNorm2d: a
    fold or a fused path that ignores one of them then gives different numbers."""
    import torch
    from torchvision.ops.misc import FrozenBatchNorm2d

    g = torch.Generator().manual_seed(0)
    for m in module.modules():
        if isinstance(m, FrozenBatchNorm2d | torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.normal_(0, 0.1, generator=g)
            m.running_mean.normal_(0, 0.1, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)


def frozen_norm(*, weight: float, bias: float, mean: float, var: float):
    """A one-channel FrozenBatchNorm2d (eps 0) with the given affine and statistics, for folds by hand."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    norm = FrozenBatchNorm2d(1, eps=0.0)
    norm.weight.fill_(weight)
    norm.bias.fill_(bias)
    norm.running_mean.fill_(mean)
    norm.running_var.fill_(var)
    return norm


# The tiny detector with three named classes and a level mapper scaled down (canonical 32 px instead
# of 224) so that the RoIs of small test images land on several pyramid levels.
TINY_RUN = [*TINY_MODEL, "model.roi_heads.num_classes=3", "model.class_names=[circle, square, triangle]",
            "model.category_ids=[11, 12, 13]", "model.roi_heads.canonical_scale=32"]


def make_untrained_run(root, extra=()):
    """A run of the tiny detector with seeded random weights, laid out as ``fpn train`` writes one."""
    import torch

    from fpn.config.files import load_config
    from fpn.config.schema import Config, to_dict
    from fpn.engine.checkpoint import save_checkpoint
    from fpn.model.detector import FasterRCNN

    torch.manual_seed(0)
    model = FasterRCNN(load_config("demo", [*TINY_RUN, *extra]).model)
    save_checkpoint(root / "checkpoints", 0, model.state_dict(), None, to_dict(Config(model=model.cfg)))
    return root


def _coco_real() -> Path:
    """$FPN_COCO_REAL, else the first ``shared/data/coco-real-160`` beside the repository or one of
    the folders above it (a git worktree sits deeper than the checkout)."""
    if "FPN_COCO_REAL" in os.environ:
        return Path(os.environ["FPN_COCO_REAL"])
    repository = Path(__file__).resolve().parents[1]
    for folder in repository.parents:
        if (folder / "shared/data/coco-real-160").is_dir():
            return folder / "shared/data/coco-real-160"
    return repository.parent / "shared/data/coco-real-160"


# 160 real COCO photos with their annotations, kept outside the repository (never copied into
# it); tests that need real photos are skipped where it is absent.
COCO_REAL = _coco_real()


def coco_real_subset(out_dir, count: int = 0, *, first: int = 0, indices: list[int] | None = None):
    """An annotation file in ``out_dir`` for some photos of coco-real-160 (``count`` from the
    ``first`` in file order, or those at ``indices``), with their annotations and every category;
    the images stay where they are. Returns (images folder, annotation file)."""
    import json

    data = json.loads((COCO_REAL / "annotations.json").read_text())
    chosen = range(first, first + count) if indices is None else indices
    images = [data["images"][i] for i in chosen]
    ids = {img["id"] for img in images}
    subset = {"images": images, "categories": data["categories"],
              "annotations": [a for a in data["annotations"] if a["image_id"] in ids]}
    ann_file = Path(out_dir) / f"coco_real_{len(images)}_{'_'.join(map(str, chosen))[:40]}.json"
    ann_file.write_text(json.dumps(subset))
    return COCO_REAL / "images", ann_file
