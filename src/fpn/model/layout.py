"""The memory layout of the speed paths: channels-last only where the channel counts allow it.

Channels-last memory (NHWC) makes the CPU's convolutions faster, forward and backward, and the
training and inference speed paths of ``FasterRCNN`` use it (docs/architecture.md). But oneDNN
runs channels-last convolutions through other kernels than the plain layout's (brgemm kernels
on NHWC instead of direct kernels on channel blocks padded to the vector width), and on AVX-512
hosts a training step of a ResNet at width 8 in channels-last memory crashed the process
(SIGSEGV, "double free or corruption") in its backward pass, while widths 16 and 32, the plain
layout, oneDNN switched off, or oneDNN limited to AVX2 ran (issue 25;
docs/upstream/onednn_avx512_channels_last.md holds the reproducer). At width 8 the stem and res2
have 8 channels: fewer than one AVX-512 vector of 16 floats.

So channels-last is used only when every convolution of the bottom-up pathway and the pyramid
has a channel count that is a multiple of 16 (the ResNet's width, from which every stage's
count is a multiple; the pyramid's d; the RPN's hidden conv). Otherwise the speed paths keep
the plain layout, which computes the same function. The choice is made from the config alone,
so a config gives the same layout, and the same numbers, on every host whatever its ISA.
"""

from __future__ import annotations

import torch

from fpn.config import ModelConfig

# Floats in one AVX-512 register: channel counts that are multiples of it fill whole vectors.
CHANNELS_LAST_MULTIPLE = 16


def body_channel_counts(cfg: ModelConfig) -> dict[str, int]:
    """The channel counts that set the width of every convolution of the bottom-up pathway,
    the pyramid and the RPN's hidden conv, by config field (each stage's count is a multiple of
    ``backbone.width``; the stem's 3 input channels are the image's)."""
    counts = {"model.backbone.width": cfg.backbone.width}
    if cfg.neck.kind == "fpn":
        counts["model.neck.channels"] = cfg.neck.channels
    if cfg.proposals == "rpn" and cfg.rpn.conv_channels is not None:
        counts["model.rpn.conv_channels"] = cfg.rpn.conv_channels
    return counts


def channels_last_is_safe(cfg: ModelConfig) -> bool:
    """Whether the speed paths may run this model in channels-last memory: every body channel
    count is a multiple of ``CHANNELS_LAST_MULTIPLE``."""
    return all(count % CHANNELS_LAST_MULTIPLE == 0 for count in body_channel_counts(cfg).values())


def speed_path_memory_format(cfg: ModelConfig) -> torch.memory_format:
    """``torch.channels_last`` where ``channels_last_is_safe``, else ``torch.contiguous_format``."""
    return torch.channels_last if channels_last_is_safe(cfg) else torch.contiguous_format
