"""Optional int8 for the bottom-up pathway and the pyramid (never on unless asked for).

``quantize_pyramid(model, calibration_images)`` calibrates activation ranges on a few images,
converts a copy of the folded backbone and the neck to int8 with PyTorch's FX graph-mode
quantization (per-channel weights, x86 / fbgemm kernels) and returns an ``Int8Detector``: the
same detector, called the same way, whose pyramid runs in int8 while the RPN and RoI heads stay
in fp32. The float model is left as it was (its forward knows nothing of int8, as torchvision
keeps its quantized models apart). The accuracy cost is measured, not assumed:
``python benchmarks/deploy_accuracy.py``.
"""

from __future__ import annotations

import copy
import logging
import warnings

import torch
from torch import Tensor, nn

from fpn.errors import ConfigError
from fpn.model.fuse import inference_copy, parameters_version

log = logging.getLogger(__name__)

class _Pyramid(nn.Module):
    def __init__(self, backbone: nn.Module, neck: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.neck = neck

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return self.neck(self.backbone(images))


@torch.no_grad()
def quantize_pyramid(model: nn.Module, calibration_images: list[Tensor], backend: str = "x86"
                     ) -> Int8Detector:
    """Calibrate on ``calibration_images`` (3 x H x W in [0, 1]); ``model`` with an int8 pyramid."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    if not calibration_images:
        raise ValueError("int8 needs at least one calibration image")
    if getattr(model, "segment_proposals", None) is not None:
        raise ConfigError("the int8 pyramid serves the RPN and box head; segment-proposal models "
                         "(model.proposals=segments) run in fp32")
    if backend not in torch.backends.quantized.supported_engines:
        raise ValueError(f"quantized backend {backend!r} is not available here "
                         f"({torch.backends.quantized.supported_engines})")
    torch.backends.quantized.engine = backend
    model.eval()
    pyramid = _Pyramid(inference_copy(model.backbone, channels_last=False), copy.deepcopy(model.neck)).eval()
    pyramid = _without_identities(pyramid)  # folded norms leave Identity between conv and ReLU
    batches = [model.preprocess([image.to(model.device)])[0].tensor for image in calibration_images]
    with warnings.catch_warnings():  # the FX quantization API announces its own deprecation
        warnings.simplefilter("ignore")
        prepared = prepare_fx(pyramid.cpu(), get_default_qconfig_mapping(backend),
                              example_inputs=(batches[0].cpu(),))
        for batch in batches:
            prepared(batch.cpu())
        quantized = convert_fx(prepared)
    return Int8Detector(model, quantized)


class Int8Detector(nn.Module):
    """A float detector whose bottom-up pathway and pyramid run as a calibrated int8 graph.

    Called like the float detector in eval mode. If the float model's weights change after
    calibration, the int8 graph no longer describes them: the pyramid falls back to fp32 with a
    warning (calibrate again with ``quantize_pyramid``).
    """

    def __init__(self, model: nn.Module, int8_pyramid: nn.Module):
        super().__init__()
        self.model = model
        self.int8_pyramid = int8_pyramid
        self._calibrated_version = _version(model)
        self._warned = False

    @property
    def cfg(self):
        return self.model.cfg

    @property
    def active(self) -> bool:
        """Whether the int8 graph still matches the float model's weights."""
        return _version(self.model) == self._calibrated_version

    def features(self, images: Tensor) -> dict[str, Tensor]:
        """(N, 3, H, W) preprocessed batch -> the pyramid, in int8 where still valid."""
        if not self.active:
            if not self._warned:
                log.warning("the weights changed since quantize_pyramid(): int8 is off; quantize again")
                self._warned = True
            return self.model.features(images)
        return {level: x.to(images.device) for level, x in self.int8_pyramid(images.cpu()).items()}

    @torch.no_grad()
    def forward(self, images: list[Tensor], *, proposals: list[Tensor] | None = None,
                return_proposals: bool = False, paste_masks: bool = True) -> list[dict[str, Tensor]]:
        """As the float detector's eval forward (``paste_masks`` is accepted for the same call; a
        segment-proposal model is never quantized)."""
        if self.model.training:
            raise ValueError("the int8 pyramid is for inference: call model.eval() first")
        batch, _ = self.model.preprocess(images, proposals=proposals)
        return self.model.heads(self.features(batch.tensor), batch, return_proposals=return_proposals)


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


def _version(model: nn.Module) -> tuple:
    return parameters_version(model.backbone) + parameters_version(model.neck)
