"""The training loop: SGD with warm-up and step decay, logging, checkpoints, exact resume.

FPN_SPEC §6 gives the schedule: SGD, momentum 0.9, weight decay 1e-4, lr 0.02 for 16 images
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from fpn.config import Config, TrainConfig, save_config, to_dict
from fpn.data.errors import DatasetError
from fpn.data.transforms import hflip
from fpn.engine import checkpoint as ckpt
from fpn.engine import distributed
from fpn.model.detector import FasterRCNN

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; the message names the step and the loss term."""


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``: this process's GPU (LOCAL_RANK under torchrun) when CUDA is present, else the CPU."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
    """SGD; no weight decay on normalisation parameters and biases (as detectron2)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=scaled_lr(cfg), momentum=cfg.momentum)


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
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.dataset), generator=g).tolist()
        usable = len(order) // self.global_batch * self.global_batch  # whole global batches only
        share = [(i % self.global_batch) // self.local_batch for i in range(usable)]  # rank of position i
        self.order = [order[i] for i in range(usable) if share[i] == self.rank]

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int):
        index = self.order[i]
        try:
            image, target = self.dataset[index]
        except DatasetError as err:  # a corrupt or missing image: report, skip, count
            log.warning("skipping a bad sample: %s", err)
            return None
        sample_seed = (self.seed * 1_000_003 + self.epoch) * 1_000_033 + index
        g = torch.Generator().manual_seed(sample_seed)
        if self.flip_prob > 0 and torch.rand((), generator=g).item() < self.flip_prob:
            image, target = hflip(image, target)
        target = {**target, "sample_seed": sample_seed % 2**62}  # the model's anchor/RoI sampling
        return image, target


class TooManyBadSamplesError(DatasetError):
    """More unreadable samples than ``train.max_bad_samples``."""


def collate_skipping_bad(batch: list) -> tuple[list, list, int]:
    """(images, targets, number of bad samples dropped from this batch)."""
    good = [sample for sample in batch if sample is not None]
    return [s[0] for s in good], [s[1] for s in good], len(batch) - len(good)


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    index_in_epoch: int = 0  # batches of the current epoch already consumed
    bad_samples: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def _batches(view: EpochView, state: TrainState, cfg: TrainConfig, workers: int
             ) -> Iterator[tuple[list, list]]:
    """Batches forever, epoch after epoch, starting where ``state`` says.

    Bad samples are dropped and counted; past ``cfg.max_bad_samples`` the run stops.
    """
    while True:
        view.set_epoch(state.epoch)
        loader = DataLoader(view, batch_size=view.local_batch, shuffle=False, num_workers=workers,
                            collate_fn=collate_skipping_bad, drop_last=True, persistent_workers=False,
                            generator=torch.Generator().manual_seed(cfg.seed + state.epoch))
        if len(loader) == 0:
            raise ValueError(f"the training set ({len(view)} images) is smaller than one batch "
                             f"({cfg.batch_size})")
        for i, (images, targets, bad) in enumerate(loader):
            if i < state.index_in_epoch:
                continue  # resumed mid-epoch: these batches were already used
            state.bad_samples += bad
            if state.bad_samples > cfg.max_bad_samples:
                raise TooManyBadSamplesError(
                    f"{state.bad_samples} samples could not be read (limit train.max_bad_samples="
                    f"{cfg.max_bad_samples}); see the warnings above for the files")
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


def train(
    cfg: Config,
    train_dataset: Dataset,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    evaluate_fn=None,
) -> dict[str, Any]:
    """Train ``cfg.model`` on ``train_dataset``; write logs and checkpoints into ``run_dir``.

    Under ``torchrun`` every process calls this; each trains on its share of the batches
    through DistributedDataParallel and only rank 0 writes files.

    Args:
        evaluate_fn: optional ``(model, step) -> dict`` run every ``eval_period`` steps and at the
            end (on every rank); its numbers go to the metrics log.
    Returns:
        step, seconds, the model, the number of bad samples skipped, whether a signal stopped it.
    """
    tcfg = cfg.train
    run_dir = Path(run_dir)
    dinfo = distributed.init(resolve_device(tcfg.device))
    device = resolve_device(tcfg.device, dinfo.local_rank)
    if tcfg.amp != "off" and device.type != "cuda":
        log.warning("train.amp=%s needs CUDA; training in fp32 on %s", tcfg.amp, device)
    if dinfo.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    seed_everything(tcfg.seed)
    model = FasterRCNN(cfg.model).to(device)
    optimizer = build_optimizer(model, tcfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, tcfg))
    scaler = make_grad_scaler(device, tcfg.amp)
    state = (_resume(run_dir, model, optimizer, scheduler) if resume else None) or TrainState()
    net = model
    if dinfo.enabled:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    view = EpochView(train_dataset, tcfg.seed, cfg.data.horizontal_flip, tcfg.batch_size, dinfo.rank,
                     dinfo.world_size)
    log_file = (run_dir / "metrics.jsonl").open("a") if dinfo.is_main else None
    board = _tensorboard(run_dir) if dinfo.is_main else None
    batches = _batches(view, state, tcfg, cfg.data.num_workers)
    bar = tqdm(total=tcfg.max_iter, initial=state.step, disable=not (progress and dinfo.is_main),
               desc="train", dynamic_ncols=True)
    start = time.perf_counter()

    def log_record(record: dict[str, Any]) -> None:
        if log_file is not None:
            log_file.write(json.dumps({**record, "time": time.perf_counter() - start}) + "\n")
            log_file.flush()
        if board is not None:
            scalars = record.get("eval", record)
            prefix = "eval/" if "eval" in record else "train/"
            for key, value in scalars.items():
                if key != "step" and isinstance(value, float):
                    board.add_scalar(prefix + key, value, record["step"])

    def evaluate() -> None:
        model.eval()
        eval_start = time.perf_counter()
        results = evaluate_fn(model, state.step)
        log_record({"step": state.step, "eval": results, "eval_seconds": time.perf_counter() - eval_start})
        model.train()

    if evaluate_fn is not None and state.step >= tcfg.max_iter:  # resumed a finished run
        evaluate()
    model.train()
    try:
        with _StopRequested() as stop:
            while state.step < tcfg.max_iter:
                images, targets = _to_device(*next(batches), device)
                with autocast(device, tcfg.amp):
                    losses = net(images, targets)
                _check_finite(losses, state.step)
                total = sum(losses.values())
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(total).backward()
                if tcfg.grad_clip_norm:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip_norm)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                state.step += 1
                state.index_in_epoch += 1
                bar.update(1)
                bar.set_postfix(loss=f"{total.item():.3f}", lr=f"{optimizer.param_groups[0]['lr']:.4f}")
                done = state.step == tcfg.max_iter
                if state.step % tcfg.log_period == 0 or done:
                    log_record({"step": state.step, "lr": optimizer.param_groups[0]["lr"],
                                "loss": total.item(), **{k: v.item() for k, v in losses.items()}})
                if dinfo.is_main and (done or stop.requested or state.step % tcfg.checkpoint_period == 0):
                    _save(run_dir, model, optimizer, scheduler, state, cfg)
                periodic_eval = tcfg.eval_period and state.step % tcfg.eval_period == 0
                if evaluate_fn is not None and (done or periodic_eval):
                    evaluate()
                if stop.requested:
                    break
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()
        if board is not None:
            board.close()
    if state.bad_samples:
        log.warning("%d bad samples were skipped during training", state.bad_samples)
    return {"step": state.step, "seconds": time.perf_counter() - start, "model": model,
            "bad_samples": state.bad_samples, "stopped": state.step < tcfg.max_iter}


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
                                to_dict(cfg))


def _resume(run_dir: Path, model, optimizer, scheduler) -> TrainState | None:
    latest = ckpt.latest_checkpoint(run_dir / "checkpoints")
    if latest is None:
        log.warning("%s: no checkpoint to resume from; starting from step 0", run_dir)
        return None
    weights, train_state, _ = ckpt.load_checkpoint(latest)
    model.load_state_dict(weights)
    optimizer.load_state_dict(train_state["optimizer"])
    scheduler.load_state_dict(train_state["scheduler"])
    ckpt.restore_rng_state(train_state["rng"])
    log.info("resumed from %s (step %d)", latest, train_state["step"])
    return TrainState(step=int(train_state["step"]), epoch=int(train_state["epoch"]),
                      index_in_epoch=int(train_state["index_in_epoch"]),
                      bad_samples=int(train_state.get("bad_samples", 0)))


__all__ = ["train", "resolve_device", "lr_factor", "scaled_lr", "NonFiniteLossError",
           "TooManyBadSamplesError", "EpochView"]
