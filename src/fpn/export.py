"""ONNX export of the whole detector, one image in, boxes out, for any image size.

``export_onnx(model, path)`` writes a graph that takes one ``(3, H, W)`` float image in [0, 1]
(RGB, any H and W) and returns ``boxes`` (D, 4) xyxy in that image's pixels, ``scores`` (D,) and
``labels`` (D,): what ``FasterRCNN`` returns in eval mode, computed by the same modules. Every
step of the eval path is in the graph (resize, normalise, pad, the folded bottom-up pathway,
the pyramid, RPN proposal selection, multi-level RoIAlign, the box head, per-class NMS), so
ONNX Runtime needs nothing else. ``OnnxDetector`` runs such a file with ONNX Runtime behind the
same call as the PyTorch detector.

``ExportGraph`` restates the eval path with shapes kept symbolic: ``torch.export`` traces it
once and every image size reuses the trace. It differs from ``FasterRCNN.forward`` only where
Python would branch on a size (a ``min`` of two sizes becomes ``torch.sym_min``; the per-level
NMS uses the coordinate-offset form that ``batched_nms`` itself uses on large inputs; anchors are
made in the graph rather than cached). Its outputs match the eager detector's up to float
re-association (``tests/test_export.py`` checks this through ONNX Runtime).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import nms

from fpn.model import boxes as box_ops
from fpn.model.anchors import grid_anchors
from fpn.model.detector import FasterRCNN
from fpn.model.fuse import inference_copy
from fpn.model.rpn import flatten_predictions

OPSET = 18  # RoiAlign's half-pixel mode (torchvision's aligned=True) needs opset >= 16
MIN_SIDE, MAX_SIDE = 16, 16384  # image sides (px) the exported graph accepts


class ExportError(ValueError):
    """The model cannot be exported or run: the onnx / onnxruntime packages are missing."""


def _class_aware_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each group, as one NMS call: boxes of different groups are shifted apart."""
    offsets = groups.to(boxes.dtype) * (boxes.max() + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


class ExportGraph(nn.Module):
    """The eval path of ``model`` for one image with symbolic sizes (see the module docstring)."""

    def __init__(self, model: FasterRCNN):
        super().__init__()
        self.cfg = model.cfg
        self.preprocess = model.preprocess
        with torch.inference_mode(False):
            self.backbone = inference_copy(model.backbone, channels_last=False)
        self.neck = model.neck
        self.rpn = model.rpn
        self.roi_heads = model.roi_heads
        generator = model.rpn.anchor_generator
        self._cell_anchors = {level: generator._cell[level] for level in generator.levels}

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(3, H, W) in [0, 1] -> boxes (D, 4) in the image's pixels, scores (D,), labels (D,)."""
        cfg = self.cfg
        height, width = image.shape[-2], image.shape[-1]
        scale = torch.sym_min(cfg.input.min_size_test / torch.sym_min(height, width),
                              cfg.input.max_size / torch.sym_max(height, width))
        resized_h = torch.sym_int(torch.sym_float(height) * scale)
        resized_w = torch.sym_int(torch.sym_float(width) * scale)
        x = F.interpolate(self.preprocess.normalize(image)[None], size=(resized_h, resized_w),
                          mode="bilinear", align_corners=False)
        div = cfg.input.size_divisibility
        padded_h = (resized_h + div - 1) // div * div
        padded_w = (resized_w + div - 1) // div * div
        x = F.pad(x, (0, padded_w - resized_w, 0, padded_h - resized_h))
        features = self.neck(self.backbone(x))
        proposals = self._proposals(features, (resized_h, resized_w), (padded_h, padded_w))
        boxes, scores, labels = self._detections(features, proposals, (resized_h, resized_w))
        ratio_w = torch.sym_float(width) / torch.sym_float(resized_w)
        ratio_h = torch.sym_float(height) / torch.sym_float(resized_h)
        boxes_xyxy = torch.stack([boxes[:, 0] * ratio_w, boxes[:, 1] * ratio_h,
                                  boxes[:, 2] * ratio_w, boxes[:, 3] * ratio_h], dim=1)
        return boxes_xyxy, scores, labels

    def _proposals(self, features: dict[str, Tensor], image_hw, padded_hw) -> Tensor:
        rpn, cfg = self.rpn, self.rpn.cfg
        level_maps = [features[level] for level in rpn.levels]
        logits_per_level, deltas_per_level = rpn.head(level_maps)
        logits, deltas = flatten_predictions(logits_per_level, deltas_per_level)
        logits, deltas = logits[0], deltas[0]
        anchors, top_idx, level_ids, offset = [], [], [], 0
        for index, (level, level_map) in enumerate(zip(rpn.levels, level_maps, strict=True)):
            hw = (level_map.shape[-2], level_map.shape[-1])
            stride = rpn.anchor_generator.strides[level]
            if rpn.anchor_generator.stride_from_feature_size:
                stride_hw = (padded_hw[0] // hw[0], padded_hw[1] // hw[1])
            else:
                stride_hw = (stride, stride)
            level_anchors = grid_anchors(self._cell_anchors[level], hw, stride_hw)
            count = level_anchors.shape[0]
            k = torch.sym_min(cfg.pre_nms_top_n_test, count)
            top_idx.append(logits[offset : offset + count].topk(k).indices + offset)
            level_ids.append(torch.full_like(top_idx[-1], index))
            anchors.append(level_anchors)
            offset = offset + count
        idx, levels = torch.cat(top_idx), torch.cat(level_ids)
        anchors = torch.cat(anchors)
        boxes = box_ops.decode_boxes(deltas[idx], anchors[idx], cfg.box_weights)[:, 0]
        boxes = box_ops.clip_boxes(boxes, image_hw)
        prob = torch.sigmoid(logits[idx])
        keep = box_ops.nonempty_mask(boxes, cfg.min_box_size)
        boxes, prob, levels = boxes[keep], prob[keep], levels[keep]
        keep = _class_aware_nms(boxes, prob, levels, cfg.nms_thresh)[: cfg.post_nms_top_n_test]
        return boxes[keep]

    def _detections(self, features: dict[str, Tensor], proposals: Tensor, image_hw):
        heads, cfg = self.roi_heads, self.roi_heads.cfg
        class_logits, box_deltas = heads.box_predictor(heads.box_head(heads.pooler(features, [proposals])))
        num_classes = class_logits.shape[1]
        boxes = box_ops.decode_boxes(box_deltas, proposals, cfg.box_weights)  # (R, K+1, 4)
        boxes = box_ops.clip_boxes(boxes, image_hw)[:, 1:].reshape(-1, 4)
        scores = F.softmax(class_logits, dim=1)[:, 1:]
        labels = torch.arange(1, num_classes).repeat(scores.shape[0])
        scores = scores.reshape(-1)
        keep = scores > cfg.score_thresh
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = box_ops.nonempty_mask(boxes, 1e-2)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = _class_aware_nms(boxes, scores, labels, cfg.nms_thresh)[: cfg.detections_per_image]
        return boxes[keep], scores[keep], labels[keep]


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
    from fpn.benchmark import output_difference

    if image is None:
        image = torch.rand(3, 427, 640, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        reference = model.eval()([image])
    exported = OnnxDetector(onnx_path)([image])
    box_diff, score_diff, unmatched = output_difference(reference, exported)
    total = len(reference[0]["boxes"])
    return {"detections": total, "onnx_detections": len(exported[0]["boxes"]),
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
        results = []
        for image in images:
            array = image.detach().to("cpu", torch.float32).contiguous().numpy()
            boxes, scores, labels = self.session.run(None, {"image": array})
            results.append({"boxes": torch.from_numpy(boxes), "scores": torch.from_numpy(scores),
                            "labels": torch.from_numpy(labels)})
        return results
