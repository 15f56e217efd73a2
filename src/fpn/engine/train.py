"""The training loop: SGD with warm-up and step decay, logging, checkpoints, exact resume.

docs/paper.md §6 gives the schedule: SGD, momentum 0.9, weight decay 1e-4, lr 0.02 for 16 images
(scaled linearly with the batch), linear warm-up, x0.1 decays near the end.

Resuming is exact on the CPU: the data order and the flips are functions of (seed, epoch,
index), and every random state the model draws from is saved with the checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from fpn.config import Config, TrainConfig, save_config, to_dict
from fpn.data.transforms import hflip
from fpn.data.unreadable import (
    BadSampleCounter,
    TooManyBadSamplesError,
    Unreadable,
    collate_readable,
    load_or_unreadable,
)
from fpn.device import resolve_device
from fpn.engine import checkpoint as ckpt
from fpn.engine import distributed

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; the message names the step and the loss term."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


class HeadsOnly:
    """``train.heads_only_iters``: the backbone and pyramid stay fixed for the first steps.

    Their trainable parameters stop requiring gradients (so no backward pass runs through them
    and SGD leaves them, their momentum and their weight decay alone) until the step is reached.
    The switch depends on the step only, so a resumed run makes the same choice.
    """

    def __init__(self, model: torch.nn.Module, iters: int):
        body = [getattr(model, name, None) for name in ("backbone", "neck")]
        self.params = [p for part in body if part is not None for p in part.parameters() if p.requires_grad]
        self.iters = iters

    def apply(self, step: int) -> None:
        trainable = step >= self.iters
        for param in self.params:
            param.requires_grad_(trainable)


# Two large primes that spread (seed, epoch, index) over distinct random streams.
EPOCH_SALT = 1_000_003
SAMPLE_SALT = 1_000_033


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of an epoch's data order."""
    return seed * EPOCH_SALT + epoch


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's flip and of the model's anchor and RoI sampling for it."""
    return epoch_seed(seed, epoch) * SAMPLE_SALT + index


class EpochView(Dataset):
    """A training dataset seen through one epoch: a seeded order and seeded flips.

    Item ``i`` of epoch ``e`` is always the same sample with the same flip, whichever worker
    loads it, so a resumed run sees exactly the data the uninterrupted run would have.

    With ``world_size`` ranks, each global batch of ``global_batch`` samples is cut into equal
    consecutive shares, and rank ``r`` sees the r-th share of every batch: together the ranks
    see exactly the batches one process would.
    """

    def __init__(self, dataset: Dataset, seed: int, flip_prob: float, global_batch: int = 1,
                 rank: int = 0, world_size: int = 1):
        if global_batch % world_size:
            raise ValueError(f"train.batch_size={global_batch} is not divisible by {world_size} processes")
        self.dataset = dataset
        self.seed = seed
        self.flip_prob = flip_prob
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.rank = rank
        self.epoch = 0
        self.order: list[int] = []
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        order = torch.randperm(len(self.dataset), generator=g).tolist()
        usable = len(order) // self.global_batch * self.global_batch  # whole global batches only
        share = [(i % self.global_batch) // self.local_batch for i in range(usable)]  # rank of position i
        self.order = [order[i] for i in range(usable) if share[i] == self.rank]

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int):
        index = self.order[i]
        sample = load_or_unreadable(self.dataset, index)  # a corrupt or missing image: report, skip
        if isinstance(sample, Unreadable):
            return sample
        image, target = sample
        seed = sample_seed(self.seed, self.epoch, index)
        g = torch.Generator().manual_seed(seed)
        if self.flip_prob > 0 and torch.rand((), generator=g).item() < self.flip_prob:
            image, target = hflip(image, target)
        target = {**target, "sample_seed": seed % 2**62}  # the model's anchor/RoI sampling
        return image, target


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    index_in_epoch: int = 0  # batches of the current epoch already consumed
    bad_samples: int = 0


def _batches(view: EpochView, state: TrainState, cfg: TrainConfig, workers: int
             ) -> Iterator[tuple[list, list]]:
    """Batches forever, epoch after epoch, starting where ``state`` says.

    Bad samples are dropped and counted; past ``cfg.max_bad_samples`` the run stops.
    """
    bad_samples = BadSampleCounter(cfg.max_bad_samples, count=state.bad_samples)
    while True:
        view.set_epoch(state.epoch)
        loader = DataLoader(view, batch_size=view.local_batch, shuffle=False, num_workers=workers,
                            collate_fn=collate_readable, drop_last=True, persistent_workers=False,
                            generator=torch.Generator().manual_seed(cfg.seed + state.epoch))
        if len(loader) == 0:
            raise ValueError(f"the training set ({len(view)} images) is smaller than one batch "
                             f"({cfg.batch_size})")
        for i, (images, targets, bad) in enumerate(loader):
            if i < state.index_in_epoch:
                continue  # resumed mid-epoch: these batches were already used
            bad_samples.add(len(bad))
            state.bad_samples = bad_samples.count
            if not images:  # every sample of this batch was bad
                state.index_in_epoch += 1
                continue
            yield images, targets
        state.epoch += 1
        state.index_in_epoch = 0


def _to_device(images: list, targets: list, device: torch.device) -> tuple[list, list]:
    images = [img.to(device, non_blocking=True) for img in images]
    targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
    return images, targets


class _StopRequested:
    """SIGINT / SIGTERM: finish the current step, write a checkpoint, then stop."""

    def __init__(self):
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stop requested: finishing this step and writing a checkpoint")

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def autocast(device: torch.device, amp: str):
    """Mixed precision on CUDA (bf16, or fp16 with loss scaling); CPU runs stay fp32."""
    if amp == "off" or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def make_grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """Loss scaling for fp16 on CUDA; a pass-through otherwise."""
    return torch.amp.GradScaler("cuda", enabled=(amp == "fp16" and device.type == "cuda"))


class MetricsLog:
    """``metrics.jsonl`` in the run directory, and TensorBoard scalars when it is installed."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.file = (run_dir / "metrics.jsonl").open("a") if enabled else None
        self.board = _tensorboard(run_dir) if enabled else None
        self.start = time.perf_counter()

    def write(self, record: dict[str, Any]) -> None:
        if self.file is not None:
            self.file.write(json.dumps({**record, "time": time.perf_counter() - self.start}) + "\n")
            self.file.flush()
        if self.board is not None:
            scalars = record.get("eval", record)
            prefix = "eval/" if "eval" in record else "train/"
            for key, value in scalars.items():
                if key != "step" and isinstance(value, float):
                    self.board.add_scalar(prefix + key, value, record["step"])

    def close(self) -> None:
        for sink in (self.file, self.board):
            if sink is not None:
                sink.close()


class Trainer:
    """SGD on a model the caller built, over a dataset the caller opened (docs/paper.md §6).

    The loop runs ``step`` until ``cfg.train.max_iter``; checkpoints, evaluation and logging
    happen between steps. Under ``torchrun`` every process runs it; each trains on its share of
    the batches through DistributedDataParallel and only rank 0 writes files.

    Args:
        model: the detector, freshly built (seeded) or to be resumed; moved to the device here.
        evaluate_fn: optional ``(model, step) -> dict`` run every ``eval_period`` steps and at the
            end (on every rank); its numbers go to the metrics log.
    """

    def __init__(self, model: torch.nn.Module, train_dataset: Dataset, cfg: Config, run_dir: str | Path, *,
                 evaluate_fn: Callable[[torch.nn.Module, int], dict] | None = None, progress: bool = True):
        self.cfg, self.tcfg = cfg, cfg.train
        self.run_dir = Path(run_dir)
        self.dist = distributed.init(resolve_device(self.tcfg.device))
        self.device = resolve_device(self.tcfg.device, self.dist.local_rank)
        if self.tcfg.amp != "off" and self.device.type != "cuda":
            log.warning("train.amp=%s needs CUDA; training in fp32 on %s", self.tcfg.amp, self.device)
        self.model = model.to(self.device)
        self.optimizer = build_optimizer(self.model, self.tcfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, partial(lr_factor, cfg=self.tcfg))
        self.scaler = make_grad_scaler(self.device, self.tcfg.amp)
        self.heads_only = None
        if self.tcfg.heads_only_iters:
            self.heads_only = HeadsOnly(self.model, self.tcfg.heads_only_iters)
        self.net = self.model
        if self.dist.enabled:
            if self.heads_only is not None:  # DDP fixes the set of trained parameters when it starts
                raise ValueError("train.heads_only_iters is not supported under torchrun: train the heads in "
                                 "a run of their own with model.backbone.freeze_at=5 model.neck.frozen=true")
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=device_ids)
        self.train_dataset = train_dataset
        self.evaluate_fn = evaluate_fn
        self.progress = progress
        self.state = TrainState()

    def run(self, *, resume: bool = False) -> dict[str, Any]:
        """Train to ``max_iter`` (from the last checkpoint with ``resume``).

        Returns:
            step, seconds, the model, the number of bad samples skipped, whether a signal stopped it.
        """
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.run_dir / "config.yaml")
        if resume:
            self.state = _resume(self.run_dir, self.model, self.optimizer, self.scheduler) or TrainState()
        view = EpochView(self.train_dataset, self.tcfg.seed, self.cfg.data.horizontal_flip,
                         self.tcfg.batch_size, self.dist.rank, self.dist.world_size)
        batches = _batches(view, self.state, self.tcfg, self.cfg.data.num_workers)
        metrics = MetricsLog(self.run_dir, self.dist.is_main)
        bar = tqdm(total=self.tcfg.max_iter, initial=self.state.step, desc="train", dynamic_ncols=True,
                   disable=not (self.progress and self.dist.is_main))
        if self.tcfg.max_iter == 0 and self.dist.is_main:  # no step: the initialised model is the run
            _save(self.run_dir, self.model, self.optimizer, self.scheduler, self.state, self.cfg)
        if self.evaluate_fn is not None and self.state.step >= self.tcfg.max_iter:  # a finished run
            self.evaluate(metrics)
        self.model.train()  # evaluate() returns it to training mode too
        try:
            with _StopRequested() as stop:
                while self.state.step < self.tcfg.max_iter and not stop.requested:
                    losses = self.step(*next(batches))
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses['loss']:.3f}", lr=f"{losses['lr']:.3g}")
                    self.after_step(losses, metrics, stop.requested)
        finally:
            bar.close()
            metrics.close()
        if self.state.bad_samples:
            log.warning("%d bad samples were skipped during training", self.state.bad_samples)
        return {"step": self.state.step, "seconds": time.perf_counter() - metrics.start, "model": self.model,
                "bad_samples": self.state.bad_samples, "stopped": self.state.step < self.tcfg.max_iter}

    def step(self, images: list[Tensor], targets: list[dict]) -> dict[str, float]:
        """One SGD step on a batch (the model in training mode); the loss terms, their total and the
        learning rate used. Under torchrun the losses are those of the global batch (the mean over
        the ranks) and ``local_loss`` is this rank's."""
        images, targets = _to_device(images, targets, self.device)
        if self.heads_only is not None:
            self.heads_only.apply(self.state.step)
        with autocast(self.device, self.tcfg.amp):
            losses = self.net(images, targets)
        _check_finite(losses, self.state.step)
        total = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.tcfg.grad_clip_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tcfg.grad_clip_norm)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.state.step += 1
        self.state.index_in_epoch += 1
        local = {"loss": total.item(), **{k: v.item() for k, v in losses.items()}}
        logged = distributed.mean_over_ranks(local)  # the global batch's losses, as one process logs them
        if self.dist.enabled:
            logged["local_loss"] = local["loss"]  # this rank's share (rank 0's in the log)
        return {**logged, "lr": lr}

    def after_step(self, losses: dict[str, float], metrics: MetricsLog, stop_requested: bool) -> None:
        """The hooks between steps: log, checkpoint, evaluate."""
        step, tcfg = self.state.step, self.tcfg
        done = step == tcfg.max_iter
        if step % tcfg.log_period == 0 or done:
            metrics.write({"step": step, **losses})
        if self.dist.is_main and (done or stop_requested or step % tcfg.checkpoint_period == 0):
            _save(self.run_dir, self.model, self.optimizer, self.scheduler, self.state, self.cfg)
        periodic_eval = tcfg.eval_period and step % tcfg.eval_period == 0
        if self.evaluate_fn is not None and (done or periodic_eval):
            self.evaluate(metrics)

    def evaluate(self, metrics: MetricsLog) -> None:
        self.model.eval()
        start = time.perf_counter()
        results = self.evaluate_fn(self.model, self.state.step)
        metrics.write({"step": self.state.step, "eval": results, "eval_seconds": time.perf_counter() - start})
        self.model.train()


def train(model: torch.nn.Module, train_dataset: Dataset, cfg: Config, run_dir: str | Path, *,
          resume: bool = False, progress: bool = True,
          evaluate_fn: Callable[[torch.nn.Module, int], dict] | None = None) -> dict[str, Any]:
    """Train ``model`` on ``train_dataset`` as ``cfg.train`` says; logs and checkpoints in ``run_dir``."""
    trainer = Trainer(model, train_dataset, cfg, run_dir, evaluate_fn=evaluate_fn, progress=progress)
    return trainer.run(resume=resume)


def _tensorboard(run_dir: Path):
    """A TensorBoard writer into ``run_dir/tensorboard`` when tensorboard is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _check_finite(losses: dict[str, torch.Tensor], step: int) -> None:
    for name, value in losses.items():
        if not torch.isfinite(value):
            raise NonFiniteLossError(
                f"step {step + 1}: loss term '{name}' is {value.item()}; lower train.base_lr, set "
                "train.grad_clip_norm, or check the annotations for degenerate boxes"
            )


def _save(run_dir: Path, model, optimizer, scheduler, state: TrainState, cfg: Config) -> Path:
    train_state = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": state.step,
        "epoch": state.epoch,
        "index_in_epoch": state.index_in_epoch,
        "bad_samples": state.bad_samples,
        "rng": ckpt.capture_rng_state(),
    }
    return ckpt.save_checkpoint(run_dir / "checkpoints", state.step, model.state_dict(), train_state,
                                to_dict(cfg), keep=cfg.train.keep_checkpoints)


def _resume(run_dir: Path, model, optimizer, scheduler) -> TrainState | None:
    latest = ckpt.latest_checkpoint(run_dir / "checkpoints")
    if latest is None:
        log.warning("%s: no checkpoint to resume from; starting from step 0", run_dir)
        return None
    weights, train_state, _ = ckpt.load_checkpoint(latest)
    ckpt.load_model_weights(model, weights, latest)
    try:
        optimizer.load_state_dict(train_state["optimizer"])
    except ValueError as err:  # another set of trained parameters (freeze_at, frozen neck, ...)
        raise ckpt.CheckpointError(f"{latest}: its optimiser state does not fit this model ({err})") from None
    scheduler.load_state_dict(train_state["scheduler"])
    ckpt.restore_rng_state(train_state["rng"])
    log.info("resumed from %s (step %d)", latest, train_state["step"])
    return TrainState(step=int(train_state["step"]), epoch=int(train_state["epoch"]),
                      index_in_epoch=int(train_state["index_in_epoch"]),
                      bad_samples=int(train_state.get("bad_samples", 0)))


__all__ = ["train", "Trainer", "lr_factor", "scaled_lr", "seed_everything", "NonFiniteLossError",
           "TooManyBadSamplesError", "EpochView"]
