"""Training a detector on the data a config names, with evaluation at the end (and periodically)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from fpn.config import Config, ModelConfig
from fpn.engine import distributed, initialisation
from fpn.engine.checkpoint import latest_checkpoint
from fpn.engine.results import EvalResult, save_metrics
from fpn.engine.rng import seed_everything
from fpn.engine.train import train
from fpn.jobs.datasets import dataset_for, with_dataset_classes
from fpn.jobs.evaluation import evaluate_model
from fpn.model.detector import FasterRCNN

log = logging.getLogger(__name__)


class TrainingStopped(KeyboardInterrupt):
    """Training was stopped by SIGINT/SIGTERM after its checkpoint was written."""


def new_model(cfg: ModelConfig, seed: int) -> FasterRCNN:
    """A freshly initialised detector; the same seed gives the same weights."""
    seed_everything(seed)
    return FasterRCNN(cfg)


class PeriodicEvaluation:
    """What the trainer's evaluation hook calls: scores on the val set, saved per step in
    ``RUN/eval/step_N``; keeps the last result."""

    def __init__(self, val_set, cfg: Config, run_dir: Path, progress: bool):
        self.val_set, self.cfg, self.run_dir, self.progress = val_set, cfg, run_dir, progress
        self.last: EvalResult | None = None

    def __call__(self, model: nn.Module, step: int) -> dict[str, float]:
        self.last = evaluate_model(model, self.val_set, self.cfg, progress=self.progress)
        if distributed.info().is_main:
            save_metrics(self.last, self.run_dir / "eval" / f"step_{step:07d}")
        return self.last.metrics


def run_train(cfg: Config, out_dir: str | Path, *, resume: bool = False, progress: bool = True,
              evaluate: bool = True) -> dict[str, Any]:
    """Train on ``cfg.data``, evaluate on its val split at the end (and every eval_period).

    Returns the trainer's result (step, seconds, model, ...) with ``evaluation``, the last
    ``EvalResult`` (None without evaluation), and ``metrics``, its numbers.
    """
    out_dir = Path(out_dir)
    train_set = dataset_for(cfg, "train")
    cfg = with_dataset_classes(cfg, train_set)
    checkpoint = latest_checkpoint(out_dir / "checkpoints") if resume else None
    if checkpoint is not None:  # its weights replace the initial ones: train.init is not read again
        cfg, changes = initialisation.conventions_of_run(cfg, checkpoint)
        sources, report = [], [f"config from the checkpoint: {change}" for change in changes]
    else:
        cfg, sources, report = initialisation.prepare(cfg)
    evaluation = None
    if evaluate:
        evaluation = PeriodicEvaluation(dataset_for(cfg, "val"), cfg, out_dir, progress)
    model = new_model(cfg.model, cfg.train.seed)
    report += initialisation.initialise(model, sources, skip_mismatched=cfg.train.init_skip_mismatched)
    for line in report:
        log.info("%s", line)
    result = train(model, train_set, cfg, out_dir, resume=resume, progress=progress, evaluate_fn=evaluation)
    if result["stopped"]:
        raise TrainingStopped(f"stopped at step {result['step']} after writing a checkpoint; "
                              f"continue with: fpn train --resume --output {out_dir} ...")
    result["evaluation"] = evaluation.last if evaluation else None
    result["metrics"] = result["evaluation"].numbers() if result["evaluation"] else {}
    return result
