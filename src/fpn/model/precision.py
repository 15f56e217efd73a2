"""The precision the layers compute in at inference: fp32, bf16 or int8, and how ``auto`` chooses.

Only the convolutions and fully connected layers run low. bf16 runs the detector under
``torch.autocast`` (convolutions and fc layers in bf16, their weights kept in fp32); the RPN and
the box head hand their outputs over in fp32 (``rpn.py``, ``roi_heads.py``), so box decoding,
clipping, the level mapper (docs/paper.md §3, Eq. 1), score thresholds and NMS compute in fp32
whatever the layers ran in. int8 is the calibrated int8 pyramid of ``fpn.model.quantize``
(bottom-up pathway and neck in int8, the heads in fp32).

``auto`` decides once per process from what the CPU computes natively (``fpn.hardware.CpuInfo``:
the flags of ``/proc/cpuinfo`` and ``torch.backends.cpu.get_cpu_capability()``), and never picks a precision
whose accuracy gate failed for the kind of model (``GATES_PASSED``, each entry asserted by
``tests/bench/test_gates.py``):

1. CUDA: bf16 autocast where the GPU has bf16 (Ampere and later), else fp32.
2. A CPU with bf16 dot products (``avx512_bf16`` or ``amx_bf16`` on x86, ``bf16`` on Arm): bf16.
   It covers every convolution and fc layer, heads included, and needs no calibration.
3. A CPU with int8 dot products (``avx512_vnni``, ``avx_vnni`` or ``amx_int8``) and images to
   calibrate on: int8 (the pyramid only; the heads stay fp32).
4. Otherwise fp32: emulated bf16 is several times slower than fp32 (measured by ``fpn bench``
   on an AVX2-only CPU), and int8 without VNNI gains little.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from fpn.config.schema import ModelConfig
from fpn.errors import PrecisionError
from fpn.hardware import CpuInfo, autocast, native_bf16, read_cpu_info

log = logging.getLogger(__name__)


Precision = Literal["auto", "fp32", "bf16", "int8"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "int8")
ModelKind = Literal["fpn", "torchvision", "foreign", "segments"]

# (model kind, precision) pairs whose accuracy gate passed: box AP of bf16 within 0.5 of fp32 and of
# int8 within 1.0 on a trained fpn run; on torchvision-converted R50-FPN weights, >= 95% of fp32's
# detections above 0.5 kept (IoU >= 0.9, same label). tests/bench/test_gates.py measures every
# gate and checks its verdict against this table; `auto` picks nothing outside it. torchvision's
# bf16 and int8 gates failed on the stand-in for its weights that can be measured without them
# (docs/precision.md gives the numbers and why the stand-in is harsher than trained weights):
# converted torchvision models stay fp32 under `auto` until a run on real weights says otherwise.
GATES_PASSED: dict[str, frozenset[str]] = {
    "fpn": frozenset({"fp32", "bf16", "int8"}),
    "torchvision": frozenset({"fp32"}),
    "foreign": frozenset({"fp32"}),  # detectron2 / mmdetection conventions: no gate measured
    "segments": frozenset({"fp32"}),  # segment proposals: no gate measured
}

def model_kind(cfg: ModelConfig) -> ModelKind:
    """Which accuracy gate speaks for a model; its conventions say where its weights came from.

    torchvision's P6 stride quirk (``rpn.anchors.stride_from_feature_size``) is set by converting
    torchvision weights and kept when fine-tuning from them; detectron2 and mmdetection weights
    read 0-255 pixels (``input.pixel_scale``); everything else was trained by fpn.
    """
    if cfg.proposals == "segments":
        return "segments"
    if cfg.rpn.anchors.stride_from_feature_size:
        return "torchvision"
    if cfg.input.pixel_scale != 1.0:
        return "foreign"
    return "fpn"


@dataclass(frozen=True)
class Choice:
    precision: Literal["fp32", "bf16", "int8"]
    reason: str


def choose_precision(requested: str, *, kind: str, device_type: str, cpu: CpuInfo,
                     can_calibrate: bool = True, cuda_bf16: bool = False) -> Choice:
    """The precision to run (and why): ``requested`` itself unless it is ``auto`` (module docstring)."""
    if requested not in PRECISIONS:
        raise PrecisionError(f"precision {requested!r} is not one of {list(PRECISIONS)}")
    if requested != "auto":
        return Choice(requested, "asked for")  # type: ignore[arg-type]
    gated = GATES_PASSED.get(kind, frozenset({"fp32"}))
    if device_type == "cuda":
        if cuda_bf16 and "bf16" in gated:
            return Choice("bf16", "the GPU computes bf16")
        return Choice("fp32", "the GPU has no bf16" if not cuda_bf16 else f"no bf16 gate for {kind} models")
    if device_type != "cpu":
        return Choice("fp32", f"no low precision is chosen on {device_type}")
    if cpu.native_bf16 and "bf16" in gated:
        return Choice("bf16", "the CPU computes bf16 natively")
    if cpu.native_int8 and "int8" in gated and can_calibrate:
        return Choice("int8", "the CPU computes int8 natively (VNNI/AMX)")
    if cpu.native_bf16 or cpu.native_int8:
        return Choice("fp32", f"no passed gate for {kind} models at the CPU's native precision"
                      + ("" if can_calibrate else " or no images to calibrate int8 on"))
    return Choice("fp32", "no native bf16 or int8 on this CPU (emulated bf16 is slower than fp32)")


_announced: set[tuple[str, str]] = set()


def resolve_precision(requested: str, cfg: ModelConfig, device: torch.device, *,
                      can_calibrate: bool = True) -> Choice:
    """``choose_precision`` for this machine; ``auto`` says what it chose in one log line, once."""
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    choice = choose_precision(requested, kind=model_kind(cfg), device_type=device.type, cpu=read_cpu_info(),
                              can_calibrate=can_calibrate, cuda_bf16=cuda_bf16)
    if requested == "auto" and (choice.precision, model_kind(cfg)) not in _announced:
        _announced.add((choice.precision, model_kind(cfg)))
        log.info("precision auto: %s for %s models (%s)", choice.precision, model_kind(cfg), choice.reason)
    return choice


def full_precision(*tensors: Tensor) -> tuple[Tensor, ...]:
    """``tensors`` with bf16 / fp16 ones cast to fp32 (what the layers under autocast hand over);
    fp32 and fp64 ones as they are, so that a float64 model stays float64."""
    return tuple(t.float() if t.dtype in (torch.bfloat16, torch.float16) else t for t in tensors)


class LowPrecisionDetector(nn.Module):
    """A float detector whose convolutions and fc layers run in bf16 at inference (autocast).

    Called like the float detector in eval mode; other attributes (``cfg``, ``rpn``, ...) are the
    float detector's. The weights stay fp32 and shared: the float model is unchanged.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        if getattr(model, "segment_proposals", None) is not None:
            raise PrecisionError("bf16 serves the RPN and box head; segment-proposal models "
                             "(model.proposals=segments) run in fp32")
        self.model = model

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("model"), name)

    @torch.no_grad()
    def forward(self, images: list[Tensor], **kwargs) -> list[dict[str, Tensor]]:
        if self.model.training:
            raise ValueError("bf16 inference is for eval mode: call model.eval() first")
        with autocast(self.model.device, "bf16"):
            return self.model(images, **kwargs)


def with_precision(model: nn.Module, precision: str,
                   calibration_images: Callable[[], list[Tensor]] | None = None) -> nn.Module:
    """``model`` run at ``precision`` ("fp32", "bf16" or "int8"; resolve "auto" first).

    ``calibration_images`` is called for int8 only: the images (3 x H x W in [0, 1]) whose
    activation ranges int8 is calibrated on.
    """
    match precision:
        case "fp32":
            return model
        case "bf16":
            return LowPrecisionDetector(model)
        case "int8":
            from fpn.model.quantize import quantize_pyramid

            if model.device.type != "cpu":
                raise PrecisionError(f"int8 runs on the CPU (x86 kernels); the model is on {model.device}")
            images = calibration_images() if calibration_images is not None else []
            return quantize_pyramid(model, images)
        case _:
            raise PrecisionError(f"precision {precision!r}: expected fp32, bf16 or int8")


def training_precision(requested: str, device: torch.device) -> str:
    """``train.precision`` resolved for ``device``: fp32, bf16 or fp16 (autocast in training).

    ``auto`` is bf16 where the GPU or the CPU computes it natively, else fp32. bf16 asked for on a
    CPU without it runs (emulated, several times slower) with a warning; fp16 needs CUDA.
    """
    native = native_bf16(device)
    if requested == "auto":
        chosen = "bf16" if native else "fp32"
        log.info("train.precision auto: %s (%s)", chosen,
                 "native bf16" if native else f"no native bf16 on {device.type}")
        return chosen
    if requested == "fp16" and device.type != "cuda":
        log.warning("train.precision=fp16 needs CUDA; training in fp32 on %s", device)
        return "fp32"
    if requested == "bf16" and not native:
        log.warning("train.precision=bf16: %s does not compute bf16 natively; it is emulated, several "
                    "times slower than fp32", "this GPU" if device.type == "cuda" else "this CPU")
    return requested
