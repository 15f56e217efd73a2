"""What happens between training steps: progress, the metrics log, checkpoints, evaluation.

Each hook has one reason to change; ``fpn.engine.train.Trainer.build_hooks`` lists the default
ones in the order they run after a step (log, checkpoint, evaluate), and ``Trainer(hooks=...)``
appends more (a plot redrawn at each evaluation, plain log lines, ...). A new hook subclasses
``HookBase`` (``fpn.engine.loop``) and reads the loop's state from ``self.trainer``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn
from tqdm import tqdm

from fpn.engine.checkpoint import save_training_checkpoint
from fpn.engine.loop import HookBase
from fpn.engine.metrics_log import MetricsLog
from fpn.progress import PlainProgress, stderr_is_terminal


class ProgressBar(HookBase):
    """A tqdm bar over the steps, with the last loss and learning rate."""

    def __init__(self, *, enabled: bool):
        self.enabled = enabled
        self.bar: tqdm | None = None

    def before_train(self) -> None:
        self.bar = tqdm(total=self.trainer.max_iter, initial=self.trainer.state.step, desc="train",
                        dynamic_ncols=True, disable=not self.enabled)

    def after_step(self) -> None:
        losses = self.trainer.losses
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{losses['loss']:.3f}", lr=f"{losses['lr']:.3g}")

    def after_train(self) -> None:
        if self.bar is not None:
            self.bar.close()


class ProgressLines(HookBase):
    """Where stderr is not a terminal (a log file, a job scheduler): one plain line every ``period``
    steps and at the last, with the step, the loss terms, the learning rate, the speed since this
    process started training and the time left at that speed; no carriage returns
    (``fpn.progress.PlainProgress``)."""

    def __init__(self, *, enabled: bool, period: int):
        self.enabled, self.period = enabled, max(1, period)
        self.lines: PlainProgress | None = None

    def before_train(self) -> None:
        self.lines = PlainProgress(total=self.trainer.max_iter, initial=self.trainer.state.step,
                                   desc="train step", period=self.period, enabled=self.enabled)

    def after_step(self) -> None:
        losses = self.trainer.losses
        self.lines.set_postfix(**{k: f"{v:.4f}" for k, v in losses.items() if k != "lr"},
                               lr=f"{losses.get('lr', 0.0):.4g}")
        self.lines.update(1)


def progress_hook(*, enabled: bool, period: int) -> HookBase:
    """A tqdm bar on a terminal, plain lines every ``period`` steps elsewhere (``ProgressLines``)."""
    if stderr_is_terminal():
        return ProgressBar(enabled=enabled)
    return ProgressLines(enabled=enabled, period=period)


class MetricsWriter(HookBase):
    """The loss terms and learning rate into the metrics log every ``period`` steps and at the end."""

    def __init__(self, metrics: MetricsLog, *, period: int):
        self.metrics, self.period = metrics, period

    def after_step(self) -> None:
        step = self.trainer.state.step
        if step % self.period == 0 or self.trainer.done:
            self.metrics.write({"step": step, **self.trainer.losses})


class PeriodicCheckpointer(HookBase):
    """A checkpoint every ``period`` steps, at the end, and when a stop was requested (rank 0 only).

    A run of ``max_iter: 0`` saves its initialised model as step 0. The newest ``keep`` checkpoints
    are kept (``train.keep_checkpoints``; 0: all).
    """

    def __init__(self, run_dir: Path, config: dict[str, Any], *, period: int, enabled: bool, keep: int = 3):
        self.run_dir, self.config, self.period, self.enabled = Path(run_dir), config, period, enabled
        self.keep = keep

    def before_train(self) -> None:
        if self.enabled and self.trainer.max_iter == 0:  # no step: the initialised model is the run
            self.save()

    def after_step(self) -> None:
        step = self.trainer.state.step
        if self.enabled and (self.trainer.done or self.trainer.stop_requested or step % self.period == 0):
            self.save()

    def save(self) -> Path:
        loop = self.trainer
        return save_training_checkpoint(self.run_dir, loop.model, loop.optimizer, loop.scheduler, loop.state,
                                        self.config, keep=self.keep)


class PeriodicEvaluator(HookBase):
    """``evaluate_fn(model, step) -> {name: number}`` every ``period`` steps (0: never) and at the
    end, on every rank; its numbers go to the metrics log. A finished run given to ``run`` again
    is evaluated once."""

    def __init__(self, evaluate_fn: Callable[[nn.Module, int], dict], metrics: MetricsLog, *, period: int):
        self.evaluate_fn, self.metrics, self.period = evaluate_fn, metrics, period

    def before_train(self) -> None:
        if self.trainer.done:
            self.evaluate()

    def after_step(self) -> None:
        step = self.trainer.state.step
        if self.trainer.done or (self.period and step % self.period == 0):
            self.evaluate()

    def evaluate(self) -> None:
        model, step = self.trainer.model, self.trainer.state.step
        model.eval()
        start = time.perf_counter()
        results = self.evaluate_fn(model, step)
        self.metrics.write({"step": step, "eval": results, "eval_seconds": time.perf_counter() - start})
        model.train()
