"""Anchor coverage and Eq. 1's level shares of every row of Tables 1-3, before any training.

For the validation boxes of the reproduction's benchmark, under each row's miniature config: the
share of objects with an anchor at IoU >= 0.7 per COCO size bucket, and the share Eq. 1 sends to
each level; beside them the paper's own geometry (each row's preset at 800 px) on the real COCO
boxes of ../shared/data/coco-real-160 where it is at hand (``fpn.reproduction.geometry``). No
training: anchors and boxes only. ``fpn reproduce`` writes the same tables into its report.

    python benchmarks/anchor_coverage.py                                  # a fresh draw of FULL's val split
    python benchmarks/anchor_coverage.py --data runs/reproduction/full-data0/data   # a study's data
    python benchmarks/anchor_coverage.py --geometry scaled --image-size 256         # the first studies'
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from fpn.data import synthetic
from fpn.hardware import machine_summary
from fpn.reproduction.geometry import annotated_boxes, geometry_tables, markdown, reference_boxes
from fpn.reproduction.plan import FULL, ROWS
from fpn.reproduction.study import Reproduction


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None,
                        help="a study's data folder (default: draw FULL's validation split anew)")
    parser.add_argument("--geometry", default=FULL.geometry, choices=["paper", "scaled"])
    parser.add_argument("--image-size", type=int, default=FULL.image_size)
    parser.add_argument("--images", type=int, default=FULL.val_images, help="validation images to draw")
    parser.add_argument("--seed", type=int, default=0, help="the data seed")
    args = parser.parse_args()
    budget = replace(FULL, geometry=args.geometry, image_size=args.image_size, data_seed=args.seed)
    work = Path(tempfile.mkdtemp())
    data = args.data
    if data is None:
        data = work / "data"
        start = time.perf_counter()
        synthetic.generate(data, num_train=0, num_val=args.images, image_size=args.image_size, seed=args.seed,
                           variant=budget.variant, geometry=args.geometry, progress=False)
        print(f"drew {args.images} validation images of {args.image_size} px ({args.geometry} geometry, "
              f"seed {args.seed}) in {time.perf_counter() - start:.0f} s")
    study = Reproduction(work, budget)
    rows = [row for row in ROWS if row.table in "123"]
    tables = geometry_tables({row.name: study.config(row, 0).model for row in rows},
                             annotated_boxes(data / "val" / "annotations.json"),
                             presets={row.name: row.preset for row in rows}, reference=reference_boxes())
    print(f"{tables['objects']['ours']} validation objects; {machine_summary()}\n")
    print("\n".join(markdown(tables, {row.name: f"Table {row.table} {row.label}" for row in rows})))


if __name__ == "__main__":
    main()
