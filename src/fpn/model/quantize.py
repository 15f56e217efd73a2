"""Optional int8 for the bottom-up pathway and the pyramid (never on unless asked for).

``quantize_pyramid(model, calibration_images)`` calibrates activation ranges on a few images and
converts the folded backbone and the neck to int8 with PyTorch's FX graph-mode quantization
(per-channel weights, x86 / fbgemm kernels). The RPN and RoI heads stay in fp32. The detector
then uses the int8 pyramid in eval mode until ``dequantize(model)`` or a change of its weights.
The accuracy cost is measured, not assumed: ``python benchmarks/deploy_accuracy.py``.
"""

from __future__ import annotations

import copy
import logging
import warnings

import torch
from torch import Tensor, nn

from fpn.model.fuse import inference_copy, parameters_version

log = logging.getLogger(__name__)

CACHE_KEY = "_int8_pyramid"


class _Pyramid(nn.Module):
    def __init__(self, backbone: nn.Module, neck: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.neck = neck

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return self.neck(self.backbone(images))


@torch.no_grad()
def quantize_pyramid(model: nn.Module, calibration_images: list[Tensor], backend: str = "x86") -> None:
    """Calibrate on ``calibration_images`` (3 x H x W in [0, 1]) and switch ``model`` to int8 features."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    if not calibration_images:
        raise ValueError("int8 needs at least one calibration image")
    if backend not in torch.backends.quantized.supported_engines:
        raise ValueError(f"quantized backend {backend!r} is not available here "
                         f"({torch.backends.quantized.supported_engines})")
    torch.backends.quantized.engine = backend
    model.eval()
    pyramid = _Pyramid(inference_copy(model.backbone, channels_last=False), copy.deepcopy(model.neck)).eval()
    pyramid = _without_identities(pyramid)  # folded norms leave Identity between conv and ReLU
    batches = [model.preprocess([image.to(next(model.parameters()).device)])[0].tensor
               for image in calibration_images]
    with warnings.catch_warnings():  # the FX quantization API announces its own deprecation
        warnings.simplefilter("ignore")
        prepared = prepare_fx(pyramid.cpu(), get_default_qconfig_mapping(backend),
                              example_inputs=(batches[0].cpu(),))
        for batch in batches:
            prepared(batch.cpu())
        quantized = convert_fx(prepared)
    model.__dict__[CACHE_KEY] = (_version(model), quantized)


def _without_identities(module: nn.Module) -> torch.fx.GraphModule:
    """``module`` traced with its ``nn.Identity`` calls removed, so that FX quantization sees
    conv -> ReLU and fuses the pair into one int8 kernel."""
    graph_module = torch.fx.symbolic_trace(module)
    for node in list(graph_module.graph.nodes):
        if node.op == "call_module" and isinstance(graph_module.get_submodule(node.target), nn.Identity):
            node.replace_all_uses_with(node.args[0])
            graph_module.graph.erase_node(node)
    graph_module.graph.lint()
    graph_module.recompile()
    return graph_module


def int8_pyramid(model: nn.Module) -> nn.Module | None:
    """The int8 pyramid if one was made for the current weights (else None, with a warning)."""
    entry = model.__dict__.get(CACHE_KEY)
    if entry is None:
        return None
    if entry[0] != _version(model):
        log.warning("the weights changed since quantize_pyramid(): int8 is off; quantize again")
        dequantize(model)
        return None
    return entry[1]


def dequantize(model: nn.Module) -> None:
    model.__dict__.pop(CACHE_KEY, None)


def _version(model: nn.Module) -> tuple:
    return parameters_version(model.backbone) + parameters_version(model.neck)
