"""The accuracy gates of the low precisions (``fpn.model.precision.GATES_PASSED``), measured.

Two kinds of model, two gates:

- **fpn** (a run trained by fpn, as the demo's): box AP at bf16 within ``AP_DROP["bf16"]`` (0.5)
  points of fp32, at int8 within ``AP_DROP["int8"]`` (1.0), on the run's validation set
  (pycocotools). ``demo_ap_table`` measures it on ``runs/demo``.
- **torchvision** (R50-FPN weights converted from torchvision): of fp32's detections scored above
  0.5 on real photographs, at least 95% have a low-precision detection of the same label with
  IoU >= 0.9 (``fpn.detections.confident_matches``). No trained torchvision weights can be
  downloaded here, and random weights make few confident detections, all of them near-ties
  (every score comes from a raised class bias): rounding would reorder them, and the gate would
  measure the ties. ``calibrated_standin`` therefore gives the random weights the statistics of a
  trained network on real photos (data-dependent initialisation): every FrozenBatchNorm2d
  normalises its input as a trained batch norm does, and the heads' layers are scaled so that
  their outputs spread as a trained detector's do (objectness and class logits with a spread of
  a few units, box deltas of tenths). Its confident detections are not objects, but they are
  decided by real-image features through 50 layers of real-scale activations, which is what
  bf16 rounding acts on. With real weights (``--weights``) the same measurement is the real gate.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN as TVFasterRCNN
from torchvision.ops import FrozenBatchNorm2d

from fpn.bench.common import markdown_table
from fpn.bench.reference import fpn_twin, torchvision_detector
from fpn.detections import confident_matches
from fpn.model.precision import with_precision

AP_DROP = {"bf16": 0.5, "int8": 1.0}  # AP points below fp32 a precision may lose (fpn runs)
MATCHED_FRACTION = 0.95  # of fp32's detections above CONFIDENT (torchvision weights)
CONFIDENT, MIN_IOU = 0.5, 0.9
# The spread (std over anchors / RoIs / classes) the stand-in's head outputs are scaled to.
HEAD_OUTPUT_STD = {"rpn.head.conv.0.0": 1.0, "rpn.head.cls_logits": 3.0, "rpn.head.bbox_pred": 0.2,
                   "roi_heads.box_head.fc6": 1.0, "roi_heads.box_head.fc7": 1.0,
                   "roi_heads.box_predictor.cls_score": 4.0, "roi_heads.box_predictor.bbox_pred": 0.5}


@torch.no_grad()
def calibrated_standin(images: list[Tensor], *, size: tuple[int, int] = (800, 1333), seed: int = 0
                       ) -> TVFasterRCNN:
    """torchvision's R50-FPN with seeded random weights given a trained network's statistics on
    ``images`` (module docstring), in one forward pass: each FrozenBatchNorm2d takes the mean and
    variance of its input just before it runs, each head layer is rescaled at its first call."""
    model = torchvision_detector(seed, size=size)
    handles = [m.register_forward_pre_hook(_normalise_input) for m in model.modules()
               if isinstance(m, FrozenBatchNorm2d)]
    for name, std in HEAD_OUTPUT_STD.items():
        handles.append(model.get_submodule(name).register_forward_hook(_rescale_output(std)))
    model(images)
    for handle in handles:
        handle.remove()
    return model


def _normalise_input(norm: FrozenBatchNorm2d, args: tuple[Tensor]) -> None:
    x = args[0]  # (N, C, H, W): per channel mean 0 and variance 1 after the norm, as trained
    norm.running_mean.copy_(x.mean(dim=(0, 2, 3)))
    norm.running_var.copy_(x.var(dim=(0, 2, 3)).clamp(min=1e-6))


def _rescale_output(target_std: float) -> Callable:
    """A forward hook that scales a layer's weight and bias once, so its output's std is ``target_std``
    (the RPN's layers run once per level: the first, finest level sets the scale)."""
    done = []

    def hook(layer: nn.Module, args, output: Tensor) -> Tensor | None:
        if done:
            return None
        done.append(True)
        scale = target_std / float(output.std().clamp(min=1e-12))
        layer.weight.mul_(scale)
        layer.bias.mul_(scale)
        return output * scale  # a linear layer scaled: exactly the output it now computes

    return hook


def real_photos(folder: Path, count: int, *, skip: int = 0) -> list[Tensor]:
    """``count`` photographs of ``folder`` (sorted by name, after the first ``skip``), as tensors."""
    from fpn.api import load_image

    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if len(paths) < skip + count:
        raise FileNotFoundError(f"{folder}: {len(paths)} images, {skip + count} wanted")
    return [load_image(p) for p in paths[skip:skip + count]]


def torchvision_agreement(photos: list[Tensor], calibration: list[Tensor], precisions: list[str], *,
                          size: tuple[int, int] = (800, 1333), weights: dict | None = None
                          ) -> dict[str, tuple[int, int]]:
    """(matched, total) per precision: fp32's detections above 0.5 on ``photos`` that each
    precision keeps (same label, IoU >= 0.9), on the calibrated stand-in or on ``weights``."""
    if weights is None:
        reference = calibrated_standin(calibration, size=size)
    else:
        reference = torchvision_detector(size=size)
        reference.load_state_dict(weights)
    ours = fpn_twin(reference)
    with torch.inference_mode():
        fp32 = [ours([photo])[0] for photo in photos]
        result = {}
        for precision in precisions:
            model = with_precision(ours, precision, lambda: calibration)
            low = [model([photo])[0] for photo in photos]
            result[precision] = confident_matches(fp32, low, min_score=CONFIDENT, min_iou=MIN_IOU)
    return result


def precision_ap(run: Path, precision: str) -> dict[str, float]:
    """Box AP (and AP50, seconds per image) of ``run`` on its validation set at ``precision``."""
    from fpn.jobs.datasets import dataset_for
    from fpn.jobs.evaluation import evaluate_model, open_run

    cfg, detector, _ = open_run(run, ["train.device=cpu"], precision=precision)
    metrics = evaluate_model(detector.model, dataset_for(cfg, "val"), cfg, progress=False,
                             network=detector.network)
    return {k: float(metrics[k]) for k in ("AP", "AP50", "seconds_per_image")}


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
