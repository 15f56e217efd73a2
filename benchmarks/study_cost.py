"""What each run of a reproduction study costs on this machine, with pauses taken out.

A row's recorded ``seconds`` is wall time from start to end: it grows when the process is
stopped (a suspended laptop, ``kill -STOP``) or resumed after a kill. This reads each finished
run's metrics log instead: the median seconds per training step (between logged steps, so a
pause or a restart is one outlier interval, not the median) times the run's steps, plus the
median over the row's seeds of the final evaluation's time (one evaluation is one interval, so a
pause in it shows only against the other seeds). The estimate of the whole study is the sum of
those, divided by the runs trained side by side (``--jobs``), plus pre-training and the image
pyramid as recorded.
Used by reports/reproduction/discussion.md for the study's budget.

    python benchmarks/study_cost.py [--study runs/reproduction/full-data0] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

from fpn.engine.metrics_log import read_metrics


def run_cost(run_dir: Path) -> tuple[float, float, float]:
    """(training seconds without pauses, final evaluation's seconds, recorded seconds) of one
    finished run."""
    records = read_metrics(run_dir / "metrics.jsonl")
    steps = [r for r in records if "loss" in r and "eval" not in r]
    per_step = []
    previous_step, previous_time = 0, 0.0
    for record in steps:  # "time" counts from the start of the process that logged it
        if record["step"] > previous_step and record["time"] > previous_time:
            per_step.append((record["time"] - previous_time) / (record["step"] - previous_step))
        previous_step, previous_time = record["step"], record["time"]
    evals = [r["eval_seconds"] for r in records if "eval" in r and "eval_seconds" in r]
    recorded = json.loads((run_dir / "row.json").read_text())["seconds"]
    evaluation = evals[-1] if evals else 0.0
    if not per_step:  # too short to log two steps: nothing to take a pause out of
        return max(0.0, recorded - evaluation), evaluation, recorded
    return statistics.median(per_step) * steps[-1]["step"], evaluation, recorded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study", type=Path, default=Path("runs/reproduction/full-data0"))
    parser.add_argument("--jobs", type=int, default=2, help="runs trained side by side (default 2)")
    args = parser.parse_args()

    costs_per_row: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for run_dir in sorted((args.study / "runs").glob("table*_seed*")):
        if (run_dir / "row.json").is_file():
            costs_per_row[run_dir.name.rsplit("_seed", 1)[0]].append(run_cost(run_dir))
    per_row: dict[str, list[tuple[float, float]]] = {}  # (estimate, recorded) per run
    for name, costs in costs_per_row.items():
        evaluation = statistics.median(e for _, e, _ in costs)
        per_row[name] = [(train + evaluation, recorded) for train, _, recorded in costs]
    if not per_row:
        raise SystemExit(f"{args.study}: no finished runs (looked for runs/table*_seed*/row.json)")

    print("| row | runs | estimate, min per run | recorded, min per run |")
    print("|---|---|---|---|")
    for name, costs in per_row.items():
        estimates = ", ".join(f"{e / 60:.1f}" for e, _ in costs)
        recorded = ", ".join(f"{r / 60:.1f}" for _, r in costs)
        print(f"| {name} | {len(costs)} | {estimates} | {recorded} |")
    run_seconds = sum(e for costs in per_row.values() for e, _ in costs)
    recorded_seconds = sum(r for costs in per_row.values() for _, r in costs)
    extra = {}
    for name, path in (("pre-training", args.study / "pretrain" / "pretrain.json"),
                       ("image pyramid", args.study / "pyramid.json")):
        if path.is_file():
            extra[name] = json.loads(path.read_text()).get("seconds", 0.0)
    runs = sum(len(costs) for costs in per_row.values())
    print(f"\n{runs} runs: {run_seconds / 60:.0f} min of training and evaluation without pauses "
          f"({recorded_seconds / 60:.0f} min recorded), {run_seconds / 60 / args.jobs:.0f} min "
          f"with {args.jobs} side by side")
    for name, seconds in extra.items():
        print(f"{name}: {seconds / 60:.1f} min (recorded)")
    total = run_seconds / args.jobs + sum(extra.values())
    print(f"estimated study without pauses: {total / 60:.0f} min")


if __name__ == "__main__":
    main()
