"""The miniature's geometry measured before any training: anchor coverage and Eq. 1's level shares.

For every row of Tables 1-3, on the benchmark's validation boxes, under the row's own config: the
share of objects with an anchor at IoU >= 0.7 per COCO size bucket (``fpn.model.anchor_coverage``)
and the share of objects Eq. 1 maps to each level (``fpn.model.level_assignment``); beside them the
same numbers for the paper's own geometry (the preset unchanged, 800-px images) on real COCO boxes
(``../shared/data/coco-real-160`` where it is at hand). The report puts the two side by side: a
miniature whose anchors reach far fewer (or more) objects than the paper's distorts every RPN
comparison before any training (issue 34; reports/reproduction/discussion.md).

    python benchmarks/anchor_coverage.py --data WORK/full-data0/data   # the tables, in Markdown
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fpn.config.files import load_config
from fpn.config.schema import ModelConfig
from fpn.data.formats import open_path
from fpn.model.anchor_coverage import SIZE_BUCKETS, coverage
from fpn.model.level_assignment import level_shares

# Real COCO photographs beside the project (the developers' shared data; absent on a user's machine)
COCO_REFERENCE = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "coco-real-160"

Boxes = list[tuple[Tensor, Tensor, tuple[int, int]]]


def annotated_boxes(annotations: str | Path) -> Boxes:
    """``(boxes_xyxy (G, 4), areas (G,), (height, width))`` per image of a COCO file (images beside it
    in ``images/``), read through the data layer's checked records (``fpn.data.formats``): the
    objects (not crowd regions), and the ``area`` COCOeval buckets them by."""
    dataset = open_path(annotations)
    result = []
    for record in dataset.images:
        keep = record.objects()
        result.append((torch.from_numpy(record.boxes_xyxy[keep]).float(),
                       torch.from_numpy(record.areas[keep]).float(), record.image_hw()))
    return result


def size_shares(images: Boxes) -> dict[str, float]:
    """The share of objects in each of COCO's size buckets (by the annotation's area)."""
    areas = torch.cat([areas for _, areas, _ in images]) if images else torch.zeros(0)
    return {name: float(((areas >= low) & (areas < high)).float().mean()) if len(areas) else math.nan
            for name, (low, high) in SIZE_BUCKETS.items()}


def measure(cfg: ModelConfig, images: Boxes) -> dict[str, Any]:
    """Anchor coverage per bucket and, for a config with a box head's levels, Eq. 1's level shares."""
    measured = {"coverage": {name: c.as_dict() for name, c in coverage(images, cfg).items()},
                "anchors": {level: cfg.rpn.anchors.sizes[level] for level in cfg.rpn.levels}}
    if cfg.box_head:
        measured["levels"] = level_shares(((boxes, hw) for boxes, _, hw in images), cfg)
    return measured


def geometry_tables(row_configs: dict[str, ModelConfig], images: Boxes, *,
                    presets: dict[str, str] | None = None, reference: Boxes | None = None
                    ) -> dict[str, Any]:
    """``measure`` for every row on the benchmark's boxes and, with ``presets`` (row -> preset name)
    and ``reference`` boxes, for the paper's own preset on them: ``{"sizes", "rows": {row: {"ours",
    "paper"}}}``."""
    measured: dict[str, dict[str, Any]] = {}  # by what the numbers depend on: rows often share it

    def cached(cfg: ModelConfig, boxes: Boxes, side: str) -> dict[str, Any]:
        key = repr((side, asdict(cfg.rpn), asdict(cfg.input), asdict(cfg.roi_heads), cfg.box_head))
        if key not in measured:
            measured[key] = measure(cfg, boxes)
        return measured[key]

    rows: dict[str, Any] = {}
    for name, cfg in row_configs.items():
        rows[name] = {"ours": cached(cfg, images, "ours")}
        if presets and reference:
            rows[name]["paper"] = cached(load_config(presets[name]).model, reference, "paper")
    sides = {"ours": images, **({"paper": reference} if reference else {})}
    return {"sizes": {side: size_shares(boxes) for side, boxes in sides.items()},
            "objects": {side: sum(len(b) for b, _, _ in boxes) for side, boxes in sides.items()},
            "rows": rows}


def reference_boxes() -> Boxes | None:
    """The COCO reference's boxes, or None where the shared data is not beside the project."""
    path = COCO_REFERENCE / "annotations.json"
    return annotated_boxes(path) if path.is_file() else None


def markdown(tables: dict[str, Any], labels: dict[str, str]) -> Iterator[str]:
    """The coverage and level-share tables of ``geometry_tables`` in Markdown."""
    sizes = tables["sizes"]
    yield ("Objects by COCO size bucket (annotation area): ours "
           + " / ".join(f"{100 * v:.0f}%" for v in sizes["ours"].values())
           + (f", the COCO reference {' / '.join(f'{100 * v:.0f}%' for v in sizes['paper'].values())}"
              if "paper" in sizes else "") + " (small / medium / large).")
    yield ""
    yield ("| row | anchors at IoU >= 0.7: small / medium / large (ours) | the paper's geometry on COCO "
           "| Eq. 1 levels (ours) | the paper's geometry on COCO |")
    yield "|---|---|---|---|---|"
    for name, measured in tables["rows"].items():
        cells = []
        for key in ("coverage", "levels"):
            for side in ("ours", "paper"):
                if side not in measured or key not in measured[side]:
                    cells.append("-")
                    continue
                values = measured[side][key]
                if key == "coverage":
                    cells.append(" / ".join(f"{100 * values[b]['covered']:.0f}%"
                                            if values[b]["objects"] else "-" for b in SIZE_BUCKETS))
                else:
                    cells.append(", ".join(f"{level.upper()} {100 * share:.0f}%"
                                           for level, share in values.items()))
        yield f"| {labels.get(name, name)} | " + " | ".join(cells) + " |"
