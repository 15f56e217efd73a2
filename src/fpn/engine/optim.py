"""The optimiser and its schedule (docs/paper.md §6), and the heads-only warm-up of fine-tuning.

SGD, momentum 0.9, weight decay 1e-4, lr 0.02 for 16 images (scaled linearly with the batch),
linear warm-up, x0.1 decays near the end.
"""

from __future__ import annotations

from functools import partial

import torch

from fpn.config.schema import TrainConfig
from fpn.engine.loop import HookBase
from fpn.errors import ConfigError


def scaled_lr(cfg: TrainConfig) -> float:
    """The linear scaling rule: base_lr for base_batch_size images, proportionally otherwise."""
    return cfg.base_lr * cfg.batch_size / cfg.base_batch_size


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the learning rate at ``step``: linear warm-up, then x gamma at each step."""
    factor = cfg.lr_gamma ** sum(step >= s for s in cfg.lr_steps)
    if step < cfg.warmup_iters:
        alpha = step / cfg.warmup_iters
        factor *= cfg.warmup_factor * (1 - alpha) + alpha
    return factor


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    """SGD; no weight decay on normalisation parameters and biases (as detectron2).

    With ``backbone_lr_factor`` != 1 the backbone's parameters get their own groups at that
    fraction of the learning rate (after the heads' groups, so group 0 is always at the full rate).
    """
    backbone = getattr(model, "backbone", None)
    in_backbone = {id(p) for p in backbone.parameters()} if backbone is not None else set()
    separate = cfg.backbone_lr_factor != 1.0
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for param in model.parameters():
        if not param.requires_grad:
            continue
        key = (separate and id(param) in in_backbone, param.ndim > 1)  # (backbone, decayed)
        groups.setdefault(key, []).append(param)
    lr = scaled_lr(cfg)
    param_groups = [{"params": groups.get((is_backbone, decayed), []),
                     "weight_decay": cfg.weight_decay if decayed else 0.0,
                     "lr": lr * (cfg.backbone_lr_factor if is_backbone else 1.0)}
                    for is_backbone in ((False, True) if separate else (False,))
                    for decayed in (True, False)]
    return torch.optim.SGD(param_groups, lr=lr, momentum=cfg.momentum)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning rate of every group times ``lr_factor(step)``, stepped once per step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor, cfg=cfg))


class HeadsOnly(HookBase):
    """``train.heads_only_iters``: the backbone and pyramid stay fixed for the first steps.

    Their trainable parameters stop requiring gradients (so no backward pass runs through them
    and SGD leaves them, their momentum and their weight decay alone) until the step is reached.
    The switch depends on the step only, so a resumed run makes the same choice. Not under
    torchrun: DistributedDataParallel fixes the set of trained parameters when it starts.
    """

    def __init__(self, model: torch.nn.Module, iters: int, *, distributed: bool = False):
        if distributed:
            raise ConfigError("train.heads_only_iters is not supported under torchrun: train the heads in "
                              "a run of their own with model.backbone.freeze_at=5 model.neck.frozen=true")
        body = [getattr(model, name, None) for name in ("backbone", "neck")]
        self.params = [p for part in body if part is not None for p in part.parameters() if p.requires_grad]
        self.iters = iters

    def apply(self, step: int) -> None:
        trainable = step >= self.iters
        for param in self.params:
            param.requires_grad_(trainable)

    def before_step(self) -> None:
        self.apply(self.trainer.state.step)
