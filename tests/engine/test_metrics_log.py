"""The metrics sinks (``fpn.engine.metrics_log``): rows written, read back with the standard library's
json and csv readers, and compared with the records that went in."""

from __future__ import annotations

import csv
import json

import pytest

from fpn.engine.metrics_log import CsvSink, JsonLinesSink, MetricsLog, flat_numbers, read_metrics

STEPS = [{"step": 20, "loss": 1.5, "loss_cls": 0.75, "lr": 0.02},
         {"step": 40, "loss": 1.25, "loss_cls": 0.5, "lr": 0.02}]
EVALUATION = {"step": 40, "eval": {"AP": 12.5, "AP50": 30.0, "per_class": [1.0, 2.0], "final": True},
              "eval_seconds": 3.0}


def _rows(path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def test_json_lines_are_the_records_with_their_time(tmp_path):
    sink = JsonLinesSink(tmp_path / "metrics.jsonl")
    for record in [*STEPS, EVALUATION]:
        sink.write(record)
    sink.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [{k: v for k, v in r.items() if k != "time"} for r in records] == [*STEPS, EVALUATION]
    times = [r["time"] for r in records]
    assert times == sorted(times) and times[0] >= 0  # seconds since the log was opened


def test_json_lines_append_to_an_earlier_log(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 10, "loss": 2.0}) + "\n")
    sink = JsonLinesSink(path)
    sink.write(STEPS[0])
    sink.close()
    assert [r["step"] for r in read_metrics(path)] == [10, 20]


def test_flat_numbers_lift_an_evaluation_and_drop_what_is_not_a_number():
    assert flat_numbers({**STEPS[0], "time": 9.0}) == STEPS[0]  # the log's time left out
    # the evaluation's numbers under their own names; a list and a bool are no column
    assert flat_numbers(EVALUATION) == {"step": 40, "AP": 12.5, "AP50": 30.0, "eval_seconds": 3.0}


def test_csv_rows_and_a_column_added_by_the_first_evaluation(tmp_path):
    path = tmp_path / "metrics.csv"
    sink = CsvSink(path)
    for record in STEPS:
        sink.write(record)
    assert _rows(path) == [{"step": "20", "loss": "1.5", "loss_cls": "0.75", "lr": "0.02"},
                           {"step": "40", "loss": "1.25", "loss_cls": "0.5", "lr": "0.02"}]
    sink.write(EVALUATION)  # new columns: the file is rewritten with them, earlier rows kept
    rows = _rows(path)
    assert list(rows[0]) == ["step", "loss", "loss_cls", "lr", "AP", "AP50", "eval_seconds"]
    assert rows[0]["AP"] == "" and rows[1]["AP"] == ""  # a step row has no AP
    assert rows[2] == {"step": "40", "loss": "", "loss_cls": "", "lr": "", "AP": "12.5", "AP50": "30.0",
                       "eval_seconds": "3.0"}
    sink.write({"step": 60, "loss": 1.0, "loss_cls": 0.25, "lr": 0.002})  # appended under the header
    assert _rows(path)[3] == {"step": "60", "loss": "1.0", "loss_cls": "0.25", "lr": "0.002", "AP": "",
                              "AP50": "", "eval_seconds": ""}


def test_csv_of_a_resumed_run_starts_from_the_earlier_records(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("stale\n")  # replaced: the earlier records are the record of truth
    sink = CsvSink(path, [STEPS[0], {"note": "no step"}])
    sink.write(STEPS[1])
    assert [row["step"] for row in _rows(path)] == ["20", "40"]


class Recorder:
    """A sink of one's own: anything with write and close (fpn.engine.metrics_log.Sink)."""

    def __init__(self):
        self.records, self.closed = [], False

    def write(self, record):
        self.records.append(record)

    def close(self):
        self.closed = True


def test_the_log_hands_every_record_to_every_sink():
    first, second = Recorder(), Recorder()
    metrics = MetricsLog([first, second])
    for record in STEPS:
        metrics.write(record)
    metrics.close()
    assert first.records == second.records == STEPS
    assert first.closed and second.closed


@pytest.mark.parametrize("enabled", [True, False])
def test_a_runs_log_writes_jsonl_and_csv_only_when_enabled(tmp_path, enabled):
    metrics = MetricsLog.for_run(tmp_path, enabled=enabled)
    for record in STEPS:
        metrics.write(record)
    metrics.close()
    if not enabled:  # the ranks other than 0 under torchrun
        assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "metrics.csv").exists()
        return
    assert [r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1.5, 1.25]
    assert [row["loss"] for row in _rows(tmp_path / "metrics.csv")] == ["1.5", "1.25"]
