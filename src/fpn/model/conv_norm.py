"""A convolution and its normalisation as one call, with the training-time fold as its own business.

``ConvNorm`` is detectron2's ``Conv2d(norm=...)`` for fpn's module names: the blocks of the
bottom-up pathway call ``self.conv1(x)`` and get ``norm1(conv1(x))``, while the norm stays
registered beside the convolution under the paper's name (``norm1``), so state-dict keys and
converted weights do not change.

The speed path lives here (the attribute ``fold_frozen_norm``: True when built; the detector's
speed paths set it on every ConvNorm in one pass, ``fpn.model.speed_paths``): in training mode a
``FrozenBatchNorm2d`` is folded into the convolution at every call, inside the autograd graph
(``conv_then_norm``). The frozen statistics are constants, so norm(W*x) = (s·W)*x + t with
s = gamma/sqrt(var + eps), t = beta - mean·s (``fpn.model.fuse.folded_conv_parameters``, with
which inference folds once): the gradient still reaches the convolution's weight (scaled by s, as
through the norm), and the activations are no longer multiplied and shifted on their own, forward
and backward. Equal to the unfolded pair to float rounding; ``fpn bench --train`` measures it.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from fpn.model.fuse import folded_conv_parameters


def conv_then_norm(conv: nn.Conv2d, norm: nn.Module, x: Tensor, fold: bool) -> Tensor:
    """``norm(conv(x))``; with ``fold``, a FrozenBatchNorm2d is folded into the convolution first."""
    if not (fold and isinstance(norm, FrozenBatchNorm2d)):
        return norm(nn.Conv2d.forward(conv, x))
    weight, bias = folded_conv_parameters(conv, norm)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


class ConvNorm(nn.Conv2d):
    """A bias-free ``kernel`` x ``kernel`` convolution (padding ``kernel // 2``) followed by ``norm``.

    Args:
        norm: the normalisation layer; its owner registers it (e.g. as ``norm1`` beside ``conv1``),
            this module only applies it.

    Attributes:
        fold_frozen_norm: in training mode, fold a FrozenBatchNorm2d into the convolution at every
            call (eval mode keeps the pair: ``fpn.model.fuse`` folds once for inference). True when
            built; ``fpn.model.speed_paths.set_training_speed_paths`` sets it on a whole model.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, *, stride: int = 1, norm: nn.Module):
        super().__init__(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False)
        self._norm = [norm]  # a list: not a submodule of this one (its owner registers it)
        self.fold_frozen_norm = True

    @property
    def norm(self) -> nn.Module:
        return self._norm[0]

    def forward(self, x: Tensor) -> Tensor:
        return conv_then_norm(self, self.norm, x, self.fold_frozen_norm and self.training)


class Projection(nn.Sequential):
    """The 1x1 projection shortcut of a residual block: ``(ConvNorm, its norm)``, keys ``0.*``, ``1.*``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: nn.Module):
        super().__init__(ConvNorm(in_channels, out_channels, 1, stride=stride, norm=norm), norm)

    def forward(self, x: Tensor) -> Tensor:
        return self[0](x)  # the ConvNorm applies the norm (or, folded for inference, holds it)
