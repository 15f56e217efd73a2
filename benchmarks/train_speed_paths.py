"""Each training speed path alone against the plain modules: one process, steps interleaved.

    python benchmarks/train_speed_paths.py [--setting r50_512|demo] [--repeats 3]

Prints the median step time of each variant and its ratio to the plain modules
(``FasterRCNN.fast_training = False``). The variants share weights and the batch.
"""

from __future__ import annotations

import argparse

import torch

from fpn.bench.common import markdown_table
from fpn.bench.training import interleaved, optimizer_for, setting, train_step
from fpn.model.backbone import FoldsFrozenNorm
from fpn.model.detector import FasterRCNN
from fpn.model.roi_heads import MultiLevelRoIPooler


class ChannelsLastOnly(FasterRCNN):
    """Channels-last images without the fold and the sparse RoIAlign."""

    def features(self, images):
        return self.neck(self.backbone(images.contiguous(memory_format=torch.channels_last)))


def variant(model: FasterRCNN, name: str) -> FasterRCNN:
    model.fast_training = name == "all"
    if name == "channels-last":
        model.__class__ = ChannelsLastOnly
    for module in model.modules():
        if name == "fold" and isinstance(module, FoldsFrozenNorm):
            module.fold_frozen_norm = True
        if name == "sparse RoIAlign" and isinstance(module, MultiLevelRoIPooler):
            module.sparse_roi_align = True
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--setting", choices=["r50_512", "demo"], default="r50_512")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    build, batch, size = setting(args.setting)
    names = ["plain", "fold", "channels-last", "sparse RoIAlign", "all"]
    models = {name: variant(build(), name) for name in names}
    optimizers = {name: optimizer_for(m, size) for name, m in models.items()}
    steps = {name: (lambda name=name: train_step(models[name], optimizers[name], batch)) for name in names}
    timed = interleaved(steps, args.repeats)
    plain = timed["plain"].median
    rows = [[name, f"{t.median:.3f}", f"{t.median / plain:.2f}", f"{t.peak_mib:.0f}"]
            for name, t in timed.items()]
    print(markdown_table(["variant", "s/step", "ratio to plain", "peak MiB"], rows))


if __name__ == "__main__":
    main()
