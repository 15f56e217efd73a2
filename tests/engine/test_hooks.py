"""The hooks between training steps (``fpn.engine.hooks``), run by the real loop on a model whose
SGD steps are known by hand: loss (w - 3)², w from 0, lr 0.1, so w goes 0, 0.6, 1.08, ... and the
loss of step k is 9 · 0.64^(k-1) (each step multiplies w - 3 by 1 - 2 · 0.1 = 0.8)."""

from __future__ import annotations

import io
import itertools
import re
import sys

import pytest
import torch
from torch import nn

from fpn.engine.checkpoint import latest_checkpoint, load_checkpoint
from fpn.engine.hooks import (
    MetricsWriter,
    PeriodicCheckpointer,
    PeriodicEvaluator,
    ProgressBar,
    ProgressLines,
    progress_hook,
)
from fpn.engine.loop import TrainLoop, TrainState
from fpn.engine.metrics_log import MetricsLog


class Quadratic(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, images, targets):
        return {"loss_w": (self.w - 3.0) ** 2}


class Recorder:
    """A metrics sink that keeps the records (fpn.engine.metrics_log.Sink)."""

    def __init__(self):
        self.records = []

    def write(self, record):
        self.records.append(record)

    def close(self):
        pass


def _loop(max_iter: int, hooks, *, step: int = 0) -> TrainLoop:
    torch.manual_seed(0)
    model = Quadratic()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    batches = itertools.repeat(([torch.zeros(1)], [{}]))
    return TrainLoop(model, batches, optimizer, scheduler, max_iter=max_iter, device=torch.device("cpu"),
                     state=TrainState(step=step), hooks=hooks)


def _loss_of_step(k: int) -> float:
    return 9.0 * 0.64 ** (k - 1)


def test_metrics_every_period_and_at_the_end():
    recorder = Recorder()
    _loop(7, [MetricsWriter(MetricsLog([recorder]), period=3)]).run()
    assert [r["step"] for r in recorder.records] == [3, 6, 7]
    for record in recorder.records:
        assert record["loss"] == pytest.approx(_loss_of_step(record["step"]))
        assert record["loss_w"] == record["loss"] and record["lr"] == pytest.approx(0.1)


def test_plain_progress_lines_every_period_and_at_the_last_step(monkeypatch):
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    hook = progress_hook(enabled=True, period=2)
    assert isinstance(hook, ProgressLines)  # stderr is no terminal
    _loop(5, [hook]).run()
    text = stderr.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert [line.split()[2] for line in lines] == ["2/5", "4/5", "5/5"]
    # step 2: loss 9 · 0.64 = 5.76
    assert re.match(r"train step 2/5  loss 5\.7600  loss_w 5\.7600  lr 0\.1  [\d.]+ it/s  ETA ", lines[0])


def test_a_resumed_run_counts_from_its_step(monkeypatch):
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    _loop(6, [ProgressLines(enabled=True, period=2)], step=3).run()
    assert [line.split()[2] for line in stderr.getvalue().splitlines()] == ["4/6", "6/6"]


def test_a_bar_on_a_terminal_and_nothing_when_disabled(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    assert isinstance(progress_hook(enabled=True, period=2), ProgressBar)
    quiet = io.StringIO()
    monkeypatch.setattr(sys, "stderr", quiet)
    _loop(3, [ProgressLines(enabled=False, period=1)]).run()
    assert quiet.getvalue() == ""


def test_evaluation_every_period_and_at_the_end_in_eval_mode():
    calls, recorder = [], Recorder()

    def evaluate(model, step):
        calls.append((step, model.training, model.w.item()))
        return {"AP": float(step)}

    loop = _loop(5, [PeriodicEvaluator(evaluate, MetricsLog([recorder]), period=2)])
    loop.run()
    # w after k steps: 3 - 3 · 0.8^k
    assert [(step, training) for step, training, _ in calls] == [(2, False), (4, False), (5, False)]
    assert [w for *_, w in calls] == pytest.approx([3 - 3 * 0.8 ** k for k in (2, 4, 5)])
    assert loop.model.training  # back to training after each evaluation
    assert [(r["step"], r["eval"]) for r in recorder.records] == [(2, {"AP": 2.0}), (4, {"AP": 4.0}),
                                                                  (5, {"AP": 5.0})]
    assert all(r["eval_seconds"] >= 0 for r in recorder.records)


def test_a_finished_run_given_again_is_evaluated_once():
    calls = []
    hook = PeriodicEvaluator(lambda model, step: calls.append(step) or {}, MetricsLog(), period=2)
    _loop(4, [hook], step=4).run()
    assert calls == [4]


def test_checkpoints_every_period_and_at_the_end_keeping_the_newest(tmp_path):
    hook = PeriodicCheckpointer(tmp_path, {"note": "test"}, period=2, enabled=True, keep=2)
    _loop(5, [hook]).run()
    kept = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert kept == ["step_0000004", "step_0000005"]  # 2, 4 and 5 written; the newest 2 kept
    weights, train_state, _ = load_checkpoint(latest_checkpoint(tmp_path / "checkpoints"))
    assert weights["w"].item() == pytest.approx(3 - 3 * 0.8 ** 5)
    assert train_state["step"] == 5


def test_a_run_of_zero_steps_saves_its_initial_model_and_disabled_saves_nothing(tmp_path):
    _loop(0, [PeriodicCheckpointer(tmp_path / "a", {}, period=2, enabled=True)]).run()
    assert [p.name for p in (tmp_path / "a" / "checkpoints").glob("step_*")] == ["step_0000000"]
    _loop(3, [PeriodicCheckpointer(tmp_path / "b", {}, period=1, enabled=False)]).run()
    assert not (tmp_path / "b").exists()
