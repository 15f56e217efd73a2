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

import os
import pickle
import random
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

POINTER = "last_checkpoint"


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated or not what it claims to be."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle would need to execute code to load; we refuse."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def current_umask() -> int:
    """This process's umask, read without changing it where Linux tells it (``os.umask`` sets it
    for every thread for an instant)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync and rename (mode from the umask)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes it 0600
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def save_checkpoint(directory: str | Path, step: int, model_state: Mapping[str, torch.Tensor],
                    train_state: dict[str, Any] | None = None, config: dict[str, Any] | None = None,
                    keep: int = 3) -> Path:
    """Write ``directory/step_{step:07d}`` atomically, point ``last_checkpoint`` at it, and keep only
    the newest ``keep`` checkpoints (``train.keep_checkpoints``; 0 or less keeps all).

    Returns the checkpoint folder.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step_{step:07d}"
    tmp = Path(tempfile.mkdtemp(dir=directory, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes it 0700
        # clone: safetensors refuses tensors that share storage, and needs contiguous ones
        weights = {k: v.detach().to("cpu").contiguous().clone() for k, v in model_state.items()}
        save_file(weights, str(tmp / "model.safetensors"))
        _fsync_file(tmp / "model.safetensors")
        if train_state is not None:
            torch.save(train_state, tmp / "train_state.pt")
            _fsync_file(tmp / "train_state.pt")
        if config is not None:
            (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            _fsync_file(tmp / "config.yaml")
        for file in tmp.iterdir():  # safetensors writes its file 0600
            file.chmod(0o666 & ~current_umask())
        if final.exists():  # the same step written again (e.g. a stop right after a periodic save)
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(directory)
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


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, dict | None]:
    """(weights, train state or None, config dict or None) of a checkpoint folder."""
    path = Path(path)
    weights = load_weights(path / "model.safetensors")
    train_state = None
    if (path / "train_state.pt").is_file():
        train_state = _torch_load_safely(path / "train_state.pt")
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
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None


# An error message quotes at most this much of the underlying library's first line.
QUOTED_ERROR_CHARS = 160


def _quote(error: BaseException | str) -> str:
    """The first line of an underlying error, cut to ``QUOTED_ERROR_CHARS``."""
    lines = str(error).splitlines()
    return (lines[0] if lines else type(error).__name__)[:QUOTED_ERROR_CHARS]


def _torch_load_safely(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "weights_only" in text or "Unsupported global" in text or "GLOBAL" in text:
            raise UnsafeCheckpointError(
                f"{path}: refusing to load: the pickle would execute code "
                f"({_quote(text)})"
            ) from None
        raise CheckpointError(f"{path}: corrupt or truncated ({_quote(text)})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: corrupt or truncated ({_quote(err)})") from None


def load_foreign_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from another library's file, loaded without executing pickled code.

    ``.safetensors`` through safetensors; anything else through ``torch.load(weights_only=True)``.
    ``{"model": ...}`` and ``{"state_dict": ...}`` wrappers are unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        return load_weights(path)
    state = _torch_load_safely(path)
    for wrapper in ("model", "state_dict"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{path}: does not hold a state dict of tensors")
    return dict(state)


def capture_rng_state() -> dict[str, Any]:
    """Every random state a training step draws from, in weights_only-loadable types."""
    np_state = np.random.get_state()
    state = {
        "python": _to_lists(random.getstate()),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(value: Any) -> Any:
    return [_to_lists(v) for v in value] if isinstance(value, tuple | list) else value
