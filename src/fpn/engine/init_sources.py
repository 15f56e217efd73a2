"""``train.init`` read: the weights people already hold, as our key names and the config they were
made for, and the conventions a run adopts from them (docs/finetuning.md).

A source is an fpn run or checkpoint, a detector checkpoint of torchvision, detectron2 or
mmdetection (converted to our key names by ``fpn.interop``), or a torchvision ImageNet ResNet
(loaded into the bottom-up pathway). ``fpn.engine.init_loading`` loads them into a model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from fpn.config.files import load_config
from fpn.config.schema import Config, ModelConfig
from fpn.engine.checkpoint import find_checkpoint, load_weights
from fpn.errors import CheckpointError, ConfigError, ConversionError, InitError, PathNotFoundError
from fpn.interop.detectors import convert_detector, identify
from fpn.safe_reading import read_checkpoint

# Config fields that say what the weights' numbers mean; a run initialised from weights uses theirs.
WEIGHT_CONVENTIONS = (
    "backbone.stride_in_1x1",
    "backbone.frozen_bn_eps",
    "input.channel_order",
    "input.pixel_scale",
    "input.pixel_mean",
    "input.pixel_std",
)

LIBRARY_NAMES = {
    "fpn": "fpn run",
    "torchvision": "torchvision Faster R-CNN",
    "detectron2": "detectron2 Faster R-CNN",
    "mmdetection": "mmdetection Faster R-CNN",
    "torchvision_resnet": "torchvision ImageNet ResNet",
}


@dataclass
class InitSource:
    """One ``train.init`` entry, read: weights in our key names and the config they were made for."""

    path: str
    library: str  # a key of LIBRARY_NAMES
    state_dict: dict[str, Tensor]  # for torchvision_resnet: torchvision's own names (backbone only)
    cfg: ModelConfig | None  # None when the source does not say (then its conventions are ours)

    def describe(self) -> str:
        what = LIBRARY_NAMES[self.library]
        if self.cfg is not None and "roi_heads.box_predictor.cls_score.weight" in self.state_dict:
            what += f", {self.state_dict['roi_heads.box_predictor.cls_score.weight'].shape[0] - 1} classes"
        return f"{self.path} ({what})"


def _fpn_source(path: Path) -> InitSource:
    try:
        weights, config_file = find_checkpoint(path)
        state = load_weights(weights)
    except (PathNotFoundError, CheckpointError) as err:
        raise InitError(str(err)) from None
    try:
        cfg = load_config(config_file).model  # the run's saved config, read as fpn eval reads it
    except ConfigError as err:
        raise InitError(str(err)) from None
    return InitSource(str(path), "fpn", state, cfg)


def read_init_source(path: str | Path) -> InitSource:
    """Read one ``train.init`` entry; any failure is an InitError naming the file."""
    path = Path(path)
    if not path.exists():
        raise InitError(f"{path}: train.init names no such run, checkpoint or weights file")
    if path.is_dir() or path.suffix == ".safetensors" and (path.parent / "config.yaml").is_file():
        return _fpn_source(path)
    try:
        state = read_checkpoint(path)
        library = identify(state)
        if library == "fpn":  # bare weights: their config is unknown, so their conventions are ours
            return InitSource(str(path), library, dict(state), None)
        if library == "torchvision_resnet":
            return InitSource(str(path), library, dict(state), ModelConfig())
        foreign = convert_detector(state)
    except CheckpointError as err:  # the file cannot be read: its message names it
        raise InitError(str(err)) from None
    except ConversionError as err:
        raise InitError(f"{path}: {err}") from None
    return InitSource(str(path), foreign.library, foreign.state_dict, foreign.cfg)


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _set(cfg: Any, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        cfg = getattr(cfg, part)
    setattr(cfg, last, value)


def adopt_conventions(cfg: Config, sources: list[InitSource]) -> tuple[Config, list[str]]:
    """A copy of ``cfg`` with the weight conventions of the sources (later ones win), and what changed."""
    cfg = copy.deepcopy(cfg)
    changes = {}
    for source in sources:
        if source.cfg is None:
            continue
        for field in WEIGHT_CONVENTIONS:
            theirs, ours = _get(source.cfg, field), _get(cfg.model, field)
            if theirs != ours:
                _set(cfg.model, field, theirs)
                changes[field] = f"model.{field}: {ours} -> {theirs} (from {source.path})"
    return cfg, list(changes.values())


def conventions_of_run(cfg: Config, checkpoint: Path) -> tuple[Config, list[str]]:
    """For a resumed run: a copy of ``cfg`` with the weight conventions its checkpoint was trained
    with, and what changed.

    The checkpoint's weights replace any initial ones, so ``train.init`` is not read again (its
    files may be gone); the conventions it set come from the checkpoint's own config, adopted as
    from an fpn run given to ``train.init``. A checkpoint without a config (written by hand)
    leaves ``cfg`` as it is.
    """
    config_file = checkpoint / "config.yaml"
    if not config_file.is_file():
        return copy.deepcopy(cfg), []
    try:
        saved = load_config(config_file).model
    except ConfigError as err:
        raise InitError(str(err)) from None
    return adopt_conventions(cfg, [InitSource(str(checkpoint), "fpn", {}, saved)])


def prepare(cfg: Config) -> tuple[Config, list[InitSource], list[str]]:
    """Read ``cfg.train.init`` and adopt its conventions: (config to build the model with, sources,
    report lines about the config)."""
    sources = [read_init_source(path) for path in cfg.train.init]
    cfg, changes = adopt_conventions(cfg, sources)
    return cfg, sources, [f"config from the weights: {change}" for change in changes]

