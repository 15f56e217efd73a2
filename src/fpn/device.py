"""Where tensors go: the device is chosen at run time, never assumed."""

from __future__ import annotations

import torch

from fpn.errors import ConfigError


def resolve_device(name: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: this process's GPU (LOCAL_RANK under torchrun) when CUDA is present, else the CPU.

    A name torch does not know, or ``cuda`` on a machine without CUDA, is a ``ConfigError``.
    """
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {name!r}: not a device (cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r}: CUDA is not available on this machine (use cpu or auto)")
    return device
