"""Time to AP50 of the demo preset: train with an evaluation every N steps, write the curve.

    python benchmarks/demo_curve.py [--every 100] [--output reports/demo_curve.md]

Training time excludes the time spent in the periodic evaluations themselves.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fpn.engine.metrics_log import read_metrics
from fpn.jobs.demo import run_demo


def curve(metrics_file: Path) -> list[dict]:
    rows, eval_seconds = [], 0.0
    for record in read_metrics(metrics_file):  # past a line a killed run left half-written
        if "eval" in record:
            train_seconds = record["time"] - eval_seconds - record["eval_seconds"]
            eval_seconds += record["eval_seconds"]
            rows.append({"step": record["step"], "train_minutes": train_seconds / 60, **record["eval"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--run", type=Path, default=Path("runs/demo-curve"))
    parser.add_argument("--output", type=Path, default=Path("reports/demo_curve.md"))
    args = parser.parse_args()
    start = time.perf_counter()
    run_demo(args.run, overrides=[f"train.eval_period={args.every}"], progress=False)
    rows = curve(args.run / "metrics.jsonl")
    keys = ["AP", "AP50", "AP_s", "AP_m", "AP_l", "AR@100"]
    lines = [f"Demo preset, `python benchmarks/demo_curve.py --every {args.every}` "
             f"({(time.perf_counter() - start) / 60:.1f} min in all, evaluations included).", "",
             "| step | training minutes | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for r in rows:
        cells = [str(r["step"]), f"{r['train_minutes']:.2f}", *(f"{100 * r[k]:.1f}" for k in keys)]
        lines.append("| " + " | ".join(cells) + " |")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
