"""fpn: Feature Pyramid Networks for Object Detection (Lin et al., CVPR 2017) in PyTorch.

Public entry points (imported lazily, so ``import fpn`` and ``fpn --version`` do not load PyTorch):

- ``fpn.Detector(run)(images)``: a trained detector called on files, folders, PIL images, arrays
  or tensors, returning ``fpn.Detections`` (boxes, scores, labels, names, levels; ``.plot()``,
  ``.save()``, ``.to_json()``, ``.to_csv()``);
- ``fpn.FasterRCNN(cfg.model)``: the detector of docs/paper.md §1-3 (and its other systems);
- ``fpn.from_torchvision(state_dict)``: our detector from torchvision's Faster R-CNN weights;
- ``fpn.read_checkpoint(path)`` / ``fpn.convert_detector(checkpoint)``: torchvision's,
  detectron2's or mmdetection's Faster R-CNN as our config and weights (no pickled code runs);
- ``fpn.load_config(path_or_preset, overrides)``: typed configs;
- ``fpn.export_onnx(model, path)`` / ``fpn.OnnxDetector(path)``: one ONNX graph, any image size;
  ``fpn.OpenVinoDetector(path)`` runs its OpenVINO IR (``fpn export --format openvino``).
"""

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Detector": "fpn.api",
    "Detections": "fpn.detections",
    "FasterRCNN": "fpn.model.detector",
    "from_torchvision": "fpn.interop.torchvision",
    "load_torchvision_resnet": "fpn.interop.torchvision",
    "read_checkpoint": "fpn.safe_reading",
    "convert_detector": "fpn.interop.detectors",
    "load_config": "fpn.config.files",
    "ModelConfig": "fpn.config.schema",
    "Config": "fpn.config.schema",
    "export_onnx": "fpn.export",
    "OnnxDetector": "fpn.export",
    "OpenVinoDetector": "fpn.export_openvino",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fpn' has no attribute {name!r}")
