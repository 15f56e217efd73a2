"""The evidence each table's schedule is chosen from: a learning-rate sweep and evaluation curves.

For a table, two rows (FPN and the baseline strongest in the previous study, ``CALIBRATED_ROWS``)
are trained from the pre-trained backbone at each learning rate of ``RATES`` (the paper's rate
scaled linearly to the batch, x2 and x4: docs/paper.md §6) for ``LENGTH`` steps at a constant
rate after the warm-up, evaluated every ``EVERY`` steps (seed 0) on the benchmark's calibration
split: a random stream of its own, so no schedule is chosen on the images the report scores. Two rules,
applied by code, then turn the curves into the table's schedule:

- **rate**: the smallest whose last two evaluations, averaged over both rows, are within
  ``TOLERANCE`` (one point of AP or AR) of the best rate's: a larger rate must buy more than a
  point, because two rows tolerating it does not mean every row of the table does (in the first
  full study Table 1's P2-only row diverged at 0.02, the rate the best-only rule had chosen, in
  two of three seeds);
- **length**: at that rate, the first evaluation at which both rows reach ``PLATEAU`` of their best
  value on the curve (rounded up to a hundred steps); the study then decays the rate x0.1 at 85%
  and 95% of it, as every row does.

One rate and one length per table, from two rows: no row gets its own tuning. The result is written
to ``OUTPUT/calibration/table{T}.json`` with a plot of the curves; ``fpn.reproduction.plan.FULL``
carries the chosen numbers, and says where they come from.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from fpn.config.schema import Config
from fpn.engine.run_folder import holds_a_run
from fpn.errors import ConfigError
from fpn.jobs.training import run_train
from fpn.reproduction.plan import FULL, QUICK, Row, row_named
from fpn.reproduction.study import (
    PROPOSAL_SOURCE,
    ROW_CONFIG,
    Reproduction,
    budget_for,
    config_text,
    eval_curve,
    recorded_differences,
    work_dir,
)

CALIBRATED_ROWS = {"1": ("c", "d"), "2": ("c", "d"), "3": ("c", "a")}
RATES = (0.005, 0.01, 0.02)  # per 4 images: the paper's 0.02 per 16, x1, x2, x4
LENGTH = {"1": 1200, "2": 1200, "3": 1200}
EVERY = {"1": 200, "2": 200, "3": 200}
PLATEAU = 0.95
TOLERANCE = 0.01  # a point of AP / AR: a larger rate must gain more than this to be chosen
METRIC = {"1": "AR@1000", "2": "AP", "3": "AP"}


def choose_schedule(curves: dict[str, dict[float, list[dict[str, float]]]], metric: str,
                    plateau: float = PLATEAU, tolerance: float = TOLERANCE) -> dict[str, Any]:
    """The rate and length the curves call for: ``curves[row][rate]`` is the list of evaluations.

    Returns the rate, the length, and per rate the end value (mean of the last two evaluations,
    averaged over the rows) the rate was chosen by (the module docstring's rules).
    """
    rates = sorted(set.intersection(*(set(by_rate) for by_rate in curves.values())))
    if not rates:
        raise ConfigError("no learning rate was trained for every calibrated row")
    end = {rate: sum(_end_value(curves[row][rate], metric) for row in curves) / len(curves) for rate in rates}
    best = max(end.values())
    rate = min(r for r in rates if end[r] >= best - tolerance)
    reached = []
    for row in curves:
        points = [(p["step"], p[metric]) for p in curves[row][rate] if metric in p]
        best = max(value for _, value in points)
        reached.append(next(step for step, value in points if value >= plateau * best))
    return {"rate": rate, "length": int(math.ceil(max(reached) / 100) * 100), "end_value": end,
            "plateau_step": dict(zip(curves, reached, strict=True))}


def _end_value(curve: list[dict[str, float]], metric: str) -> float:
    values = [p[metric] for p in curve if metric in p][-2:]
    return sum(values) / len(values)


def calibration_config(study: Reproduction, row: Row, rate: float, length: int, every: int) -> Config:
    """One run of a sweep: the row's config at ``rate``, constant after the warm-up for ``length``
    steps, evaluated every ``every`` steps on the **calibration split** (its own random stream), never
    on the validation images the report scores."""
    cfg = study.config(row, 0, base_lr=rate)
    cfg.train.max_iter, cfg.train.lr_steps, cfg.train.eval_period = length, [], every
    cfg.train.checkpoint_period = every
    cfg.data.val_images, cfg.data.val_annotations = study.split_paths("calibration")
    if cfg.data.val_proposals:  # Table 2: the FPN RPN's proposals of the calibration images
        cfg.data.val_proposals = str(Path(cfg.data.val_proposals).with_name("calibration.proposals"))
    return cfg


def run_calibration(table: str, *, data_seed: int = 0, output: str | Path = "reports/reproduction",
                    work: str | Path = "runs/reproduction", device: str = "auto", quick: bool = False,
                    retrain_stale: bool = False, progress=print) -> Path:
    """Train the sweep of ``table`` (each run once; a killed sweep continues), choose, write, plot."""
    if table not in CALIBRATED_ROWS:
        raise ConfigError(f"--calibrate: table {table!r} has no calibration "
                         f"(tables: {', '.join(CALIBRATED_ROWS)})")
    budget = budget_for(quick=quick, seeds=None, data_seed=data_seed)
    study = Reproduction(work_dir(work, budget, quick), budget, device, progress, retrain_stale=retrain_stale)
    study.prepare_data()
    study.set_aside(study.stale([]))  # a stale pre-training, with every run started from it
    study.pretrain()
    length = 2 if quick else LENGTH[table]
    every = 1 if quick else EVERY[table]
    curves: dict[str, dict[float, list]] = {}
    start = time.perf_counter()
    for key in CALIBRATED_ROWS[table]:
        row = row_named(f"table{table}_{key}")
        for rate in RATES:
            run_dir = study.out_dir / "calibration" / f"{row.name}_lr{rate}"
            cfg = calibration_config(study, row, rate, length, every)
            if run_dir.is_dir():
                differences = recorded_differences(run_dir, cfg)
                study.set_aside({run_dir: differences} if differences else {})
            if not (run_dir / "done").is_file():
                if table == "2":  # Table 2 reads the proposals of Table 1's FPN RPN
                    study.ensure(row_named(PROPOSAL_SOURCE), 0)
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / ROW_CONFIG).write_text(config_text(cfg))
                run_train(cfg, run_dir, resume=holds_a_run(run_dir), progress=False)
                (run_dir / "done").write_text("")
            curves.setdefault(key, {})[rate] = eval_curve(run_dir)
            last = curves[key][rate][-1] if curves[key][rate] else {}
            progress(f"calibration table {table} {row.label} lr {rate}: {METRIC[table]} "
                     f"{last.get(METRIC[table], float('nan')):.3f} at step {last.get('step', 0)}")
    choice = choose_schedule(curves, METRIC[table])
    out_dir = Path(output) / "calibration"
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"table": table, "rows": list(CALIBRATED_ROWS[table]), "rates": list(RATES), "length": length,
              "every": every, "metric": METRIC[table], "plateau": PLATEAU, "tolerance": TOLERANCE,
              "choice": choice,
              "curves": {row: {str(rate): curve for rate, curve in by_rate.items()}
                         for row, by_rate in curves.items()},
              "seconds_this_invocation": time.perf_counter() - start,
              "budget_in_use": {"rate": (QUICK if quick else FULL).base_lr[table],
                                "iters": (QUICK if quick else FULL).iters[table]}}
    (out_dir / f"table{table}.json").write_text(json.dumps(record, indent=1))
    _plot(record, out_dir / f"table{table}.png")
    progress(f"table {table}: rate {choice['rate']}, length {choice['length']} "
             f"(plateau steps {choice['plateau_step']}); wrote {out_dir / f'table{table}.json'}")
    return out_dir / f"table{table}.json"


def _plot(record: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    metric = record["metric"]
    for row, by_rate in record["curves"].items():
        for rate, curve in by_rate.items():
            points = [(p["step"], p[metric] * 100) for p in curve if metric in p]
            style = "-" if row == "c" else "--"
            ax.plot(*zip(*points, strict=True), style, marker="o", markersize=3,
                    label=f"({row}) lr {rate}",
                    linewidth=2.2 if float(rate) == record["choice"]["rate"] else 1)
    ax.axvline(record["choice"]["length"], color="grey", linewidth=0.8)
    ax.set(xlabel="training step (constant rate after warm-up)", ylabel=f"{metric} (%)",
           title=f"Table {record['table']}: evaluation curves; chosen lr {record['choice']['rate']}, "
                 f"length {record['choice']['length']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
