"""Distributed training on PyTorch's own engine: ``torchrun`` starts the processes, we join them.

``torchrun --nproc_per_node N -m fpn train ...`` (multi-node: torchrun's ``--nnodes``,
``--rdzv_endpoint`` flags) sets RANK, WORLD_SIZE and LOCAL_RANK; ``init()`` then joins the
process group with NCCL on GPUs and gloo on CPUs. Each rank takes its share of every global
batch; DistributedDataParallel averages the gradients; only rank 0 writes logs and checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes in the environment (a no-op without one)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def info() -> DistInfo:
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def is_main_process() -> bool:
    """Rank 0 (or not distributed), also before the process group is joined (torchrun's RANK)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each value's mean over the ranks (every rank must call it); ``values`` when not distributed.

    The losses of a rank are its share's sums divided by the global example count over the world
    size (``fpn.model.loss_normalizer``), so their mean over the ranks is the loss of the whole
    global batch: what one process would log.
    """
    current = info()
    if not current.enabled:
        return values
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return dict(zip(values, (tensor / current.world_size).tolist(), strict=True))


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (just ``[obj]`` when not distributed)."""
    current = info()
    if not current.enabled:
        return [obj]
    gathered: list[Any] = [None] * current.world_size
    dist.all_gather_object(gathered, obj)
    return gathered
