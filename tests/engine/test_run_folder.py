"""A run's folder: resume continues the run's own config, a new run never lands in an old one, and
the metrics log survives a half-written line (issue 25, points 2, 3 and 8)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from fpn.cli import main
from fpn.engine.checkpoint import latest_checkpoint, load_checkpoint
from fpn.engine.metrics_log import read_metrics
from fpn.engine.run_folder import trim_metrics_for_resume
from tests.conftest import TINY_MODEL, data_overrides


def _overrides(root, max_iter: int = 4) -> list[str]:
    # a config far from the `demo` preset the command line defaults to: a resume that fell back on
    # it would train another model on data/synth-demo (absent here) instead
    return [*TINY_MODEL, *data_overrides(root), "train.batch_size=2", f"train.max_iter={max_iter}",
            "train.checkpoint_period=2", "train.log_period=1", "train.warmup_iters=1", "train.device=cpu"]


def _train(run: Path, *args: str) -> int:
    return main(["--quiet", "train", "--output", str(run), *args])


def _snapshot(run: Path) -> dict[str, bytes]:
    """Every file of a run folder and its bytes."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def _interrupted_at_step_2(run: Path) -> None:
    """As if the run had been killed after its checkpoint at step 2 (of 4): the later checkpoint and
    the pointer to it gone, the metrics log still holding the records of steps 3 and 4 and the
    final evaluation (a process killed later would have written them) and a half-written line."""
    shutil.rmtree(run / "checkpoints" / "step_0000004")
    (run / "checkpoints" / "last_checkpoint").unlink()
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "loss": 1.2')  # cut short by the kill


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, tiny_synth):
    """A 4-step run trained without interruption (evaluated at the end)."""
    run = tmp_path_factory.mktemp("straight") / "run"
    assert _train(run, "--config", "demo", *_overrides(tiny_synth)) == 0
    return run


def test_resume_alone_continues_the_runs_own_config_with_config_yaml_unchanged(
        straight_run, tiny_synth, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(straight_run, run)
    _interrupted_at_step_2(run)
    config_before = (run / "config.yaml").read_bytes()
    assert _train(run, "--resume") == 0, capsys.readouterr().err  # no --config, no overrides
    assert (run / "config.yaml").read_bytes() == config_before
    assert latest_checkpoint(run / "checkpoints").name == "step_0000004"
    expected = load_checkpoint(latest_checkpoint(straight_run / "checkpoints"))[0]
    got = load_checkpoint(latest_checkpoint(run / "checkpoints"))[0]
    assert all(torch.equal(expected[k], got[k]) for k in expected)  # the same run, exactly
    records = read_metrics(run / "metrics.jsonl")
    train_steps = [r["step"] for r in records if "eval" not in r]
    assert train_steps == [1, 2, 3, 4]  # 3 and 4 once, not again after the first 4
    assert [r["step"] for r in records if "eval" in r] == [4]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines) and len(lines) == len(records)  # the cut line is gone


def test_resume_refuses_to_change_the_model_or_the_data_in_one_line(straight_run, tiny_synth, tmp_path,
                                                                     capsys):
    run = tmp_path / "run"
    shutil.copytree(straight_run, run)
    _interrupted_at_step_2(run)
    before = _snapshot(run)
    assert _train(run, "--resume", "model.neck.channels=64", "model.backbone.depth=34") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "model.neck.channels (32 -> 64)" in err and "model.backbone.depth (18 -> 34)" in err
    assert _train(run, "--resume", f"data.train_annotations={tiny_synth}/val/annotations.json") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "data.train_annotations" in err
    # the same through --config: the preset's own values are changes too
    assert _train(run, "--resume", "--config", "demo", *_overrides(tiny_synth), "train.base_lr=0.5") == 2
    assert "train.base_lr" in capsys.readouterr().err
    assert _snapshot(run) == before  # nothing written
    # the length of the schedule may change: the run continues to the new end
    assert _train(run, "--resume", "--no-eval", "train.max_iter=6", "train.lr_steps=[5]") == 0
    assert latest_checkpoint(run / "checkpoints").name == "step_0000006"
    assert "max_iter: 6" in (run / "config.yaml").read_text()


def test_a_checkpoint_that_does_not_fit_the_model_is_one_line(straight_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(straight_run, run)
    _interrupted_at_step_2(run)
    for config in (run / "config.yaml", run / "checkpoints" / "step_0000002" / "config.yaml"):
        config.write_text(config.read_text().replace("channels: 32", "channels: 48"))  # edited by hand
    assert _train(run, "--resume") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not fit this model" in err and "(48" in err


def test_training_again_into_a_run_leaves_it_untouched_unless_told(straight_run, tiny_synth, tmp_path,
                                                                   capsys):
    run = tmp_path / "run"
    shutil.copytree(straight_run, run)
    before = _snapshot(run)
    assert _train(run, "--config", "demo", *_overrides(tiny_synth)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds a training run" in err
    assert "--resume" in err and "--overwrite" in err and "--output" in err
    assert _snapshot(run) == before
    assert _train(run, "--resume", "--overwrite") == 2 and _snapshot(run) == before
    capsys.readouterr()
    # --overwrite: the old run's outputs go first, so the log holds the new run only
    again = ["--config", "demo", *_overrides(tiny_synth, max_iter=2), "--overwrite", "--no-eval"]
    assert _train(run, *again) == 0
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2]
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_0000002"]
    assert not (run / "eval").exists()


def test_resume_without_a_config_or_a_run_says_so(tmp_path, capsys):
    assert _train(tmp_path / "nothing", "--resume") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nothing to resume" in err
    assert not (tmp_path / "nothing").exists()


def test_read_metrics_skips_a_half_written_last_line_and_names_a_bad_one(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo\n{"step": 3, "loss": 1.0}\n{"step": 4, "lo')
    assert [r["step"] for r in read_metrics(path)] == [1, 3]
    assert "line 2 is not a JSON record" in caplog.text  # a cut line that a later append followed
    path.write_text('{"step": 1, "loss": 2.0}\n')
    assert read_metrics(path) == [{"step": 1, "loss": 2.0}]


def test_trimming_keeps_what_came_before_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"step": 2, "loss": 1.0}, {"step": 4, "loss": 0.9}, {"step": 4, "eval": {"AP": 0.1}},
             {"step": 6, "loss": 0.8}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 8, "lo')
    assert trim_metrics_for_resume(tmp_path, 4, evaluates_again=False) == 2
    assert read_metrics(path) == lines[:3]
    assert trim_metrics_for_resume(tmp_path, 4, evaluates_again=True) == 1  # evaluated once more
    assert read_metrics(path) == lines[:2]
