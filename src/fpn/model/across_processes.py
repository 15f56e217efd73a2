"""What a training step shares across processes, so that N processes compute one process's step.

Under DistributedDataParallel each process preprocesses only its share of the global batch. A
batch is zero-padded to its largest image; padded to each share's own largest image, the
processes would see other feature maps near the border and other anchors than one process
padding the whole batch (docs/distributed.md). ``largest_across_processes`` gives every process
the largest size of the global batch (one all-reduce of two integers per step), so the padding,
and with it the step, is the same. Without a process group (or with one process) it is a no-op.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def largest_across_processes(*values: int, device: torch.device | None = None) -> tuple[int, ...]:
    """The element-wise maximum of ``values`` over all processes (every process must call it)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tuple(values)
    on = device if device is not None and dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.int64, device=on)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tuple(int(v) for v in tensor.tolist())
