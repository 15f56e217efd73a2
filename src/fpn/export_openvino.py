"""OpenVINO: the exported detector (``fpn.export``) compiled for OpenVINO's CPU plugin, fp32 or int8.

``to_openvino(model)`` converts the ONNX graph ``export_onnx`` writes (one image in, boxes out,
any image size; every step of the eval path in the graph) with ``openvino.convert_model``, and for
int8 quantizes it with NNCF's post-training quantization, calibrated on the run's images.
``OpenVinoDetector`` runs such a model, or an IR file ``fpn export --format openvino`` wrote,
behind the same call as the PyTorch detector; ``fpn.Detector(run, backend="openvino")`` and
``--backend openvino`` use it.

Why the ONNX graph rather than ``convert_model`` on the PyTorch module: the ONNX graph is traced
once by ``torch.export`` with symbolic image sizes and is already checked against eager PyTorch
(``tests/test_export.py``); OpenVINO reads its RoiAlign, NonMaxSuppression and TopK nodes as
ONNX defines them, so one graph serves ONNX Runtime and OpenVINO and both reproduce eager's
detections (``tests/test_export_openvino.py``). The preprocessing (resize, normalise, pad) and the
mapping of boxes back to the image are the graph's, i.e. ``ExportGraph``'s, which calls the
model's own ``Preprocessor`` rules; the detections become ``Detections`` in ``fpn.api`` as eager's do.

Inference precision: OpenVINO's CPU plugin runs fp32 models in bf16 where the CPU has AMX /
AVX512-BF16 unless told otherwise; here ``INFERENCE_PRECISION_HINT`` is always ``f32``, so fp32
means fp32 on every host and int8 means NNCF's int8 layers with everything else in fp32.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fpn.errors import ExportError, MissingExtraError, PrecisionError, output_dir
from fpn.export import export_onnx, run_graph
from fpn.hardware import read_cpu_info
from fpn.model.precision import Choice, model_kind

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "int8")  # what the OpenVINO backend runs in
# (model kind, precision) pairs whose accuracy gate passed under OpenVINO (the gates of
# fpn.bench.gates, as for the PyTorch int8 path); `auto` picks nothing outside it.
# tests/test_export_openvino.py measures the int8 gate on a trained fpn run: int8 may be listed only if it
# passes every time (it failed and passed in two runs on one host, docs/deployment.md).
GATES_PASSED: dict[str, frozenset[str]] = {
    "fpn": frozenset({"fp32"}),
    "torchvision": frozenset({"fp32"}),
    "foreign": frozenset({"fp32"}),
    "segments": frozenset(),  # segment proposals are not exported
}
EXTRA = "pip install 'fpn[openvino]'"


def _openvino():
    try:
        import openvino
    except ImportError as error:
        raise MissingExtraError(f"the OpenVINO backend needs the openvino extra ({EXTRA}): {error}") from None
    return openvino


def choose_precision(requested: str, model, *, can_calibrate: bool) -> Choice:
    """The precision OpenVINO runs ``model`` in: ``requested`` unless ``auto``, which picks int8
    only where its gate passed for the kind of model (``GATES_PASSED``), the CPU has int8 dot
    products and there are images to calibrate on; else fp32."""
    if requested not in ("auto", *PRECISIONS):
        raise PrecisionError(f"the OpenVINO backend runs fp32 or int8 (or auto), not {requested!r}")
    if requested != "auto":
        return Choice(requested, "asked for")  # type: ignore[arg-type]
    kind = model_kind(model.cfg)
    if "int8" in GATES_PASSED.get(kind, frozenset()) and read_cpu_info().native_int8 and can_calibrate:
        return Choice("int8", "the CPU computes int8 natively and the OpenVINO int8 gate passed")
    return Choice("fp32", f"no passed OpenVINO int8 gate for {kind} models, no native int8 or no images "
                  "to calibrate on")


def to_openvino(model, precision: str = "fp32", calibration_images: list[Tensor] | None = None):
    """``model`` (eval path, as ``export_onnx`` writes it) as an ``openvino.Model``, fp32 or int8.

    int8: NNCF post-training quantization calibrated on ``calibration_images`` (3 x H x W in [0, 1],
    any sizes), each run through the whole graph.
    """
    ov = _openvino()
    if precision not in PRECISIONS:
        raise PrecisionError(f"the OpenVINO backend runs fp32 or int8, not {precision!r}")
    if precision == "int8" and not calibration_images:
        raise PrecisionError("OpenVINO int8 calibrates on images: pass calibration images "
                             "(--calibration DIR on the command line)")
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(model, Path(tmp) / "model.onnx")
        converted = ov.convert_model(str(onnx_path))
    if precision == "fp32":
        return converted
    try:
        import nncf
    except ImportError as error:
        raise MissingExtraError(f"OpenVINO int8 needs NNCF ({EXTRA}): {error}") from None
    arrays = [image.detach().to("cpu", torch.float32).contiguous().numpy() for image in calibration_images]
    return nncf.quantize(converted, nncf.Dataset(arrays), subset_size=len(arrays))


def save_openvino(ov_model, path: str | Path) -> Path:
    """Write ``ov_model`` as OpenVINO IR: ``path`` (.xml) and its weights beside it (.bin), in fp32
    (OpenVINO's default would store the weights in fp16)."""
    ov = _openvino()
    path = Path(path)
    if path.suffix != ".xml":
        raise ExportError(f"{path}: an OpenVINO model is written as NAME.xml (with NAME.bin beside it)")
    output_dir(path.parent)
    ov.save_model(ov_model, str(path), compress_to_fp16=False)
    return path


class OpenVinoDetector:
    """An OpenVINO model of the detector (``to_openvino``, or an IR .xml file), called like
    ``FasterRCNN`` in eval mode; fp32 arithmetic outside int8 layers on every CPU."""

    def __init__(self, model_or_path, threads: int | None = None, precision: str = "fp32"):
        ov = _openvino()
        core = ov.Core()
        if isinstance(model_or_path, str | Path):
            if not Path(model_or_path).is_file():
                raise ExportError(f"{model_or_path}: no such OpenVINO model file")
            model_or_path = core.read_model(str(model_or_path))
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.model = model_or_path  # the openvino.Model (save_openvino writes it)
        self.compiled = core.compile_model(model_or_path, "CPU", config)
        self.precision = precision
        self._warned = False

    def __call__(self, images: list[Tensor], *, return_proposals: bool = False,
                 paste_masks: bool = True, proposals: list[Tensor] | None = None) -> list[dict[str, Tensor]]:
        """Detections of each (3, H, W) image in [0, 1]: boxes (xyxy, image pixels), scores, labels.

        The graph returns no proposals: ``return_proposals`` gives none (proposal AR is then not
        measured; a log line says so once). Given ``proposals`` (Fast R-CNN) are refused.
        """
        if proposals is not None:
            raise ExportError("the OpenVINO graph computes its own proposals; given proposals need "
                              "the PyTorch backend")
        if return_proposals and not self._warned:
            log.info("the OpenVINO backend returns no RPN proposals: proposal AR is not measured")
            self._warned = True
        return run_graph(lambda array: self.compiled([array]), images)


def openvino_network(model, requested: str, calibration: Callable[[], list[Tensor]] | None,
                     can_calibrate: bool) -> tuple[str, OpenVinoDetector]:
    """(the precision chosen, the OpenVINO detector running ``model`` at it) for ``fpn.Detector``."""
    if model.device.type != "cpu":
        raise PrecisionError(f"the OpenVINO backend runs on the CPU; the model is on {model.device}")
    if getattr(model, "segment_proposals", None) is not None or model.rpn is None or model.roi_heads is None:
        raise ExportError("the OpenVINO backend runs Faster R-CNN (RPN and box head); this model has "
                          f"model.proposals={model.cfg.proposals}, model.box_head={model.cfg.box_head}")
    choice = choose_precision(requested, model, can_calibrate=can_calibrate)
    if requested == "auto":
        log.info("OpenVINO precision auto: %s (%s)", choice.precision, choice.reason)
    images = calibration() if choice.precision == "int8" and calibration is not None else None
    ov_model = to_openvino(model, choice.precision, images)
    return choice.precision, OpenVinoDetector(ov_model, threads=torch.get_num_threads(),
                                              precision=choice.precision)
