"""The report of ``fpn reproduce``: tables beside the paper's, the paper's claims checked, plots.

Numbers are means over the seeds a row was trained with, ``±`` half the range (min to max)
where there are several; the paper's are single runs on COCO minival (docs/paper.md §4, §5).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from fpn.evaluation.coco import PROPOSAL_COUNTS

# The paper's numbers, in percent (Tables 1, 2, 3 and 6; arXiv 1612.03144v2).
PAPER = {
    "1": {"columns": ["AR@100", "AR@1000", "AR_s@1000", "AR_m@1000", "AR_l@1000"],
          "a": [36.1, 48.3, 32.0, 58.7, 62.2], "b": [36.3, 44.9, 25.3, 55.5, 64.2],
          "c": [44.0, 56.3, 44.9, 63.4, 66.2], "d": [37.4, 49.5, 30.5, 59.9, 68.0],
          "e": [34.5, 46.1, 26.5, 57.4, 64.7], "f": [38.4, 51.3, 35.1, 59.7, 67.6]},
    "2": {"columns": ["AP50", "AP", "AP_s", "AP_m", "AP_l"],
          "a": [54.7, 31.9, 15.7, 36.5, 45.5], "b": [52.9, 28.8, 11.9, 32.4, 43.4],
          "c": [56.9, 33.9, 17.8, 37.7, 45.8], "d": [44.9, 24.9, 10.9, 24.4, 38.5],
          "e": [54.0, 31.3, 13.3, 35.2, 45.3], "f": [56.3, 33.4, 17.3, 37.3, 45.6]},
    "3": {"columns": ["AP50", "AP", "AP_s", "AP_m", "AP_l"],
          "a": [53.1, 31.6, 13.2, 35.6, 47.1], "b": [51.7, 28.0, 9.6, 31.9, 43.1],
          "c": [56.9, 33.9, 17.8, 37.7, 45.8]},
    "6": {"columns": ["mask_AR@1000", "mask_AR_s@1000", "mask_AR_m@1000", "mask_AR_l@1000"],
          "5x5": [43.4, 32.5, 49.2, 53.7], "7x7": [43.5, 30.0, 49.6, 57.8], "dual": [45.7, 31.9, 51.5, 60.8]},
}
TITLES = {"1": "Table 1: the RPN alone (proposals)",
          "2": "Table 2: Fast R-CNN on the FPN RPN's fixed proposals",
          "3": "Table 3: Faster R-CNN, end to end",
          "6": "Table 6: segment proposals"}


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """{table: {row: {label, seeds, diverged, metric: (mean, half range)}}} over the seeds of each
    row; a seed whose training diverged counts in ``diverged``, not in the means."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in rows:
        grouped.setdefault((record["table"], record["row"]), []).append(record)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for (table, row), every in grouped.items():
        records = [r for r in every if "diverged" not in r]  # a diverged seed has no numbers
        keys = set.intersection(*(set(r["metrics"]) for r in records)) if records else set()
        stats = {"label": every[0]["label"], "seeds": len(records), "diverged": len(every) - len(records),
                 "train_minutes": statistics.mean(r["train_seconds"] for r in every) / 60}
        for key in keys:
            values = [r["metrics"][key] for r in records]
            stats[key] = (statistics.mean(values), (max(values) - min(values)) / 2)
        out.setdefault(table, {})[row] = stats
    return out


def _cell(stat: tuple[float, float] | None, percent: bool = True, digits: int = 1) -> str:
    if stat is None:
        return "-"
    mean, spread = stat
    factor = 100 if percent else 1
    text = f"{mean * factor:.{digits}f}"
    return text + (f" ± {spread * factor:.{digits}f}" if spread > 0 else "")


# The metric each table's gap to FPN (row c) is given in: AR@1000 for Table 1, AP for Tables 2 and 3.
GAP_METRIC = {"1": "AR@1000", "2": "AP", "3": "AP"}


def gap_to_fpn(table: str, key: str, summary: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """(ours, the paper's): row ``key`` minus FPN in the table's ``GAP_METRIC``, in points."""
    metric = GAP_METRIC[table]
    column = PAPER[table]["columns"].index(metric)
    ours = summary.get(key, {}).get(metric), summary.get("c", {}).get(metric)
    ours_text = f"{(ours[0][0] - ours[1][0]) * 100:+.1f}" if None not in ours else "-"
    paper = PAPER[table].get(key), PAPER[table].get("c")
    paper_text = f"{paper[0][column] - paper[1][column]:+.1f}" if None not in paper else "-"
    return ours_text, paper_text


def table_markdown(table: str, summary: dict[str, dict[str, Any]]) -> str:
    columns = PAPER[table]["columns"]
    short = [c.replace("@1000", "").replace("mask_", "mask ") for c in columns]
    extra = ["anchors/image", "s/image"] if table == "1" else ["s/image"]
    gap = ([f"{GAP_METRIC[table].replace('@1000', '')} - FPN ours", "paper"] if table in GAP_METRIC else [])
    header = ["row", "seeds", *[f"{c} ours" for c in short], *extra, *[f"{c} paper" for c in short], *gap]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, stats in summary.items():
        ours = [_cell(stats.get(c)) for c in columns]
        cost = [_cell(stats.get("seconds_per_image"), percent=False, digits=3)]
        if table == "1":
            cost.insert(0, _cell(stats.get("anchors_per_image"), percent=False, digits=0))
        paper = [f"{v:.1f}" for v in PAPER[table].get(key, [])] or ["-"] * len(columns)
        seeds = str(stats["seeds"]) + (f" ({stats['diverged']} diverged)" if stats.get("diverged") else "")
        gaps = list(gap_to_fpn(table, key, summary)) if table in GAP_METRIC else []
        lines.append("| " + " | ".join([stats["label"], seeds, *ours, *cost, *paper, *gaps]) + " |")
    return "\n".join(lines)


def paired(rows: list[dict[str, Any]], table: str, winner: str, loser: str, metric: str
           ) -> list[tuple[int, float]]:
    """(seed, metric of ``winner`` - metric of ``loser``) for every seed both rows were trained with."""
    by_seed: dict[tuple[str, int], float] = {}
    for record in rows:
        if record["table"] == table and metric in record["metrics"]:
            by_seed[(record["row"], record["seed"])] = record["metrics"][metric]
    seeds = sorted({seed for (row, seed) in by_seed if row == winner} & {seed for (row, seed) in by_seed
                                                                          if row == loser})
    return [(seed, by_seed[(winner, seed)] - by_seed[(loser, seed)]) for seed in seeds]


def _compare(summary, rows, table, metric, winner, losers) -> list[str]:
    """One line per comparison: the mean of the paired (same-seed) differences, their range, and
    whether every seed agrees in sign."""
    lines = []
    best = summary.get(table, {}).get(winner)
    for loser in losers:
        other = summary.get(table, {}).get(loser)
        if not best or not other or metric not in best or metric not in other:
            continue
        differences = [d * 100 for _, d in paired(rows, table, winner, loser, metric)]
        (m1, _), (m2, _) = best[metric], other[metric]
        if not differences:
            continue
        mean = statistics.mean(differences)
        verdict = "yes" if mean >= 0.05 else "no" if mean <= -0.05 else "equal"  # at the table's precision
        above, below = sum(d >= 0.05 for d in differences), sum(d <= -0.05 for d in differences)
        seeds, span = len(differences), f"{min(differences):+.1f} to {max(differences):+.1f}"
        if seeds == 1:
            spread = ", one seed"
        elif seeds in (above, below):
            spread = f"; the same sign in all {seeds} seeds ({span})"
        else:
            equal = seeds - above - below
            spread = f"; the seeds disagree: {above} above, {below} below, {equal} equal ({span})"
        lines.append(f"- Table {table}: {best['label']} {metric} above {other['label']}? {verdict} "
                     f"({m1 * 100:.1f} vs {m2 * 100:.1f}: {mean:+.1f} points paired by seed{spread})")
    return lines


def claims(summary: dict[str, dict[str, dict[str, Any]]], pyramid: dict[str, Any],
           rows: list[dict[str, Any]] | None = None) -> list[str]:
    """The paper's findings, each checked against the miniature's numbers (stated, never forced).

    Differences are paired by seed: seed k trains every row of a table with the same data order,
    flips and heads' initialisation, so the difference of two rows at one seed is a measurement
    of the designs, and their spread over the seeds is its uncertainty.
    """
    rows = rows or []
    lines = []
    for metric in ("AR@1000", "AR_s@1000"):
        lines += _compare(summary, rows, "1", metric, "c", ["a", "b", "d", "e", "f"])
    for metric in ("AP", "AP_s"):
        lines += _compare(summary, rows, "2", metric, "c", ["a", "b", "d", "e", "f"])
    for metric in ("AP", "AP_s"):
        lines += _compare(summary, rows, "3", metric, "c", ["a", "b"])
    fpn = summary.get("3", {}).get("c", {})
    for base in ("a", "b"):
        other = summary.get("3", {}).get(base, {})
        if all(k in fpn and k in other for k in ("AP_s", "AP_m", "AP_l")):
            gains = {k: (fpn[k][0] - other[k][0]) * 100 for k in ("AP_s", "AP_m", "AP_l")}
            largest = max(gains, key=gains.get)
            lines.append(f"- Table 3: FPN's gain over {other['label']} is largest on small objects? "
                         f"{'yes' if largest == 'AP_s' else 'no'} ("
                         + ", ".join(f"{k} {v:+.1f}" for k, v in gains.items()) + ")")
    lines += _compare(summary, rows, "6", "mask_AR@1000", "dual", ["5x5", "7x7"])
    pyramid_rows = pyramid.get("rows", {})
    names = list(pyramid_rows)
    if len(names) == 3:
        one, many, fpn_row = (pyramid_rows[n] for n in names)
        faster = fpn_row["seconds_per_image"] < many["seconds_per_image"]
        at_least = fpn_row["AP"] >= many["AP"]
        lines.append(f"- Image pyramid: FPN faster than {names[1]}? {'yes' if faster else 'no'} "
                     f"({fpn_row['seconds_per_image']:.3f} vs {many['seconds_per_image']:.3f} s/image, "
                     f"{many['seconds_per_image'] / fpn_row['seconds_per_image']:.1f}x); "
                     "at equal or better AP? "
                     f"{'yes' if at_least else 'no'} ({fpn_row['AP'] * 100:.1f} vs {many['AP'] * 100:.1f}; "
                     f"C5 at one scale {one['AP'] * 100:.1f})")
    return lines


def pyramid_markdown(pyramid: dict[str, Any]) -> str:
    lines = ["| detector | AP | AP_s | AP_m | AP_l | AR@1000 | s/image |", "|---|---|---|---|---|---|---|"]
    for name, m in pyramid.get("rows", {}).items():
        lines.append(f"| {name} | " + " | ".join(f"{m.get(k, float('nan')) * 100:.1f}" for k in (
            "AP", "AP_s", "AP_m", "AP_l", "AR@1000")) + f" | {m['seconds_per_image']:.3f} |")
    return "\n".join(lines)


def plot(summary: dict[str, dict[str, dict[str, Any]]], pyramid: dict[str, Any], out_dir: Path) -> list[str]:
    """The three figures; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, stats in summary.get("1", {}).items():
        counts = [n for n in PROPOSAL_COUNTS if f"AR@{n}" in stats]
        ax.plot(counts, [stats[f"AR@{n}"][0] * 100 for n in counts], marker="o", label=stats["label"],
                linewidth=2.5 if key == "c" else 1.2)
    ax.set(xscale="log", xlabel="proposals per image", ylabel="AR (%)", title="Table 1: AR against proposals")
    if summary.get("1"):
        ax.legend(fontsize=7)
    files.append(_save(fig, out_dir / "ar_vs_proposals.png"))

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, table, prefix in ((axes[0], "1", "AR"), (axes[1], "3", "AP")):
        rows = ("a", "b", "c")
        sizes = ["s", "m", "l"]
        keys = [f"{prefix}_{s}@1000" if prefix == "AR" else f"{prefix}_{s}" for s in sizes]
        present = [r for r in rows if r in summary.get(table, {})]
        width = 0.8 / max(1, len(present))
        for i, row in enumerate(present):
            stats = summary[table][row]
            ax.bar([j + i * width for j in range(3)], [stats[k][0] * 100 if k in stats else 0 for k in keys],
                   width, yerr=[stats[k][1] * 100 if k in stats else 0 for k in keys], label=stats["label"])
        ax.set_xticks([j + width * (len(present) - 1) / 2 for j in range(3)], ["small", "medium", "large"])
        ax.set(ylabel=f"{prefix} (%)", title=f"Table {table}: {prefix} by object size")
        if present:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not trained yet", ha="center", transform=ax.transAxes)
    files.append(_save(fig, out_dir / "by_object_size.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    points = [(f"T3 {s['label']}", s["seconds_per_image"][0], s["AP"][0])
              for s in summary.get("3", {}).values() if "AP" in s and "seconds_per_image" in s]
    points += [(f"{name} (seed 0)", m["seconds_per_image"], m["AP"])
               for name, m in pyramid.get("rows", {}).items()]
    for name, seconds, ap in points:
        ax.scatter(seconds * 1000, ap * 100)
        ax.annotate(name, (seconds * 1000, ap * 100), fontsize=7)
    ax.set(xlabel="ms per image (this CPU)", ylabel="AP (%)", title="Time against accuracy")
    files.append(_save(fig, out_dir / "time_vs_accuracy.png"))
    return files


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.name


# A hand-written discussion beside the report, kept when the report is regenerated.
DISCUSSION = "discussion.md"


def _setup_lines(result: dict[str, Any], budget: dict[str, Any], geometry: dict[str, Any]) -> str:
    held = result.get("pretraining", {}).get("held_out", {})
    geometry_name, calibration = budget.get("geometry", "scaled"), budget.get("calibration_images", 0)
    chosen_on = (f"{calibration} calibration images (a random stream of their own)" if calibration
                 else "the validation images")
    lines = [f"- **Benchmark**: `fpn synth --variant {budget['variant']} --geometry {geometry_name} "
             f"--seed {budget['data_seed']}` (docs/benchmarks.md), {budget['train_images']} training and "
             f"{budget['val_images']} validation images of {budget['image_size']} px; schedules chosen on "
             f"{chosen_on}."]
    if held:
        lines.append(f"- **Pre-trained backbone** (every row starts from it; frozen BatchNorm, stem and res2 "
                     f"fixed): held-out accuracy {held['accuracy'] * 100:.1f}% on {held['crops']} crops of "
                     f"{result['pretraining']['held_out_images']} pre-training images never trained on "
                     f"({len(result['pretraining']['classes'])} classes with background; the majority "
                     "class is "
                     f"{held['majority'] * 100:.1f}%); {budget['pretrain_iters']} steps, "
                     f"{result['pretraining']['seconds'] / 60:.1f} min.")
    fpn = geometry["rows"].get("table3_c", {}).get("ours", {})
    anchors = ", ".join(f"{level} {sizes[0]:.0f}" for level, sizes in fpn.get("anchors", {}).items())
    lines.append(f"- **Geometry** ({geometry_name}): FPN anchors {anchors} px, strides 4..64; "
                 "anchor coverage and Eq. 1's level shares of every row, beside the paper's geometry on real "
                 "COCO boxes, in the section below (measured before training).")
    return "\n".join(lines)


def geometry_section(geometry: dict[str, Any], labels: dict[str, str]) -> str:
    """The geometry, measured before any training (``fpn.reproduction.geometry``)."""
    from fpn.reproduction.geometry import markdown

    reference = ("the paper's geometry: each row's own preset at 800 px on the real COCO photographs of "
                 "`coco-real-160`" if "paper" in geometry["sizes"] else
                 "the paper's geometry: not measured (the COCO reference was not at hand)")
    return ("## The geometry, measured before training\n\nFor the validation objects: the share with an "
            "anchor at IoU >= 0.7 (the RPN's positive threshold) by COCO size, and the share Eq. 1 sends to "
            f"each level (rows with a box head); beside them, {reference}.\n\n"
            + "\n".join(markdown(geometry, labels)))


def write_report(result: dict[str, Any], out_dir: Path, *, command: str, wall_seconds: float, machine: str,
                 budget: dict[str, Any], geometry: dict[str, Any], labels: dict[str, str],
                 notes: str = "") -> Path:
    """README.md, results.json and the plots in ``out_dir``; ``geometry`` is
    ``fpn.reproduction.geometry.geometry_tables`` of the rows (``labels``: row name -> label)."""
    summary = summarise(result["rows"])
    (out_dir / "results.json").write_text(json.dumps(
        {"command": command, "wall_seconds": wall_seconds, "machine": machine, "budget": budget,
         "geometry": geometry, "pretraining": {k: v for k, v in result.get("pretraining", {}).items()
                                                 if k != "log"},
         "rows": result["rows"], "pyramid": result["pyramid"]}, indent=1))
    figures = plot(summary, result["pyramid"], out_dir)
    parts = [
        "# The paper's ablations in miniature",
        f"Made by `{command}` in {wall_seconds / 60:.0f} min on {machine}. Budget: "
        + ", ".join(f"{k} {v}" for k, v in budget.items()) + ". "
        "Every row of a table shares one schedule, one learning rate and the miniature transform of "
        "`src/fpn/reproduction/plan.py`; ours are means over the seeds (± half the range), in percent; "
        "the paper's are ResNet-50 on COCO minival. s/image: the model's forward time per image on "
        "this CPU, measured during evaluation in the same run.",
        _setup_lines(result, budget, geometry),
        geometry_section(geometry, labels),
    ]
    if notes:
        parts.append(notes)
    if (out_dir / DISCUSSION).is_file():
        parts.append(f"Where the miniature agrees with the paper and where it does not, and why: "
                     f"[{DISCUSSION}]({DISCUSSION}), written by hand for the run committed with it "
                     "(this README and results.json are regenerated by the command; it is not).")
    parts.append("## The paper's claims, checked\n\nDifferences are paired by seed (seed k gives every row "
                 "of a table the same data order, flips and heads' initialisation).\n\n"
                 + "\n".join(claims(summary, result["pyramid"], result["rows"])))
    for table in ("1", "2", "3", "6"):
        if table in summary:
            parts.append(f"## {TITLES[table]}\n\n{table_markdown(table, summary[table])}")
    if result["pyramid"].get("rows"):
        parts.append("## The featurized image pyramid (Fig. 1a) against FPN\n\n"
                     "Seed 0 of Table 3's C5 and FPN runs, on the same validation images; the pyramid "
                     "runs the C5 detector at every scale and merges the detections.\n\n"
                     + pyramid_markdown(result["pyramid"]))
    parts.append("## Figures\n\n" + "\n\n".join(f"![{name}]({name})" for name in figures))
    path = out_dir / "README.md"
    path.write_text("\n\n".join(parts) + "\n")
    return path
