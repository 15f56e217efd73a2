"""Pre-training the bottom-up pathway as a classifier: SGD on crops, and held-out accuracy.

The loop is deliberately plain (docs/pretraining.md): SGD with momentum and weight decay, a
linear warm-up, then a cosine decay to zero, cross-entropy over the crop classes (0 background).
Item ``k`` of the sampler is crop ``k mod n`` drawn for epoch ``k div n``, so every loader
worker draws the same crops whatever the number of workers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from fpn.config.schema import PretrainConfig
from fpn.data.crops import ObjectCrops
from fpn.data.unreadable import Unreadable
from fpn.progress import progress as progress_bar


class EpochCrops(Dataset):
    """Crop ``k mod n`` of epoch ``k div n``: one index space for every epoch."""

    def __init__(self, crops: ObjectCrops):
        self.crops = crops

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, k: int) -> tuple[Tensor, int] | Unreadable:
        return self.crops.crop(k % len(self.crops), epoch=k // len(self.crops))


class ShuffledEpochs(Sampler[int]):
    """Indices ``epoch * n + i`` in a seeded order per epoch, for ``total`` samples."""

    def __init__(self, n: int, total: int, seed: int):
        self.n, self.total, self.seed = n, total, seed

    def __iter__(self) -> Iterator[int]:
        epoch, emitted = 0, 0
        while emitted < self.total:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 7919 + epoch))
            for i in order.tolist()[: self.total - emitted]:
                yield epoch * self.n + i
            emitted += min(self.n, self.total - emitted)
            epoch += 1

    def __len__(self) -> int:
        return self.total


def collate_crops(batch: list) -> tuple[Tensor, Tensor, int]:
    """(crops (B, 3, S, S), labels (B,), number of unreadable samples dropped)."""
    good = [sample for sample in batch if not isinstance(sample, Unreadable)]
    if not good:
        return torch.zeros(0), torch.zeros(0, dtype=torch.int64), len(batch)
    return (torch.stack([crop for crop, _ in good]), torch.tensor([label for _, label in good]),
            len(batch) - len(good))


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Linear warm-up over ``warmup_iters``, then a cosine from ``lr`` to 0 at ``iters``."""
    if step < cfg.warmup_iters:
        return cfg.lr * (step + 1) / cfg.warmup_iters
    progress = (step - cfg.warmup_iters) / max(1, cfg.iters - cfg.warmup_iters)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_classifier(model: nn.Module, crops: ObjectCrops, cfg: PretrainConfig, *, normalize, device,
                     workers: int = 1, progress: bool = True) -> list[dict[str, float]]:
    """``cfg.iters`` SGD steps of ``model`` on ``crops``; the loss and accuracy every 50 steps.

    ``normalize`` maps a (B, 3, S, S) batch in [0, 1] to the model's input (the detector's own
    normalisation, so the weights carry over with its conventions).
    """
    decayed = [p for p in model.parameters() if p.ndim > 1]
    others = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD([{"params": decayed, "weight_decay": cfg.weight_decay},
                                 {"params": others, "weight_decay": 0.0}], lr=cfg.lr, momentum=cfg.momentum)
    sampler = ShuffledEpochs(len(crops), cfg.iters * cfg.batch_size, cfg.seed)
    loader = DataLoader(EpochCrops(crops), batch_size=cfg.batch_size, sampler=sampler, num_workers=workers,
                        collate_fn=collate_crops, persistent_workers=workers > 0)
    model.to(device).train()
    log, window = [], []
    bar = progress_bar(total=cfg.iters, desc="pretrain", enabled=progress, period=50)
    for step, (images, labels, _) in enumerate(loader):
        if not len(labels):
            continue
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        images, labels = normalize(images.to(device)), labels.to(device)
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"pretraining step {step + 1}: the loss is {loss.item()}; "
                                     "lower pretrain.lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        window.append((loss.item(), (logits.argmax(1) == labels).float().mean().item()))
        if (step + 1) % 50 == 0 or step + 1 == cfg.iters:
            losses, accuracies = zip(*window, strict=True)
            log.append({"step": step + 1, "loss": sum(losses) / len(losses),
                        "accuracy": sum(accuracies) / len(accuracies), "lr": lr_at(step, cfg)})
            bar.set_postfix(loss=f"{log[-1]['loss']:.3f}", acc=f"{log[-1]['accuracy']:.2f}")
            window = []
        bar.update(1)  # after the postfix: a plain line at step 50 shows step 50's numbers
    bar.close()
    return log


@torch.no_grad()
def evaluate_classifier(model: nn.Module, crops: ObjectCrops, *, normalize, device, batch_size: int = 256,
                        workers: int = 0) -> dict[str, float | list[float]]:
    """Top-1 accuracy on ``crops`` (epoch 0's draws), per class, and the majority class's share
    (what a classifier that ignores its input reaches)."""
    model.to(device).eval()
    loader = DataLoader(crops, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=collate_crops)
    num_classes = model.classifier.out_features
    correct, total = torch.zeros(num_classes), torch.zeros(num_classes)
    for images, labels, _ in loader:
        if not len(labels):
            continue
        predicted = model(normalize(images.to(device))).argmax(1).cpu()
        total += torch.bincount(labels, minlength=num_classes).float()
        correct += torch.bincount(labels[predicted == labels], minlength=num_classes).float()
    model.train()
    count = max(1.0, float(total.sum()))
    return {"accuracy": float(correct.sum()) / count, "majority": float(total.max()) / count,
            "crops": int(total.sum()),
            "per_class": [float(c / t) if t else float("nan") for c, t in zip(correct, total, strict=True)]}
