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

So channels-last is used only when every convolution that reads a feature map in channels-last
memory, the image excepted, reads a multiple of 16 channels: those of the bottom-up pathway after
the stem's 7x7 (each a multiple of ``model.backbone.width``), of the pyramid (the stage counts and
d, ``model.neck.channels``) and of the RPN head (d and ``model.rpn.conv_channels``). The counts are
read from the built parts' convolutions, not from the config, so a neck or an RPN passed into the
detector by hand is checked like a built one. Otherwise the speed paths keep the plain layout,
which computes the same function. The choice depends on the model's structure alone, so a model
gives the same layout, and the same numbers, on every host whatever its ISA.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch
from torch import nn

# Floats in one AVX-512 register: channel counts that are multiples of it fill whole vectors.
CHANNELS_LAST_MULTIPLE = 16


def convolution_input_channels(parts: Mapping[str, nn.Module | None], *, skip: Collection[nn.Module] = ()
                               ) -> dict[str, int]:
    """The channel count each convolution of ``parts`` reads, by its module name in the detector
    (``"neck.output.p2"``); ``skip``: convolutions left out (the stem's, which reads the image)."""
    skipped = {id(module) for module in skip}
    return {name: module.in_channels
            for prefix, part in parts.items() if part is not None
            for name, module in part.named_modules(prefix=prefix)
            if isinstance(module, nn.Conv2d) and id(module) not in skipped}


def channels_last_is_safe(channel_counts: Mapping[str, int]) -> bool:
    """Whether the speed paths may run in channels-last memory: every count (from
    ``convolution_input_channels``) is a multiple of ``CHANNELS_LAST_MULTIPLE``."""
    return all(count % CHANNELS_LAST_MULTIPLE == 0 for count in channel_counts.values())


def speed_path_memory_format(channel_counts: Mapping[str, int]) -> torch.memory_format:
    """``torch.channels_last`` where ``channels_last_is_safe``, else ``torch.contiguous_format``."""
    return torch.channels_last if channels_last_is_safe(channel_counts) else torch.contiguous_format
