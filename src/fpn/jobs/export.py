"""A run as one ONNX graph (or OpenVINO IR made from it), checked against PyTorch (``fpn export``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fpn.api import Detector, load_image
from fpn.errors import ExportError
from fpn.export import compare_exported, export_onnx, verify

RANDOM_IMAGE = "a random 427x640 image"  # what ``verify`` runs on without an image
RUNTIME = {"onnx": "ONNX Runtime", "openvino": "OpenVINO"}


@dataclass
class ExportReport:
    """What was written, and how the runtime's detections compared with PyTorch's (if checked)."""

    path: Path
    check: dict[str, Any] | None  # ``fpn.export.verify``'s numbers; None when not verified
    checked_on: str = RANDOM_IMAGE
    format: str = "onnx"
    precision: str = "fp32"

    def lines(self) -> list[str]:
        files = (self.path, self.path.with_suffix(".bin"))
        size = sum(p.stat().st_size for p in files if p.is_file()) / 2**20
        what = "" if self.format == "onnx" else f" (OpenVINO IR, {self.precision}, weights in .bin)"
        lines = [f"wrote {self.path}{what} ({size:.1f} MiB): input 'image' (3, H, W) float in [0, 1], "
                 "outputs 'boxes' (D, 4) xyxy in image pixels, 'scores' (D,), 'labels' (D,)"]
        if self.check is not None:
            check = self.check
            runtime = RUNTIME[self.format] + ("" if self.format == "onnx" else f" {self.precision}")
            lines.append(f"{runtime} vs PyTorch on {self.checked_on}: "
                         f"{check['matched']}/{check['detections']} detections matched, max box diff "
                         f"{check['max_box_diff_px']:.4f} px, max score diff {check['max_score_diff']:.1e}")
            if check["detections"] == 0:
                lines.append("note: nothing was detected, so the check compared little; pass --verify-image "
                             "with a real photo")
        return lines


def run_export(checkpoint: str | Path, output: str | Path, *, overrides: list[str] | None = None,
               verify_image: str | Path | None = None, verify_outputs: bool = True, format: str = "onnx",
               precision: str = "fp32", calibration: list[str | Path] | None = None) -> ExportReport:
    """Export the run's detector (on the CPU) to ``output``; with ``verify_outputs``, run the file
    (ONNX Runtime, or OpenVINO for ``format="openvino"``) on ``verify_image`` (default: a random
    image) and compare with PyTorch.

    OpenVINO int8 (``precision``) is NNCF's post-training quantization calibrated on
    ``calibration`` (default: the run's training images). Raises ``ExportError`` when an fp32
    file's detections differ from PyTorch's (int8's differences are reported, not refused: its
    accuracy is what ``fpn eval --backend openvino --precision int8`` measures).
    """
    if format == "onnx":
        if precision != "fp32":
            raise ExportError(f"--format onnx writes fp32 only; --precision {precision} is for "
                              "--format openvino")
        model = Detector.from_checkpoint(checkpoint, "cpu", overrides, precision="fp32").model
        path = export_onnx(model, output)
        runner = None
    elif format == "openvino":
        from fpn.export_openvino import save_openvino

        if Path(output).suffix != ".xml":
            raise ExportError(f"{output}: an OpenVINO model is written as NAME.xml (with NAME.bin beside it)")
        detector = Detector(checkpoint, "cpu", overrides=overrides, precision=precision,
                            calibration=calibration or None, backend="openvino")
        model, runner = detector.model, detector.network
        path = save_openvino(runner.model, output)
    else:
        raise ExportError(f"unknown export format {format!r}: onnx or openvino")
    if not verify_outputs:
        return ExportReport(path, None, format=format, precision=precision)
    image = load_image(verify_image) if verify_image else None
    check = verify(model, path, image) if runner is None else compare_exported(model, runner, image)
    differs = check["matched"] != check["detections"] or check["onnx_detections"] != check["detections"]
    if differs and precision == "fp32":
        raise ExportError(f"{path}: {RUNTIME[format]}'s detections differ from PyTorch's: {check}")
    return ExportReport(path, check, str(verify_image) if verify_image else RANDOM_IMAGE, format, precision)
