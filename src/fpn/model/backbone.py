"""The bottom-up pathway: a ResNet returning C2..C5 at strides 4, 8, 16, 32 (docs/paper.md §1).

The stem (conv1) is computed but not returned. Module names follow the paper's stages:
``stem``, ``res2`` .. ``res5``; inside a block ``conv1..3``, ``norm1..3`` and ``shortcut``.
``fpn.interop`` maps torchvision's and detectron2's names onto these. Each ``conv{i}`` is a
``ConvNorm`` that applies its ``norm{i}`` (``fpn.model.conv_norm``), so a block reads as the paper
draws it: ``relu(conv1(x))``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from fpn.config.schema import BackboneConfig
from fpn.model.conv_norm import ConvNorm, Projection

STAGE_STRIDES = {"c2": 4, "c3": 8, "c4": 16, "c5": 32}
BLOCKS_PER_STAGE = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}

NormFactory = Callable[[int], nn.Module]


def make_norm_factory(cfg: BackboneConfig) -> NormFactory:
    """A function channels -> normalisation layer, by ``cfg.norm`` (docs/paper.md §6)."""
    match cfg.norm:
        case "frozen_bn":
            return lambda channels: FrozenBatchNorm2d(channels, eps=cfg.frozen_bn_eps)
        case "bn":
            return nn.BatchNorm2d
        case "gn":
            return lambda channels: nn.GroupNorm(_gn_groups(channels, cfg.gn_groups), channels)
    raise ValueError(f"unknown norm {cfg.norm!r}")


def _gn_groups(channels: int, preferred: int) -> int:
    groups = min(preferred, channels)
    while channels % groups:
        groups -= 1
    return groups


def _conv_norm(block: nn.Module, suffix: str, in_ch: int, out_ch: int, kernel: int, *, stride: int = 1,
               norm: NormFactory) -> None:
    """``block.conv{suffix}``, a ConvNorm, and ``block.norm{suffix}``, its norm (registered in that order)."""
    layer = norm(out_ch)
    setattr(block, f"conv{suffix}", ConvNorm(in_ch, out_ch, kernel, stride=stride, norm=layer))
    setattr(block, f"norm{suffix}", layer)


def _projection(in_ch: int, out_ch: int, stride: int, norm: NormFactory) -> Projection | None:
    """The shortcut: the identity (None) when the shape is kept, else a 1x1 projection."""
    if stride == 1 and in_ch == out_ch:
        return None
    return Projection(in_ch, out_ch, stride, norm(out_ch))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_ch: int, width: int, stride: int, norm: NormFactory, stride_in_1x1: bool):
        super().__init__()
        out_ch = width * self.expansion
        _conv_norm(self, "1", in_ch, width, 3, stride=stride, norm=norm)
        _conv_norm(self, "2", width, out_ch, 3, norm=norm)
        self.shortcut = _projection(in_ch, out_ch, stride, norm)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = F.relu(self.conv1(x), inplace=True)
        out = self.conv2(out)
        out += identity
        return F.relu(out, inplace=True)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 with a residual connection (ResNet-50/101).

    ``stride_in_1x1`` puts the stride on the first 1x1 conv (MSRA / detectron2 weights) instead
    of the 3x3 (torchvision weights): same shapes, different outputs (docs/interop.md §1).
    """

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int, norm: NormFactory, stride_in_1x1: bool):
        super().__init__()
        out_ch = width * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        _conv_norm(self, "1", in_ch, width, 1, stride=stride_1x1, norm=norm)
        _conv_norm(self, "2", width, width, 3, stride=stride_3x3, norm=norm)
        _conv_norm(self, "3", width, out_ch, 1, norm=norm)
        self.shortcut = _projection(in_ch, out_ch, stride, norm)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = F.relu(self.conv1(x), inplace=True)
        out = F.relu(self.conv2(out), inplace=True)
        out = self.conv3(out)
        out += identity
        return F.relu(out, inplace=True)


class Stem(nn.Module):
    """conv1: 7x7 stride 2, norm, ReLU, 3x3 max-pool stride 2 (stride 4 in all)."""

    def __init__(self, out_ch: int, norm: NormFactory):
        super().__init__()
        _conv_norm(self, "", 3, out_ch, 7, stride=2, norm=norm)

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(F.relu(self.conv(x), inplace=True), kernel_size=3, stride=2, padding=1)


def make_stage(cfg: BackboneConfig, stage: int, in_ch: int, norm: NormFactory,
               first_stride: int | None = None) -> nn.Sequential:
    """The blocks of res{stage} (2..5); also used by the conv5 RoI head (ablation a)."""
    block = Bottleneck if cfg.depth >= 50 else BasicBlock
    width = cfg.width * 2 ** (stage - 2)
    stride = (1 if stage == 2 else 2) if first_stride is None else first_stride
    blocks = []
    for i in range(BLOCKS_PER_STAGE[cfg.depth][stage - 2]):
        blocks.append(block(in_ch, width, stride if i == 0 else 1, norm, cfg.stride_in_1x1))
        in_ch = width * block.expansion
    return nn.Sequential(*blocks)


def stage_channels(cfg: BackboneConfig) -> dict[str, int]:
    """Output channels of C2..C5: 256..2048 for ResNet-50/101, 64..512 for ResNet-18/34."""
    expansion = 4 if cfg.depth >= 50 else 1
    return {f"c{s}": cfg.width * 2 ** (s - 2) * expansion for s in range(2, 6)}


class ResNet(nn.Module):
    """ResNet bottom-up pathway.

    Args:
        cfg: depth, normalisation, frozen stages, stride placement, width.
        last_stage: the deepest stage to build (4 for the C4 baseline, whose res5 becomes
            the RoI head).
    """

    def __init__(self, cfg: BackboneConfig, last_stage: int = 5):
        super().__init__()
        norm = make_norm_factory(cfg)
        self.stem = Stem(cfg.width, norm)
        channels = stage_channels(cfg)
        in_ch = cfg.width
        self.stage_names = [f"res{s}" for s in range(2, last_stage + 1)]
        for stage in range(2, last_stage + 1):
            blocks = make_stage(cfg, stage, in_ch, norm)
            self.add_module(f"res{stage}", blocks)
            in_ch = channels[f"c{stage}"]
        self.out_channels = {f"c{s}": channels[f"c{s}"] for s in range(2, last_stage + 1)}
        self.strides = {name: STAGE_STRIDES[name] for name in self.out_channels}
        self.freeze(cfg.freeze_at)

    def freeze(self, freeze_at: int) -> None:
        """Stop gradients into the stem (1) and res2..res{freeze_at} (docs/paper.md §6)."""
        modules = [self.stem, *(getattr(self, n) for n in self.stage_names)][:freeze_at]
        for module in modules:
            for param in module.parameters():
                param.requires_grad_(False)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """(N, 3, H, W) -> {"c2": (N, C2, H/4, W/4), ..., "c5": (N, C5, H/32, W/32)}."""
        x = self.stem(images)
        features = {}
        for name in self.stage_names:
            x = getattr(self, name)(x)
            features["c" + name[3:]] = x
        return features
