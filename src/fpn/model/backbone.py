"""The bottom-up pathway: a ResNet returning C2..C5 at strides 4, 8, 16, 32 (docs/paper.md §1).

The stem (conv1) is computed but not returned. Module names follow the paper's stages:
``stem``, ``res2`` .. ``res5``; inside a block ``conv1..3``, ``norm1..3`` and ``shortcut``.
``fpn.interop`` maps torchvision's and detectron2's names onto these.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from fpn.config import BackboneConfig
from fpn.model.fuse import folded_conv_parameters

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


def conv_norm(in_ch: int, out_ch: int, kernel: int, stride: int, norm: NormFactory) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False), norm(out_ch)
    )


def conv_then_norm(conv: nn.Conv2d, norm: nn.Module, x: Tensor, fold: bool) -> Tensor:
    """``norm(conv(x))``; with ``fold``, a FrozenBatchNorm2d is folded into the convolution.

    The frozen statistics are constants, so norm(W*x) = (s·W)*x + t with s = gamma/sqrt(var + eps),
    t = beta - mean·s (``fpn.model.fuse.folded_conv_parameters``, with which inference folds
    once). Here s·W is formed at every call, inside the autograd graph: the gradient still
    reaches ``conv.weight`` (scaled by s, as through the norm), and the activations are no longer
    multiplied and shifted on their own, forward and backward. Equal to the unfolded pair to float rounding.
    """
    if not (fold and isinstance(norm, FrozenBatchNorm2d)):
        return norm(conv(x))
    weight, bias = folded_conv_parameters(conv, norm)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


class FoldsFrozenNorm(nn.Module):
    """A module whose convolutions are followed by norms; in training mode ``fold_frozen_norm``
    folds the frozen ones (eval mode keeps the plain pair: ``fpn.model.fuse`` folds for it)."""

    fold_frozen_norm = True  # FasterRCNN.fast_training sets it on every such module

    @property
    def _fold(self) -> bool:
        return self.fold_frozen_norm and self.training

    def _shortcut(self, x: Tensor) -> Tensor:
        if self.shortcut is None:
            return x
        return conv_then_norm(self.shortcut[0], self.shortcut[1], x, self._fold)


class BasicBlock(FoldsFrozenNorm):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_ch: int, width: int, stride: int, norm: NormFactory, stride_in_1x1: bool):
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 3, stride=stride, padding=1, bias=False)
        self.norm1 = norm(width)
        self.conv2 = nn.Conv2d(width, out_ch, 3, padding=1, bias=False)
        self.norm2 = norm(out_ch)
        self.shortcut = conv_norm(in_ch, out_ch, 1, stride, norm) if stride != 1 or in_ch != out_ch else None

    def forward(self, x: Tensor) -> Tensor:
        fold = self._fold
        identity = self._shortcut(x)
        out = F.relu(conv_then_norm(self.conv1, self.norm1, x, fold), inplace=True)
        out = conv_then_norm(self.conv2, self.norm2, out, fold)
        out += identity
        return F.relu(out, inplace=True)


class Bottleneck(FoldsFrozenNorm):
    """1x1 -> 3x3 -> 1x1 with a residual connection (ResNet-50/101).

    ``stride_in_1x1`` puts the stride on the first 1x1 conv (MSRA / detectron2 weights) instead
    of the 3x3 (torchvision weights): same shapes, different outputs (docs/interop.md §1).
    """

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int, norm: NormFactory, stride_in_1x1: bool):
        super().__init__()
        out_ch = width * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(in_ch, width, 1, stride=stride_1x1, bias=False)
        self.norm1 = norm(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride_3x3, padding=1, bias=False)
        self.norm2 = norm(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.norm3 = norm(out_ch)
        self.shortcut = conv_norm(in_ch, out_ch, 1, stride, norm) if stride != 1 or in_ch != out_ch else None

    def forward(self, x: Tensor) -> Tensor:
        fold = self._fold
        identity = self._shortcut(x)
        out = F.relu(conv_then_norm(self.conv1, self.norm1, x, fold), inplace=True)
        out = F.relu(conv_then_norm(self.conv2, self.norm2, out, fold), inplace=True)
        out = conv_then_norm(self.conv3, self.norm3, out, fold)
        out += identity
        return F.relu(out, inplace=True)


class Stem(FoldsFrozenNorm):
    """conv1: 7x7 stride 2, norm, ReLU, 3x3 max-pool stride 2 (stride 4 in all)."""

    def __init__(self, out_ch: int, norm: NormFactory):
        super().__init__()
        self.conv = nn.Conv2d(3, out_ch, 7, stride=2, padding=3, bias=False)
        self.norm = norm(out_ch)

    def forward(self, x: Tensor) -> Tensor:
        out = conv_then_norm(self.conv, self.norm, x, self._fold)
        return F.max_pool2d(F.relu(out, inplace=True), kernel_size=3, stride=2, padding=1)


def make_stage(
    cfg: BackboneConfig, stage: int, in_ch: int, norm: NormFactory, first_stride: int | None = None
) -> nn.Sequential:
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
            self.add_module(f"res{stage}", make_stage(cfg, stage, in_ch, norm))
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
