"""Training a model on a dataset as ``cfg.train`` says: the parts put together, then the loop run.

``Trainer`` builds from the config what ``TrainLoop`` (``fpn.engine.loop``) runs: the device and
the DistributedDataParallel wrapper under torchrun, SGD and its schedule (``fpn.engine.optim``),
the seeded data order (``fpn.data.order``), and the hooks (``fpn.engine.hooks``): progress,
the metrics log (``fpn.engine.metrics_log``), checkpoints (``fpn.engine.checkpoint``), evaluation.

Resuming is exact on the CPU: the data order and the flips are functions of (seed, epoch,
index), and every random state the model draws from is saved with the checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from fpn import distributed
from fpn.config.files import save_config
from fpn.config.schema import Config, to_dict
from fpn.data.order import EpochView, training_batches
from fpn.engine.checkpoint import resume_training
from fpn.engine.hooks import MetricsWriter, PeriodicCheckpointer, PeriodicEvaluator, progress_hook
from fpn.engine.loop import HookBase, TrainLoop, TrainState
from fpn.engine.metrics_log import MetricsLog
from fpn.engine.optim import HeadsOnly, build_optimizer, build_scheduler
from fpn.errors import output_dir
from fpn.hardware import resolve_device
from fpn.model.precision import training_precision

log = logging.getLogger(__name__)

EvaluateFn = Callable[[torch.nn.Module, int], dict]


class Trainer:
    """SGD on a model the caller built, over a dataset the caller opened (docs/paper.md §6).

    The loop runs until ``cfg.train.max_iter``; checkpoints, evaluation and logging happen
    between steps, as hooks. Under ``torchrun`` every process runs it; each trains on its share of
    the batches through DistributedDataParallel and only rank 0 writes files.

    Args:
        model: the detector, freshly built (seeded) or to be resumed; moved to the device here.
        evaluate_fn: optional ``(model, step) -> dict`` run every ``eval_period`` steps and at the
            end (on every rank); its numbers go to the metrics log.
        hooks: more hooks, run after the default ones (``build_hooks``).
    """

    def __init__(self, model: torch.nn.Module, train_dataset: Dataset, cfg: Config, run_dir: str | Path, *,
                 evaluate_fn: EvaluateFn | None = None, progress: bool = True,
                 hooks: Iterable[HookBase] = ()):
        self.cfg, self.tcfg = cfg, cfg.train
        self.run_dir = Path(run_dir)
        self.dist = distributed.init(resolve_device(self.tcfg.device))
        self.device = resolve_device(self.tcfg.device, self.dist.local_rank)
        self.precision = training_precision(self.tcfg.precision, self.device)
        self.model = model.to(self.device)
        self.optimizer = build_optimizer(self.model, self.tcfg)
        self.scheduler = build_scheduler(self.optimizer, self.tcfg)
        self.heads_only = None
        if self.tcfg.heads_only_iters:
            self.heads_only = HeadsOnly(self.model, self.tcfg.heads_only_iters, distributed=self.dist.enabled)
        self.net = self.model
        if self.dist.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=device_ids)
        self.train_dataset = train_dataset
        self.evaluate_fn = evaluate_fn
        self.progress = progress
        self.extra_hooks = list(hooks)
        self.state = TrainState()

    def build_hooks(self, metrics: MetricsLog) -> list[HookBase]:
        """The default hooks, in the order they run after a step: progress, (heads-only warm-up),
        log, checkpoint, evaluate."""
        tcfg, main = self.tcfg, self.dist.is_main
        hooks: list[HookBase] = [progress_hook(enabled=self.progress and main, period=tcfg.log_period)]
        if self.heads_only is not None:
            hooks.append(self.heads_only)
        hooks += [MetricsWriter(metrics, period=tcfg.log_period),
                  PeriodicCheckpointer(self.run_dir, to_dict(self.cfg), period=tcfg.checkpoint_period,
                                       enabled=main, keep=tcfg.keep_checkpoints)]
        if self.evaluate_fn is not None:
            hooks.append(PeriodicEvaluator(self.evaluate_fn, metrics, period=tcfg.eval_period))
        return hooks

    def run(self, *, resume: bool = False) -> dict[str, Any]:
        """Train to ``max_iter`` (from the last checkpoint with ``resume``).

        Returns:
            step, seconds, the model, the number of bad samples skipped, whether a signal stopped it.
        """
        if self.dist.is_main:
            output_dir(self.run_dir, what="run folder")
            save_config(self.cfg, self.run_dir / "config.yaml")
        if resume:
            resumed = resume_training(self.run_dir, self.model, self.optimizer, self.scheduler)
            self.state = resumed or TrainState()
        view = EpochView(self.train_dataset, self.tcfg.seed, self.cfg.data.horizontal_flip,
                         self.tcfg.batch_size, self.dist.rank, self.dist.world_size)
        tcfg = self.tcfg
        batches = training_batches(view, self.state, seed=tcfg.seed, max_bad_samples=tcfg.max_bad_samples,
                                   workers=self.cfg.data.num_workers)
        metrics = MetricsLog.for_run(self.run_dir, enabled=self.dist.is_main)
        loop = TrainLoop(self.model, batches, self.optimizer, self.scheduler, max_iter=self.tcfg.max_iter,
                         device=self.device, state=self.state, net=self.net, precision=self.precision,
                         grad_clip_norm=self.tcfg.grad_clip_norm,
                         hooks=[*self.build_hooks(metrics), *self.extra_hooks])
        try:
            loop.run()
        finally:
            metrics.close()
        if self.state.bad_samples:
            log.warning("%d bad samples were skipped during training", self.state.bad_samples)
        return {"step": self.state.step, "seconds": time.perf_counter() - metrics.start,
                "model": self.model, "bad_samples": self.state.bad_samples,
                "stopped": self.state.step < self.tcfg.max_iter}


def train(model: torch.nn.Module, train_dataset: Dataset, cfg: Config, run_dir: str | Path, *,
          resume: bool = False, progress: bool = True, evaluate_fn: EvaluateFn | None = None,
          hooks: Iterable[HookBase] = ()) -> dict[str, Any]:
    """Train ``model`` on ``train_dataset`` as ``cfg.train`` says; logs and checkpoints in ``run_dir``."""
    trainer = Trainer(model, train_dataset, cfg, run_dir, evaluate_fn=evaluate_fn, progress=progress,
                      hooks=hooks)
    return trainer.run(resume=resume)

