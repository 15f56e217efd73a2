"""ONNX export of the whole detector, one image in, boxes out, for any image size.

``export_onnx(model, path)`` writes a graph that takes one ``(3, H, W)`` float image in [0, 1]
(RGB, any H and W) and returns ``boxes`` (D, 4) xyxy in that image's pixels, ``scores`` (D,) and
``labels`` (D,): what ``FasterRCNN`` returns in eval mode, computed by the same modules. Every
step of the eval path is in the graph (resize, normalise, pad, the folded bottom-up pathway,
the pyramid, RPN proposal selection, multi-level RoIAlign, the box head, per-class NMS), so
ONNX Runtime needs nothing else. ``OnnxDetector`` runs such a file with ONNX Runtime behind the
same call as the PyTorch detector.

``ExportGraph`` runs the model's own RPN and RoI heads and its resize-scale and padding rules;
it restates only the tensor steps that ``Preprocessor`` and ``FasterRCNN.forward`` take with
Python numbers (the resize, the padding, the mapping of boxes back to the image), with sizes kept
symbolic so that ``torch.export`` traces it once for
every image size. Under export, anchors are made in the graph rather than cached and NMS takes
the coordinate-offset form (``boxes.batched_nms``). Its outputs match the eager detector's up to
float re-association and the order of exact score ties (``tests/test_export.py`` checks this
through ONNX Runtime).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fpn.errors import ExportError, output_dir
from fpn.model.detector import FasterRCNN
from fpn.model.fuse import inference_copy
from fpn.model.preprocess import padded_size, resize_scale
from fpn.output_comparison import output_difference

OPSET = 18  # RoiAlign's half-pixel mode (torchvision's aligned=True) needs opset >= 16
MIN_SIDE, MAX_SIDE = 16, 16384  # image sides (px) the exported graph accepts


class ExportGraph(nn.Module):
    """The eval path of ``model`` for one image with symbolic sizes (see the module docstring)."""

    def __init__(self, model: FasterRCNN):
        super().__init__()
        self.preprocess = model.preprocess  # its settings: read-only, as every part of a built model
        with torch.inference_mode(False):
            self.backbone = inference_copy(model.backbone, channels_last=False)
        self.neck = model.neck
        self.rpn = model.rpn
        self.roi_heads = model.roi_heads

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(3, H, W) in [0, 1] -> boxes (D, 4) in the image's pixels, scores (D,), labels (D,)."""
        settings = self.preprocess.settings
        height, width = image.shape[-2], image.shape[-1]
        scale = resize_scale((height, width), settings.min_size_test, settings.max_size)
        resized_h = torch.sym_int(torch.sym_float(height) * scale)
        resized_w = torch.sym_int(torch.sym_float(width) * scale)
        x = F.interpolate(self.preprocess.normalize(image)[None], size=(resized_h, resized_w),
                          mode="bilinear", align_corners=False)
        padded_h = padded_size(resized_h, settings.size_divisibility)
        padded_w = padded_size(resized_w, settings.size_divisibility)
        x = F.pad(x, (0, padded_w - resized_w, 0, padded_h - resized_h))
        features = self.neck(self.backbone(x))
        image_sizes = [(resized_h, resized_w)]
        proposals, _, _ = self.rpn(features, image_sizes, (padded_h, padded_w))
        detections = self.roi_heads(features, proposals, image_sizes)[0][0]
        boxes, scores, labels = detections["boxes"], detections["scores"], detections["labels"]
        ratio_w = torch.sym_float(width) / torch.sym_float(resized_w)
        ratio_h = torch.sym_float(height) / torch.sym_float(resized_h)
        boxes_xyxy = torch.stack([boxes[:, 0] * ratio_w, boxes[:, 1] * ratio_h,
                                  boxes[:, 2] * ratio_w, boxes[:, 3] * ratio_h], dim=1)
        return boxes_xyxy, scores, labels


def export_onnx(model: FasterRCNN, path: str | Path, example_hw: tuple[int, int] = (480, 640)) -> Path:
    """Write ``model`` (eval path, fp32) as an ONNX graph with a dynamic image size.

    The example image only drives the trace; images of any size from ``MIN_SIDE`` to
    ``MAX_SIDE`` pixels a side run on the result.
    """
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ExportError(f"ONNX export needs the 'export' extra (pip install 'fpn[export]'): {error}"
                          ) from None
    if model.rpn is None or model.roi_heads is None:
        raise ExportError(f"fpn export writes Faster R-CNN (RPN and box head); this model has "
                          f"model.proposals={model.cfg.proposals}, model.box_head={model.cfg.box_head}")
    path = Path(path)
    output_dir(path.parent)
    graph = ExportGraph(model.eval().cpu()).eval()
    example = torch.rand(3, *example_hw, generator=torch.Generator().manual_seed(0))
    height = torch.export.Dim("height", min=MIN_SIDE, max=MAX_SIDE)
    width = torch.export.Dim("width", min=MIN_SIDE, max=MAX_SIDE)
    with torch.no_grad(), warnings.catch_warnings():
        # torchvision's NMS registration uses a renamed torch helper: noise, not a problem of ours.
        warnings.filterwarnings("ignore", message=".*create_unbacked_symint", category=FutureWarning)
        program = torch.onnx.export(
            graph, (example,), dynamo=True, opset_version=OPSET, input_names=["image"],
            output_names=["boxes", "scores", "labels"],
            dynamic_shapes={"image": {1: height, 2: width}}, verbose=False,
        )
    program.save(str(path))
    return path


def verify(model: FasterRCNN, onnx_path: str | Path, image: Tensor | None = None) -> dict[str, float]:
    """Run PyTorch and ONNX Runtime on one image; how far apart their detections are.

    ``image`` is a (3, H, W) float image in [0, 1]; by default a seeded random 427x640 one (on
    which a trained detector may find nothing: give a real photo for a meaningful check).
    Returns the detection counts, how many of PyTorch's detections ONNX Runtime reproduces (same
    label, box within 1 px) and the largest box (px) and score differences among those.
    """
    return compare_exported(model, OnnxDetector(onnx_path), image)


def compare_exported(model: FasterRCNN, exported: Callable[[list[Tensor]], list[dict[str, Tensor]]],
                     image: Tensor | None = None) -> dict[str, float]:
    """``verify`` for any runtime's detector (``OnnxDetector``, ``OpenVinoDetector``)."""
    if image is None:
        image = torch.rand(3, 427, 640, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        reference = model.eval()([image])
    outputs = exported([image])
    box_diff, score_diff, unmatched = output_difference(reference, outputs)
    total = len(reference[0]["boxes"])
    return {"detections": total, "onnx_detections": len(outputs[0]["boxes"]),
            "matched": total - unmatched, "max_box_diff_px": box_diff, "max_score_diff": score_diff}


class OnnxDetector:
    """An exported detector run by ONNX Runtime, called like ``FasterRCNN`` in eval mode."""

    def __init__(self, path: str | Path, threads: int | None = None):
        try:
            import onnxruntime
        except ImportError:
            raise ExportError("running ONNX files needs onnxruntime (pip install 'fpn[export]')") from None
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        return run_graph(lambda array: self.session.run(None, {"image": array}), images)


def run_graph(run: Callable[[Any], Any], images: list[Tensor]) -> list[dict[str, Tensor]]:
    """Each image through an exported graph (``run``: a float32 (3, H, W) array -> boxes, scores,
    labels, by any runtime) as the PyTorch detector's output dicts."""
    results = []
    for image in images:
        outputs = run(image.detach().to("cpu", torch.float32).contiguous().numpy())
        boxes, scores, labels = (torch.from_numpy(outputs[i].copy()) for i in range(3))
        results.append({"boxes": boxes, "scores": scores, "labels": labels})
    return results
