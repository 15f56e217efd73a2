"""The inference path: frozen normalisation folded into the convolutions, channels-last memory.

A frozen (or eval-mode) BatchNorm after a convolution is an affine map per channel, so it can be
folded into the convolution's weights and bias: y = s·(W*x + b) + t = (s·W)*x + (s·b + t) with
s = gamma / sqrt(var + eps) and t = beta - mean·s. The result computes the same function with
one pass over memory less per layer. The detector builds such a copy of its bottom-up pathway
when it is put in eval mode and uses it until its weights change; training never sees it.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

FOLDABLE = (FrozenBatchNorm2d, nn.BatchNorm2d)


def folded_conv_parameters(conv: nn.Conv2d, norm: nn.Module) -> tuple[Tensor, Tensor]:
    """The weight (C_out, C_in, k, k) and bias (C_out,) of the one convolution equal to
    ``norm(conv(x))`` for a frozen or eval-mode BatchNorm: s·W and s·(b - mean) + beta.

    Differentiable in the convolution's and the norm's parameters: training folds at every step
    through it (``fpn.model.conv_norm.conv_then_norm``), inference once (``fold_norm_into_conv``).
    """
    scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)  # (C_out,), as FrozenBatchNorm2d
    conv_bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
    return conv.weight * scale[:, None, None, None], (conv_bias - norm.running_mean) * scale + norm.bias


@torch.no_grad()
def fold_norm_into_conv(conv: nn.Conv2d, norm: nn.Module) -> nn.Conv2d:
    """A new convolution equal to ``norm(conv(x))`` for a frozen or eval-mode BatchNorm."""
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, device=conv.weight.device,
                      dtype=conv.weight.dtype)
    weight, bias = folded_conv_parameters(conv, norm)
    fused.weight.copy_(weight)
    fused.bias.copy_(bias)
    fused.requires_grad_(False)
    return fused


def _fold_pairs(module: nn.Module) -> int:
    """Fold every (conv, norm) attribute pair and Sequential(conv, norm) inside ``module``."""
    folded = 0
    for child in list(module.modules()):
        if isinstance(child, nn.Sequential):
            for i in range(len(child) - 1):
                if isinstance(child[i], nn.Conv2d) and isinstance(child[i + 1], FOLDABLE):
                    child[i] = fold_norm_into_conv(child[i], child[i + 1])
                    child[i + 1] = nn.Identity()
                    folded += 1
        names = dict(child.named_children())
        for name, conv in names.items():
            norm_name = _norm_name_for(name)
            if isinstance(conv, nn.Conv2d) and isinstance(names.get(norm_name), FOLDABLE):
                setattr(child, name, fold_norm_into_conv(conv, names[norm_name]))
                setattr(child, norm_name, nn.Identity())
                folded += 1
    return folded


def _norm_name_for(conv_name: str) -> str:
    """Our naming: conv1 -> norm1, conv -> norm (the stem)."""
    return "norm" + conv_name[len("conv"):] if conv_name.startswith("conv") else ""


def inference_copy(backbone: nn.Module, channels_last: bool = True) -> nn.Module:
    """A frozen copy of ``backbone`` with every foldable norm folded, in channels-last memory."""
    fused = copy.deepcopy(backbone).eval()
    _fold_pairs(fused)
    fused.requires_grad_(False)
    if channels_last:
        fused = fused.to(memory_format=torch.channels_last)
    return fused


def parameters_version(module: nn.Module) -> tuple:
    """Changes whenever a parameter or buffer is replaced or modified in place, or a norm's eps.

    Tensors made under ``torch.inference_mode`` keep no version counter (and cannot be changed
    in place outside it); their storage address stands for them.
    """
    tensors = tuple((t.data_ptr(), -1 if t.is_inference() else t._version)
                    for t in (*module.parameters(), *module.buffers()))
    return tensors + tuple(m.eps for m in module.modules() if isinstance(m, FOLDABLE))


class InferenceCopy:
    """The folded (and, by default, channels-last) copy of a module that inference runs, rebuilt
    whenever the module's weights change (``parameters_version``), optionally through ``torch.compile``.

    A detector holds one as a plain attribute: the copy is not a submodule, so it adds nothing to
    the state dict and is never trained.
    """

    def __init__(self):
        self.version: tuple | None = None
        self.module: nn.Module | None = None

    def of(self, module: nn.Module, *, compile: bool = False, channels_last: bool = True) -> nn.Module:
        """The copy of ``module``, made (or made again) if its weights, ``compile`` or the layout
        changed."""
        version = (parameters_version(module), compile, channels_last)
        if self.module is None or self.version != version:
            with torch.inference_mode(False):  # ordinary tensors, usable outside inference mode too
                copy_ = inference_copy(module, channels_last=channels_last)
            self.module = torch.compile(copy_, dynamic=True) if compile else copy_
            self.version = version
        return self.module
