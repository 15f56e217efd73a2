"""The accuracy gates of the low precisions (``fpn.model.precision.GATES_PASSED``), measured.

Two kinds of model, two gates:

- **fpn** (a run trained by fpn, as the demo's): box AP at bf16 within ``AP_DROP["bf16"]`` (0.5)
  points of fp32, at int8 within ``AP_DROP["int8"]`` (1.0), on the run's validation set
  (pycocotools). ``demo_ap_table`` measures it on ``runs/demo``.
- **torchvision** (R50-FPN weights converted from torchvision): of fp32's detections scored above
  0.5 on real photos, at least 95% have a low-precision detection of the same label with IoU
  >= 0.9 (``fpn.output_comparison.confident_matches``). Without real weights it is measured on
  ``fpn.bench.standin.probed_standin`` (why: that module's docstring); with them (``weights=``)
  the same measurement is the real gate.

Accuracy does not depend on whether bf16 is native, but time does: where the CPU has no bf16 dot
products, PyTorch's emulated bf16 convolutions and matrix products are 6x (channels-last) to
100x slower than fp32. ``emulated_bf16_kernels`` then computes each convolution and fc layer as
the native kernels do (bf16 operands, fp32 accumulation, a bf16 result) with fp32 kernels on
bf16-rounded operands, under the same autocast; every other op runs as autocast runs it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from fpn.bench.common import markdown_table
from fpn.bench.reference import fpn_twin, torchvision_detector
from fpn.bench.standin import Target, probed_standin
from fpn.hardware import read_cpu_info
from fpn.model.precision import with_precision
from fpn.output_comparison import confident_matches

AP_DROP = {"bf16": 0.5, "int8": 1.0}  # AP points below fp32 a precision may lose (fpn runs)
MATCHED_FRACTION = 0.95  # of fp32's detections above CONFIDENT (torchvision weights)
CONFIDENT, MIN_IOU = 0.5, 0.9


class _Bf16KernelsInFp32(TorchFunctionMode):
    """Under bf16 autocast: conv2d and linear on bf16-rounded operands with fp32 kernels, rounded
    to a bf16 result (what a native bf16 kernel computes, up to the order of its sums)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name not in ("conv2d", "linear") or not torch.is_autocast_enabled("cpu"):
            return func(*args, **kwargs)
        if torch.get_autocast_dtype("cpu") != torch.bfloat16:
            return func(*args, **kwargs)
        args = tuple(_bf16_valued(a) for a in args)
        kwargs = {k: _bf16_valued(v) for k, v in kwargs.items()}
        with torch.autocast("cpu", enabled=False):
            return func(*args, **kwargs).to(torch.bfloat16)


def _bf16_valued(value):
    """A floating tensor rounded to bf16 and held in fp32; anything else as it is."""
    if torch.is_tensor(value) and value.is_floating_point():
        return value.to(torch.bfloat16).float()
    return value


def emulated_bf16_kernels(precision: str):
    """``_Bf16KernelsInFp32`` for bf16 where the CPU lacks bf16 dot products; else nothing."""
    if precision != "bf16" or read_cpu_info().native_bf16:
        return contextlib.nullcontext()
    return _Bf16KernelsInFp32()


def real_photos(folder: Path, count: int, *, skip: int = 0) -> list[Tensor]:
    """``count`` photographs of ``folder`` (sorted by name, after the first ``skip``), as tensors."""
    from fpn.api import load_image

    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if len(paths) < skip + count:
        raise FileNotFoundError(f"{folder}: {len(paths)} images, {skip + count} wanted")
    return [load_image(p) for p in paths[skip:skip + count]]


def torchvision_agreement(photos: list[Tensor], targets: list[Target], precisions: list[str], *,
                          size: tuple[int, int] = (800, 1333), weights: dict | None = None
                          ) -> dict[str, tuple[int, int]]:
    """(matched, total) per precision: fp32's detections above 0.5 on ``photos`` that each
    precision keeps (same label, IoU >= 0.9), on the probed stand-in fitted to ``photos`` and
    ``targets``, or on real ``weights``. int8 calibrates on ``photos``."""
    if weights is None:
        reference = probed_standin(photos, targets, size=size)
    else:
        reference = torchvision_detector(size=size)
        reference.load_state_dict(weights)
    ours = fpn_twin(reference)
    with torch.inference_mode():
        fp32 = [ours([photo])[0] for photo in photos]
        result = {}
        for precision in precisions:
            model = with_precision(ours, precision, lambda: photos)
            with emulated_bf16_kernels(precision):
                low = [model([photo])[0] for photo in photos]
            result[precision] = confident_matches(fp32, low, min_score=CONFIDENT, min_iou=MIN_IOU)
    return result


def precision_ap(run: Path, precision: str) -> dict[str, float]:
    """Box AP (and AP50, seconds per image) of ``run`` on its validation set at ``precision``."""
    from fpn.jobs.datasets import dataset_for
    from fpn.jobs.evaluation import evaluate_model, open_run

    cfg, detector, _ = open_run(run, ["train.device=cpu"], precision=precision)
    result = evaluate_model(detector.model, dataset_for(cfg, "val"), cfg, progress=False,
                            network=detector.network)
    return {k: float(result.metrics[k]) for k in ("AP", "AP50", "seconds_per_image")}


def demo_ap_table(run: Path, precisions: list[str]) -> str:
    """A table of AP per precision on ``run``, the drop from fp32 and whether the gate passed."""
    if not (Path(run) / "checkpoints").is_dir():
        return f"(no run at {run}: `fpn demo` makes one)"
    rows, fp32_ap = [], None
    for precision in precisions:
        numbers = precision_ap(run, precision)
        ap = 100 * numbers["AP"]
        fp32_ap = ap if precision == "fp32" else fp32_ap
        drop = None if fp32_ap is None or precision == "fp32" else fp32_ap - ap
        gate = "-" if drop is None else ("passed" if drop <= AP_DROP[precision] else "FAILED")
        rows.append([precision, f"{ap:.1f}", f"{100 * numbers['AP50']:.1f}",
                     "-" if drop is None else f"{drop:+.2f}".replace("+-", "-"),
                     "-" if drop is None else f"<= {AP_DROP[precision]}", gate,
                     f"{1000 * numbers['seconds_per_image']:.0f}"])
        print(markdown_table(DEMO_HEADER, rows[-1:]), flush=True)
    return f"`{run}`, its validation set\n\n" + markdown_table(DEMO_HEADER, rows)


DEMO_HEADER = ["precision", "AP", "AP50", "AP drop", "gate", "result", "ms per image (eval loop)"]
