"""What ``fpn reproduce`` runs: the study (``study.run_reproduction``) or, with ``calibrate``, one
table's learning-rate sweep (``calibrate.run_calibration``)."""

from __future__ import annotations

from pathlib import Path

from fpn.errors import ConfigError
from fpn.reproduction.calibrate import run_calibration
from fpn.reproduction.study import run_reproduction


def reproduce(*, calibrate: str = "", rows: str = "", quick: bool = False, seeds: int | None = None,
              data_seed: int = 0, output: str | Path = "reports/reproduction",
              work: str | Path = "runs/reproduction", device: str = "auto", jobs: int = 1,
              retrain_stale: bool = False, report_only: bool = False) -> None:
    """The study of the rows named in ``rows`` (comma-separated; empty: all), or the calibration of
    table ``calibrate`` (1, 2 or 3), which has no report of its own to write (``report_only``)."""
    if calibrate:
        if report_only:
            raise ConfigError("--report-only writes the study's report; it cannot be given with --calibrate")
        run_calibration(calibrate, data_seed=data_seed, output=output, work=work, device=device, quick=quick,
                        retrain_stale=retrain_stale)
        return
    only = tuple(name for name in rows.split(",") if name)
    run_reproduction(quick=quick, seeds=seeds, data_seed=data_seed, output=output, work=work, device=device,
                     only=only, jobs=jobs, retrain_stale=retrain_stale, report_only=report_only)
