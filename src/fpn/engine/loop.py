"""The training loop itself: SGD steps until ``max_iter``, with hooks between them.

As detectron2's ``TrainerBase`` + ``HookBase``: ``TrainLoop`` knows a model, a stream of batches,
an optimiser and a schedule, and nothing of configs, files or evaluation. Everything that happens
between steps (logging, checkpoints, evaluation, progress, heads-only warm-up) is a hook
(``fpn.engine.hooks``), called in the order given:

    before_train()  ->  [before_step()  step  after_step()] x N  ->  after_train()

A hook reads what it needs from ``self.trainer``: ``state.step``, ``max_iter``, ``losses`` (the
last step's loss terms, total and learning rate), ``stop_requested``, ``model``, ``optimizer``,
``scheduler``. ``after_train`` runs also when training fails, so hooks can release what they hold.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fpn.data.order import DataPosition
from fpn.distributed import info as distributed_info
from fpn.distributed import mean_over_ranks
from fpn.errors import NonFiniteLossError
from fpn.hardware import autocast

log = logging.getLogger(__name__)


@dataclass
class TrainState(DataPosition):
    """The step count and the data position (epoch, batches of it consumed, bad samples)."""

    step: int = 0


class HookBase:
    """Something that happens between training steps; override the methods you need."""

    trainer: TrainLoop  # set by TrainLoop.register

    def before_train(self) -> None:
        """Before the first step (also of a resumed run)."""

    def after_train(self) -> None:
        """After the last step, or after a failure (release files, close bars)."""

    def before_step(self) -> None:
        """Before each step; ``trainer.state.step`` is the number of steps done."""

    def after_step(self) -> None:
        """After each step; ``trainer.state.step`` counts it, ``trainer.losses`` holds its losses."""


class StopOnSignal:
    """SIGINT / SIGTERM: finish the current step (hooks write a checkpoint), then stop.

    A second Ctrl-C stops at once (``KeyboardInterrupt``).
    """

    def __init__(self):
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # ValueError: not the main thread
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stop requested: finishing this step and writing a checkpoint")

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def make_grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """Loss scaling for fp16 on CUDA; a pass-through otherwise."""
    return torch.amp.GradScaler("cuda", enabled=(precision == "fp16" and device.type == "cuda"))


def check_finite(losses: dict[str, Tensor], step: int) -> None:
    """A ``NonFiniteLossError`` naming the step (1-based) and the term if any loss is NaN or inf."""
    for name, value in losses.items():
        if not torch.isfinite(value):
            raise NonFiniteLossError(
                f"step {step + 1}: loss term '{name}' is {value.item()}; lower train.base_lr, set "
                "train.grad_clip_norm, or check the annotations for degenerate boxes"
            )


class TrainLoop:
    """SGD steps on ``model`` over ``batches`` until ``max_iter``, hooks between them.

    Args:
        model: the detector in training mode (on ``device``); ``net`` is what the step calls,
            the model itself or its DistributedDataParallel wrapper.
        batches: (images, targets) lists, endlessly (``fpn.data.order.training_batches``).
        optimizer, scheduler: stepped once per step (the scheduler's factor per step).
        state: where to start (a resumed run's step and data position).
        precision, grad_clip_norm: ``train.precision`` resolved for the device (fp32, bf16 or
            fp16; ``fpn.model.precision.training_precision``) and ``train.grad_clip_norm``.
    """

    def __init__(self, model: nn.Module, batches: Iterator[tuple[list, list]],
                 optimizer: torch.optim.Optimizer, scheduler: Any, *, max_iter: int, device: torch.device,
                 state: TrainState | None = None, net: nn.Module | None = None, precision: str = "fp32",
                 grad_clip_norm: float | None = None, hooks: Iterable[HookBase] = ()):
        self.model, self.net = model, net if net is not None else model
        self.batches, self.optimizer, self.scheduler = batches, optimizer, scheduler
        self.max_iter, self.device = max_iter, device
        self.state = state if state is not None else TrainState()
        self.precision, self.grad_clip_norm = precision, grad_clip_norm
        self.scaler = make_grad_scaler(device, precision)
        self.losses: dict[str, float] = {}
        self.stop_requested = False
        self.hooks: list[HookBase] = []
        self.register(hooks)

    def register(self, hooks: Iterable[HookBase]) -> None:
        """Append hooks; they run in the order registered."""
        for hook in hooks:
            hook.trainer = self
            self.hooks.append(hook)

    @property
    def done(self) -> bool:
        """The last step has been taken."""
        return self.state.step >= self.max_iter

    def run(self) -> None:
        """Step until ``max_iter`` or a stop signal; the hooks do everything else."""
        try:
            for hook in self.hooks:
                hook.before_train()
            self.model.train()
            with StopOnSignal() as stop:
                while not self.done and not stop.requested:
                    for hook in self.hooks:
                        hook.before_step()
                    self.losses = self.step(*next(self.batches))
                    self.stop_requested = stop.requested
                    for hook in self.hooks:
                        hook.after_step()
        finally:
            for hook in self.hooks:
                hook.after_train()

    def step(self, images: list[Tensor], targets: list[dict]) -> dict[str, float]:
        """One SGD step on a batch (the model in training mode); the loss terms, their total and
        the learning rate used. Under torchrun the losses are those of the global batch (the mean
        over the ranks) and ``local_loss`` is this rank's."""
        images = [img.to(self.device, non_blocking=True) for img in images]
        targets = [{k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in t.items()}
                   for t in targets]
        with autocast(self.device, self.precision):
            losses = self.net(images, targets)
        check_finite(losses, self.state.step)
        total = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.grad_clip_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip_norm)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.state.step += 1
        local = {"loss": total.item(), **{k: v.item() for k, v in losses.items()}}
        logged = mean_over_ranks(local)  # the global batch's losses, as one process logs them
        if distributed_info().enabled:
            logged["local_loss"] = local["loss"]  # this rank's share (rank 0's in the log)
        return {**logged, "lr": lr}
