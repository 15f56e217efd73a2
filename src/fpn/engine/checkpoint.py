"""Checkpoints that are never half-written and never run code when loaded.

Layout of a run's ``checkpoints/`` folder::

    step_0000300/model.safetensors   weights (safetensors: loading cannot execute code)
    step_0000300/train_state.pt      optimiser, scheduler, step, RNG states (weights_only load)
    step_0000300/config.yaml         the resolved config
    last_checkpoint                  the name of the newest complete step_* folder

A checkpoint folder is written under a temporary name, flushed to disk, then renamed into place;
the pointer file is replaced atomically after it. A process killed at any moment leaves either
the previous checkpoint or the new one, never a torn one. Folders and files get the modes the
user's umask gives any new file (0755 / 0644 under the usual 022), not the private 0700 / 0600 of
Python's temporary files, so a team sharing a machine can read each other's runs.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file

from fpn.engine.atomic_files import atomic_write_bytes, current_umask, fsync_dir, fsync_file
from fpn.engine.loop import TrainState
from fpn.engine.rng import capture_rng_state, restore_rng_state
from fpn.errors import CheckpointError, PathNotFoundError, output_dir
from fpn.safe_reading import read_safetensors, torch_load_safely

log = logging.getLogger(__name__)

POINTER = "last_checkpoint"



def save_checkpoint(directory: str | Path, step: int, model_state: Mapping[str, torch.Tensor],
                    train_state: dict[str, Any] | None = None, config: dict[str, Any] | None = None,
                    keep: int = 3) -> Path:
    """Write ``directory/step_{step:07d}`` atomically, point ``last_checkpoint`` at it, and keep only
    the newest ``keep`` checkpoints (``train.keep_checkpoints``; 0 or less keeps all).

    Returns the checkpoint folder.
    """
    directory = output_dir(directory, what="checkpoint folder")
    final = directory / f"step_{step:07d}"
    tmp = Path(tempfile.mkdtemp(dir=directory, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes it 0700
        # clone: safetensors refuses tensors that share storage, and needs contiguous ones
        weights = {k: v.detach().to("cpu").contiguous().clone() for k, v in model_state.items()}
        save_file(weights, str(tmp / "model.safetensors"))
        fsync_file(tmp / "model.safetensors")
        if train_state is not None:
            torch.save(train_state, tmp / "train_state.pt")
            fsync_file(tmp / "train_state.pt")
        if config is not None:
            (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            fsync_file(tmp / "config.yaml")
        for file in tmp.iterdir():  # safetensors writes its file 0600
            file.chmod(0o666 & ~current_umask())
        if final.exists():  # the same step written again (e.g. a stop right after a periodic save)
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(directory)
    atomic_write_bytes(directory / POINTER, final.name.encode())
    _prune(directory, keep)
    return final


def _complete_checkpoints(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("step_*") if p.is_dir() and (p / "model.safetensors").is_file())


def _prune(directory: Path, keep: int) -> None:
    for old in _complete_checkpoints(directory)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest complete checkpoint folder; temporary folders of a killed writer are ignored."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    pointer = directory / POINTER
    if pointer.is_file():
        named = directory / pointer.read_text().strip()
        if (named / "model.safetensors").is_file():
            return named
    complete = _complete_checkpoints(directory)
    return complete[-1] if complete else None


def find_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """(weights file, config file) for a run directory, a checkpoint directory or a weights file.

    The run layout: ``RUN/checkpoints/step_N/{model.safetensors, config.yaml}``; a weights file needs
    its ``config.yaml`` beside it. A path that is none of these is a ``PathNotFoundError``.
    """
    path = Path(path)
    if not path.exists():
        raise PathNotFoundError(f"{path}: no such run, checkpoint directory or weights file")
    if path.is_dir() and (path / "checkpoints").is_dir():
        latest = latest_checkpoint(path / "checkpoints")
        if latest is None:
            raise PathNotFoundError(f"{path}: the run has no complete checkpoint yet "
                                    f"(looked for {path / 'checkpoints'}/step_*/model.safetensors)")
        path = latest
    if path.is_dir():
        weights, config = path / "model.safetensors", path / "config.yaml"
        if not weights.is_file():
            raise PathNotFoundError(
                f"{path}: not a run or checkpoint directory (looked for {path / 'checkpoints'}/ "
                f"of a run, or {weights.name} and {config.name} of a checkpoint)")
    else:
        weights, config = path, path.parent / "config.yaml"
    if not config.is_file():
        raise PathNotFoundError(f"{config}: not found (the config.yaml that describes {weights.name} "
                                "must be in the same directory)")
    return weights, config


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, dict | None]:
    """(weights, train state or None, config dict or None) of a checkpoint folder."""
    path = Path(path)
    weights = load_weights(path / "model.safetensors")
    train_state = None
    if (path / "train_state.pt").is_file():
        train_state = torch_load_safely(path / "train_state.pt")
    config = None
    if (path / "config.yaml").is_file():
        config = yaml.safe_load((path / "config.yaml").read_text())
    return weights, train_state, config


def load_model_weights(model: torch.nn.Module, weights: Mapping[str, torch.Tensor],
                       source: str | Path) -> None:
    """Load a checkpoint's weights into ``model``, or one ``CheckpointError`` line saying why they do
    not fit (a tensor of another shape, or tensors missing or left over), instead of a list of all."""
    own = model.state_dict()
    reshaped = [k for k in own if k in weights and weights[k].shape != own[k].shape]
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    if reshaped:
        key = reshaped[0]
        raise CheckpointError(f"{source}: does not fit this model: {key} has shape "
                              f"{tuple(weights[key].shape)} there, {tuple(own[key].shape)} here "
                              f"({len(reshaped)} tensor(s) differ; a model built from another config?)")
    if missing or unexpected:
        parts = [f"{len(missing)} tensor(s) missing (first: {missing[0]})"] if missing else []
        parts += [f"{len(unexpected)} not in this model (first: {unexpected[0]})"] if unexpected else []
        raise CheckpointError(f"{source}: does not fit this model: {', '.join(parts)}; a model built from "
                              "another config?")
    model.load_state_dict(weights)


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``model.safetensors`` file (``CheckpointError`` if missing or damaged)."""
    return read_safetensors(path)


def save_training_checkpoint(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                             scheduler: Any, state: TrainState, config: dict[str, Any], *,
                             keep: int = 3) -> Path:
    """``run_dir/checkpoints/step_N``: the weights, and all a resumed run needs to continue exactly
    (optimiser, schedule, step, data position, every random state) in ``train_state.pt``; the newest
    ``keep`` checkpoints are kept (0: all)."""
    train_state = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": state.step,
        "epoch": state.epoch,
        "index_in_epoch": state.index_in_epoch,
        "bad_samples": state.bad_samples,
        "rng": capture_rng_state(),
    }
    return save_checkpoint(Path(run_dir) / "checkpoints", state.step, model.state_dict(), train_state, config,
                           keep=keep)


def resume_training(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any) -> TrainState | None:
    """Load the run's latest checkpoint into the model, optimiser, schedule and random generators;
    its step and data position, or None (with a warning) when the run has no checkpoint."""
    latest = latest_checkpoint(Path(run_dir) / "checkpoints")
    if latest is None:
        log.warning("%s: no checkpoint to resume from; starting from step 0", run_dir)
        return None
    weights, train_state, _ = load_checkpoint(latest)
    if train_state is None:
        raise CheckpointError(f"{latest}: no train_state.pt (weights only): start a new run with "
                              f"train.init={latest} instead of resuming")
    load_model_weights(model, weights, latest)
    try:
        optimizer.load_state_dict(train_state["optimizer"])
    except ValueError as err:  # another set of trained parameters (freeze_at, frozen neck, ...)
        raise CheckpointError(f"{latest}: its optimiser state does not fit this model ({err})") from None
    scheduler.load_state_dict(train_state["scheduler"])
    restore_rng_state(train_state["rng"])
    log.info("resumed from %s (step %d)", latest, train_state["step"])
    return TrainState(step=int(train_state["step"]), epoch=int(train_state["epoch"]),
                      index_in_epoch=int(train_state["index_in_epoch"]),
                      bad_samples=int(train_state.get("bad_samples", 0)))
