"""Each training speed path alone against the plain modules: one process, steps interleaved.

    python benchmarks/train_speed_paths.py [--setting r50_512|demo] [--repeats 3]

Prints the median step time of each variant and its ratio to the plain modules
(``FasterRCNN(cfg, fast_training=False)``). The variants share weights and the batch.
"""

from __future__ import annotations

import argparse

from fpn.bench.common import markdown_table
from fpn.bench.training import interleaved, optimizer_for, setting, train_step
from fpn.model.detector import FasterRCNN
from fpn.model.speed_paths import TrainingSpeedPaths

VARIANTS = {
    "plain": TrainingSpeedPaths.of(False),
    "fold": TrainingSpeedPaths(fold_frozen_norm=True, channels_last=False, sparse_roi_align=False),
    "channels-last": TrainingSpeedPaths(fold_frozen_norm=False, channels_last=True, sparse_roi_align=False),
    "sparse RoIAlign": TrainingSpeedPaths(fold_frozen_norm=False, channels_last=False, sparse_roi_align=True),
    "all": TrainingSpeedPaths(),
}


def variant(model: FasterRCNN, paths: TrainingSpeedPaths) -> FasterRCNN:
    """``model``'s weights in a detector built with only these speed paths."""
    twin = FasterRCNN(model.cfg, fast_training=paths)
    twin.load_state_dict(model.state_dict())
    return twin.train()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--setting", choices=["r50_512", "demo"], default="r50_512")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    build, batch, size = setting(args.setting)
    names = list(VARIANTS)
    models = {name: variant(build(), paths) for name, paths in VARIANTS.items()}
    optimizers = {name: optimizer_for(m, size) for name, m in models.items()}
    steps = {name: (lambda name=name: train_step(models[name], optimizers[name], batch)) for name in names}
    timed = interleaved(steps, args.repeats)
    plain = timed["plain"].median
    rows = [[name, f"{t.median:.3f}", f"{t.median / plain:.2f}", f"{t.peak_mib:.0f}"]
            for name, t in timed.items()]
    print(markdown_table(["variant", "s/step", "ratio to plain", "peak MiB"], rows))


if __name__ == "__main__":
    main()
