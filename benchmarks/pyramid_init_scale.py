"""At initialisation, how large the pyramid's levels are and how much gradient reaches the backbone,
with the top-down pathway (Table 1 row c, FPN) and without it (row d, bottom-up pyramid).

The reproduction's miniature (``fpn.reproduction.plan.miniature``) on one synthetic batch of 4
images, seeded; used by reports/reproduction/discussion.md to explain why the top-down rows
train in a hotter regime than row (d) at the same learning rate.

    python benchmarks/pyramid_init_scale.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from fpn.bench.training import synthetic_batch
from fpn.model.detector import FasterRCNN
from fpn.reproduction.plan import FULL, ROWS
from fpn.reproduction.study import Reproduction


def main() -> None:
    images, targets = synthetic_batch(4)
    reproduction = Reproduction(Path(tempfile.mkdtemp()), FULL)
    print("| row | std of P2..P6 at init | gradient norm reaching stem, res2..res5 |")
    print("|---|---|---|")
    for row in (r for r in ROWS if r.name in ("table1_c", "table1_d")):
        cfg = reproduction.config(row, 0).model
        torch.manual_seed(0)
        model = FasterRCNN(cfg).train()
        batch, prepared = model.preprocess(images, [dict(t) for t in targets])
        features = model.features(batch.tensor)
        stds = ", ".join(f"{v.std().item():.2f}" for v in features.values())
        sum(model.heads(features, batch, prepared).values()).backward()
        squares: dict[str, float] = {}
        for name, param in model.backbone.named_parameters():
            if param.grad is not None:
                part = name.split(".")[0]
                squares[part] = squares.get(part, 0.0) + param.grad.pow(2).sum().item()
        norms = ", ".join(f"{v ** 0.5:.3f}" for v in squares.values())
        print(f"| {row.label} | {stds} | {norms} |")


if __name__ == "__main__":
    main()
