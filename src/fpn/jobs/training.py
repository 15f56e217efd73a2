"""Training a detector on the data a config names, with evaluation at the end (and periodically).

Where a run's folder already holds a run, ``fpn.engine.run_folder`` decides: without ``resume``
training is refused (``overwrite`` clears the old run first); with it, the run continues with its
own config, changed only in the fields that are safe to change on resume.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from fpn import distributed
from fpn.config.files import load_config
from fpn.config.schema import Config, ModelConfig
from fpn.engine import init_loading, init_sources, run_folder
from fpn.engine.checkpoint import latest_checkpoint
from fpn.engine.rng import seed_everything
from fpn.engine.train import train
from fpn.evaluation.result import EvalResult, save_metrics
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


def requested_config(config: str | None, overrides: list[str], run_dir: str | Path, *,
                     resume: bool, init: list[str | Path] = ()) -> Config:
    """The config ``fpn train`` asks for: ``config`` (a preset or YAML file), else on resume the
    run's own ``config.yaml``, else the ``demo`` preset; then the ``key=value`` overrides; then
    ``init`` (``--init``) appended to ``train.init``."""
    if config is None and resume:
        saved = Path(run_dir) / "config.yaml"
        if not saved.is_file():
            raise run_folder.ResumeError(f"{run_dir}: nothing to resume (no config.yaml); give --config "
                                         "to start a run there")
        cfg = load_config(saved, overrides)
    else:
        cfg = load_config(config or "demo", overrides)
    cfg.train.init = [*cfg.train.init, *map(str, init)]
    return cfg


def run_train(cfg: Config, out_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
              progress: bool = True, evaluate: bool = True) -> dict[str, Any]:
    """Train on ``cfg.data``, evaluate on its val split at the end (and every eval_period).

    Without ``resume``, a folder that already holds a run is refused unless ``overwrite``, which
    deletes that run's outputs first. With ``resume``, the run continues from its last checkpoint
    with its own config (``fpn.engine.run_folder.resumed_config``).

    Returns the trainer's result (step, seconds, model, ...) with ``evaluation``, the last
    ``EvalResult`` (None without evaluation), and ``metrics``, its numbers.
    """
    out_dir = Path(out_dir)
    if resume and overwrite:
        raise run_folder.ResumeError("--resume continues a run and --overwrite deletes it: give one")
    if not resume and not overwrite:
        run_folder.refuse_to_overwrite(out_dir)
    train_set = dataset_for(cfg, "train")
    cfg = with_dataset_classes(cfg, train_set)
    checkpoint = latest_checkpoint(out_dir / "checkpoints") if resume else None
    if checkpoint is not None:  # its weights replace the initial ones: train.init is not read again
        cfg, report = _config_of_resumed_run(cfg, out_dir, checkpoint)
        sources = []
    else:
        if resume:
            log.warning("%s: no checkpoint to resume from; starting from step 0", out_dir)
        cfg, sources, report = init_sources.prepare(cfg)
    evaluation = None
    if evaluate:
        evaluation = PeriodicEvaluation(dataset_for(cfg, "val"), cfg, out_dir, progress)
    model = new_model(cfg.model, cfg.train.seed)
    report += init_loading.initialise(model, sources, skip_mismatched=cfg.train.init_skip_mismatched)
    for line in report:
        log.info("%s", line)
    if distributed.is_main_process():
        _prepare_folder(out_dir, cfg, checkpoint, resume=resume, overwrite=overwrite, evaluate=evaluate)
    result = train(model, train_set, cfg, out_dir, resume=checkpoint is not None, progress=progress,
                   evaluate_fn=evaluation)
    if result["stopped"]:
        raise TrainingStopped(f"stopped at step {result['step']} after writing a checkpoint; "
                              f"continue with: fpn train --resume --output {out_dir}")
    result["evaluation"] = evaluation.last if evaluation else None
    result["metrics"] = result["evaluation"].numbers() if result["evaluation"] else {}
    return result


def _config_of_resumed_run(cfg: Config, out_dir: Path, checkpoint: Path) -> tuple[Config, list[str]]:
    """The requested config with the checkpoint's weight conventions, checked against the run's own
    (only the fields safe to change on resume may differ); the report lines."""
    cfg, changes = init_sources.conventions_of_run(cfg, checkpoint)
    report = [f"config from the checkpoint: {change}" for change in changes]
    saved = run_folder.saved_config(out_dir, checkpoint)
    if saved is None:  # a checkpoint written by hand, without a config: nothing to compare with
        return cfg, report
    cfg, notes = run_folder.resumed_config(cfg, saved, out_dir)
    return cfg, report + notes


def _prepare_folder(out_dir: Path, cfg: Config, checkpoint: Path | None, *, resume: bool, overwrite: bool,
                    evaluate: bool) -> None:
    """Rank 0, just before training: clear the old run (``overwrite``) or trim a resumed run's
    metrics log to its checkpoint."""
    if overwrite:
        run_folder.clear_run(out_dir)
    elif resume:
        step = run_folder.checkpoint_step(checkpoint) if checkpoint is not None else 0
        run_folder.trim_metrics_for_resume(out_dir, step,
                                           evaluates_again=evaluate and step >= cfg.train.max_iter)
