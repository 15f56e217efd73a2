"""Loss normalisation that does not depend on how a batch is spread over processes.

The RPN and RoI losses are sums over sampled examples divided by a count. Divided by each
process's own count, a step under DistributedDataParallel (which averages gradients over W
ranks) would weigh images differently from one process on the same global batch whenever the
ranks sample different numbers of examples (as real images of different sizes and contents do).
Dividing every rank's sum by (global count / W) makes the averaged gradient exactly the
single-process one: sum_r sum_i / global count (as mmdetection's ``avg_factor``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def loss_normalizer(local_count: int, device: torch.device) -> float:
    """The divisor for this process's summed loss: the global example count over the world size.

    Without a process group (or a group of one) it is ``local_count``; never below 1.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return float(max(1, local_count))
    count = torch.tensor([float(local_count)], dtype=torch.float64,
                         device=device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(count)
    return max(1.0, float(count.item())) / dist.get_world_size()
