"""What a person watching a training run sees: metrics.csv beside metrics.jsonl, curves.png, and
plain progress lines when stderr is a file."""

from __future__ import annotations

import contextlib
import csv
import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TINY_MODEL, data_overrides


@pytest.fixture(scope="module")
def watched_run(tiny_synth, tmp_path_factory):
    """``fpn train`` for 3 steps (a line and a record every step, an evaluation at the end) with
    stderr going to a file; the run folder and what stderr got."""
    from fpn.cli import main

    run = tmp_path_factory.mktemp("watched") / "run"
    log_file = run.parent / "stderr.log"
    overrides = [*TINY_MODEL, *data_overrides(tiny_synth), "train.batch_size=2", "train.max_iter=3",
                 "train.warmup_iters=1", "train.device=cpu", "train.log_period=1"]
    with log_file.open("w") as stderr, contextlib.redirect_stderr(stderr):
        assert main(["train", "--config", "demo", "--output", str(run), *overrides]) == 0
    return run, log_file.read_text()


def test_metrics_csv_holds_the_numbers_of_metrics_jsonl(watched_run):
    run, _ = watched_run
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    with (run / "metrics.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == len(records) == 4  # three steps, one evaluation
    for record, row in zip(records, rows, strict=True):
        numbers = {**record.get("eval", {}), **{k: v for k, v in record.items() if k not in ("eval", "time")}}
        assert {k for k, v in row.items() if v != ""} == set(numbers)
        for key, value in numbers.items():
            assert float(row[key]) == value, key  # written exactly (repr of the float)
    assert {"loss", "lr", "loss_cls", "AP", "AP50"} <= set(rows[0])
    assert rows[-1]["AP"] != "" and rows[0]["AP"] == ""


def test_curves_png_draws_losses_lr_and_ap_in_their_panels(watched_run, tmp_path):
    from fpn.engine.training_curves import plot_training_curves
    from fpn.evaluation.plots import class_colour

    run, _ = watched_run
    picture = np.asarray(Image.open(run / "curves.png").convert("RGB")).astype(int)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    panels = plot_training_curves(records, tmp_path / "again.png")  # the same layout: where the panels are

    def pixels_of(panel, colour) -> int:
        left, top, right, bottom = (round(v) for v in panel.box)
        inside = picture[top + 3:bottom - 3, left + 3:right - 3]  # the plot area, without the frame
        return int((np.abs(inside - np.array(colour)).max(axis=2) <= 30).sum())

    assert pixels_of(panels["losses"], (0, 0, 0)) > 20  # the total loss, in black
    assert pixels_of(panels["lr"], [round(255 * c) for c in class_colour(3)]) > 20
    assert pixels_of(panels["eval"], [round(255 * c) for c in class_colour(0)]) > 5  # AP's marker
    # and the curve passes where the data says: the last lr at its step
    lr_record = [r for r in records if "lr" in r][-1]
    column, row = panels["lr"].pixel(lr_record["step"], lr_record["lr"])
    patch = picture[row - 3:row + 4, column - 3:column + 4]
    assert (np.abs(patch - np.array([round(255 * c) for c in class_colour(3)])).max(axis=2) <= 30).any()


def test_progress_is_plain_lines_when_stderr_is_a_file(watched_run):
    _, stderr = watched_run
    assert "\r" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("train step")]
    assert [line.split()[2] for line in lines] == ["1/3", "2/3", "3/3"]
    for line in lines:
        assert " loss " in line and " lr " in line and "it/s" in line and "ETA" in line
    assert lines[-1].endswith("ETA 0:00:00")


def test_overwrite_deletes_the_csv_and_the_curves(tmp_path):
    from fpn.engine.run_folder import RUN_OUTPUTS, clear_run

    assert {"metrics.csv", "curves.png"} <= set(RUN_OUTPUTS)
    for name in ("metrics.csv", "curves.png", "metrics.jsonl"):
        (tmp_path / name).write_text("x")
    assert set(clear_run(tmp_path)) == {"metrics.csv", "curves.png", "metrics.jsonl"}
