"""A run as one ONNX graph, checked against PyTorch with ONNX Runtime (``fpn export``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fpn.api import Detector, load_image
from fpn.errors import ExportError
from fpn.export import export_onnx, verify

RANDOM_IMAGE = "a random 427x640 image"  # what ``verify`` runs on without an image


@dataclass
class ExportReport:
    """What was written, and how ONNX Runtime's detections compared with PyTorch's (if checked)."""

    path: Path
    check: dict[str, Any] | None  # ``fpn.export.verify``'s numbers; None when not verified
    checked_on: str = RANDOM_IMAGE

    def lines(self) -> list[str]:
        size = self.path.stat().st_size / 2**20
        lines = [f"wrote {self.path} ({size:.1f} MiB): input 'image' (3, H, W) float in [0, 1], outputs "
                 "'boxes' (D, 4) xyxy in image pixels, 'scores' (D,), 'labels' (D,)"]
        if self.check is not None:
            check = self.check
            lines.append(f"ONNX Runtime vs PyTorch on {self.checked_on}: {check['matched']}/"
                         f"{check['detections']} detections matched, max box diff "
                         f"{check['max_box_diff_px']:.4f} px, max score diff {check['max_score_diff']:.1e}")
            if check["detections"] == 0:
                lines.append("note: nothing was detected, so the check compared little; pass --verify-image "
                             "with a real photo")
        return lines


def run_export(checkpoint: str | Path, output: str | Path, *, overrides: list[str] | None = None,
               verify_image: str | Path | None = None, verify_outputs: bool = True) -> ExportReport:
    """Export the run's detector (on the CPU) to ``output``; with ``verify_outputs``, run the file with
    ONNX Runtime on ``verify_image`` (default: a random image) and compare with PyTorch.

    Raises ``ExportError`` when ONNX Runtime's detections differ from PyTorch's.
    """
    model = Detector.from_checkpoint(checkpoint, "cpu", overrides, precision="fp32").model
    path = export_onnx(model, output)
    if not verify_outputs:
        return ExportReport(path, None)
    image = load_image(verify_image) if verify_image else None
    check = verify(model, path, image)
    if check["matched"] != check["detections"] or check["onnx_detections"] != check["detections"]:
        raise ExportError(f"{path}: ONNX Runtime's detections differ from PyTorch's: {check}")
    return ExportReport(path, check, str(verify_image) if verify_image else RANDOM_IMAGE)
