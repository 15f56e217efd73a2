"""The pictures of an evaluation (matplotlib), and the drawing helpers a run's ``curves.png`` shares.

- ``plot_pr_curves``: each class's precision against recall at IoU 0.5 and averaged over IoU
  .5:.95, straight from pycocotools' precision array (``PrecisionRecall``);
- ``plot_confusion_matrix``: the confusion matrix of ``fpn.evaluation.confusion``, each row
  coloured by its share of the row's objects, the counts written in the cells.

A run's training curves (``fpn.engine.training_curves``) are drawn with the same helpers:
``matplotlib_or_none``, ``save_figure``, ``class_colour`` and ``Panel``.

matplotlib is imported inside the functions: without it, ``matplotlib_or_none`` logs one line
and the callers skip their pictures. Every picture is written atomically (a temporary file
renamed over the old one), so a reader never sees half a PNG. Each function returns the pixel
box of every panel (``Panel``), so a caller (or a test) knows where a point of the data landed.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fpn.evaluation.confusion import ConfusionMatrix
from fpn.evaluation.per_class import PrecisionRecall
from fpn.visualize import PALETTE

log = logging.getLogger(__name__)

DPI = 100
MAX_LEGEND = 20  # more classes than this: the curves are drawn, the legend names only the mean
_warned = False


@dataclass
class Panel:
    """Where a panel's data lies in the saved picture: its pixel box (left, top, right, bottom;
    origin at the picture's top-left) and its data limits."""

    box: tuple[float, float, float, float]
    xlim: tuple[float, float]
    ylim: tuple[float, float]
    log_y: bool = False

    def pixel(self, x: float, y: float) -> tuple[int, int]:
        """The (column, row) of the data point (x, y) in the picture (linear axes, or log y)."""
        left, top, right, bottom = self.box
        if self.log_y:
            y, ylim = np.log10(y), (np.log10(self.ylim[0]), np.log10(self.ylim[1]))
        else:
            ylim = self.ylim
        fx = (x - self.xlim[0]) / (self.xlim[1] - self.xlim[0])
        fy = (y - ylim[0]) / (ylim[1] - ylim[0])
        return round(left + fx * (right - left)), round(bottom - fy * (bottom - top))


def matplotlib_or_none() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, or None (one warning per process) when it is missing."""
    global _warned
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        if not _warned:
            log.warning("no plots: they need matplotlib (pip install matplotlib)")
            _warned = True
        return None
    return plt


def _panel(fig: Any, ax: Any) -> Panel:
    """The pixel box of ``ax`` in ``fig`` as last drawn at ``DPI``."""
    x0, y0, x1, y1 = ax.get_window_extent().extents
    height = fig.get_size_inches()[1] * DPI
    return Panel((x0, height - y1, x1, height - y0), tuple(ax.get_xlim()), tuple(ax.get_ylim()),
                 log_y=ax.get_yscale() == "log")


def save_figure(plt: Any, fig: Any, path: Path, axes: dict[str, Any], *,
                tight: bool = True) -> dict[str, Panel]:
    """Lay out (``tight``: around the labels; else the figure's own margins), draw once, note
    where each panel is, write ``path`` atomically, close the figure. One rendering: the PNG is
    the drawn canvas's pixels (a training run draws its curves after every evaluation)."""
    from PIL import Image

    fig.set_dpi(DPI)
    if tight:
        fig.tight_layout()
    fig.canvas.draw()
    panels = {name: _panel(fig, ax) for name, ax in axes.items()}
    pixels = np.asarray(fig.canvas.buffer_rgba())
    plt.close(fig)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    Image.fromarray(pixels[..., :3]).save(partial, format="PNG")
    os.replace(partial, path)
    return panels


def class_colour(k: int) -> tuple[float, float, float]:
    """Class k (0-based)'s colour, the one ``fpn.visualize`` draws label k + 1 in, as matplotlib's RGB."""
    r, g, b = PALETTE[(k + 1) % len(PALETTE)]
    return r / 255, g / 255, b / 255


def plot_pr_curves(curves: PrecisionRecall, path: str | Path) -> dict[str, Panel] | None:
    """``path``: precision against recall per class, at IoU 0.5 (panel ``"iou50"``) and averaged
    over IoU .5:.95 (``"iou50_95"``), each class's AP in the legend, the mean over the classes in
    black. Classes without ground truth are left out. None without matplotlib."""
    plt = matplotlib_or_none()
    if plt is None:
        return None
    at_50 = int(np.argmin(np.abs(curves.iou_thresholds - 0.5)))
    valid = [k for k in range(len(curves.class_names)) if (curves.precision[:, :, k] > -1).all()]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.8), sharey=True)
    for ax, name, values in ((left, "IoU 0.5", curves.precision[at_50]),
                             (right, "IoU .5:.95 (mean)", curves.precision.mean(axis=0))):
        for k in valid:
            ax.plot(curves.recall, values[:, k], color=class_colour(k), linewidth=1.5, zorder=2,
                    label=f"{curves.class_names[k]} {100 * values[:, k].mean():.1f}")
        if valid:
            mean = values[:, valid].mean(axis=1)
            ax.plot(curves.recall, mean, color="black", linewidth=2.5, zorder=1,
                    label=f"all classes {100 * mean.mean():.1f}")
        ax.set(xlim=(0, 1), ylim=(0, 1.05), xlabel="recall", title=f"precision-recall, {name}")
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if len(valid) > MAX_LEGEND:
            handles, labels = handles[-1:], labels[-1:]
        if handles:
            ax.legend(handles, labels, fontsize=7, loc="lower left", title="AP", title_fontsize=7)
    left.set_ylabel("precision")
    return save_figure(plt, fig, Path(path), {"iou50": left, "iou50_95": right})


def plot_confusion_matrix(confusion: ConfusionMatrix, path: str | Path) -> dict[str, Panel] | None:
    """``path``: rows the ground truth, columns the detections, the background last in both; each
    cell coloured by its share of its row (white: none), its count written in it. Panel
    ``"matrix"``: cell (i, j) is centred on the data point (j, i). None without matplotlib."""
    plt = matplotlib_or_none()
    if plt is None:
        return None
    counts, labels = confusion.counts, confusion.labels
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = max(4.0, 0.45 * len(labels) + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the row's objects")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set(xlabel="detected as", ylabel="ground truth",
           title=f"confusion at score >= {confusion.score_thresh:g}, IoU >= {confusion.iou_thresh:g}")
    if len(labels) <= 30:
        for i, j in zip(*np.nonzero(counts), strict=True):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if shares[i, j] > 0.6 else "black")
    return save_figure(plt, fig, Path(path), {"matrix": ax})
