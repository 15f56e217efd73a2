"""A run's ``curves.png``: loss terms, learning rate and the evaluations' AP against the step,
drawn from the records of ``metrics.jsonl`` (``fpn.engine.metrics_log``'s ``CurvesSink`` redraws it).

Drawn with the evaluation pictures' helpers (``fpn.evaluation.plots``): matplotlib imported
inside them, the PNG written atomically, the pixel box of every panel returned.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fpn.evaluation.coco import AR_KEYS, BOX_KEYS, MASK_AR_KEYS
from fpn.evaluation.plots import Panel, class_colour, matplotlib_or_none, save_figure

# Evaluation numbers plotted against the step, in this order, when a run logs them.
CURVE_METRICS = [*BOX_KEYS[:3], "mAP_voc07", "mAP_voc12", *AR_KEYS[:2], *MASK_AR_KEYS[:3]]


def training_series(records: list[dict[str, Any]]) -> tuple[dict[str, list], dict[str, list]]:
    """``metrics.jsonl`` records -> (name -> [(step, value)] of the loss terms and lr, and of the
    evaluations' numbers of ``CURVE_METRICS``)."""
    train: dict[str, list] = {}
    evals: dict[str, list] = {}
    for record in records:
        step = record.get("step")
        if not isinstance(step, int):
            continue
        if isinstance(record.get("eval"), dict):
            for key in CURVE_METRICS:
                if isinstance(record["eval"].get(key), int | float):
                    evals.setdefault(key, []).append((step, float(record["eval"][key])))
            continue
        for key, value in record.items():
            if key not in ("step", "time") and isinstance(value, int | float):
                train.setdefault(key, []).append((step, float(value)))
    return train, evals


def plot_training_curves(records: list[dict[str, Any]], path: str | Path) -> dict[str, Panel] | None:
    """``path``: the loss terms (log scale, panel ``"losses"``), the learning rate (``"lr"``) and
    the evaluations' AP / AR (``"eval"``, percent) against the step. None without matplotlib."""
    plt = matplotlib_or_none()
    if plt is None:
        return None
    train, evals = training_series(records)
    fig, (losses, lr, scores) = plt.subplots(1, 3, figsize=(15, 4))
    fig.subplots_adjust(left=0.05, right=0.985, bottom=0.13, top=0.9, wspace=0.22)  # no layout pass
    for i, (name, points) in enumerate((k, v) for k, v in train.items() if k != "lr"):
        steps, values = zip(*points, strict=True)
        positive = [max(v, 1e-6) for v in values]
        losses.plot(steps, positive, label=name, linewidth=2.5 if name == "loss" else 1.2,
                    color="black" if name == "loss" else class_colour(i))
    losses.set(yscale="log", xlabel="step", title="loss terms")
    if train.get("lr"):
        steps, values = zip(*train["lr"], strict=True)
        lr.plot(steps, values, color=class_colour(3))
    lr.set(xlabel="step", title="learning rate")
    lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))  # short labels: 2e-4, not 0.0002000
    for i, (name, points) in enumerate(evals.items()):
        steps, values = zip(*points, strict=True)
        scores.plot(steps, [100 * v for v in values], marker="o", label=name, color=class_colour(i))
    scores.set(xlabel="step", ylabel="%", title="evaluation" if evals else "evaluation (none yet)")
    for ax in (losses, scores):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in (losses, lr, scores):
        ax.grid(alpha=0.3)
    return save_figure(plt, fig, Path(path), {"losses": losses, "lr": lr, "eval": scores}, tight=False)
