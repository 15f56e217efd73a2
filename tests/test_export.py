"""ONNX export: `fpn export` writes one graph whose ONNX Runtime detections match PyTorch's at
image sizes other than the one it was traced with."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY_MODEL, assert_same_detections
from fpn.cli import main
from fpn.config import Config, load_config, to_dict
from fpn.engine.checkpoint import save_checkpoint
from fpn.model.detector import FasterRCNN

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.mark.slow
def test_fpn_export_onnx_matches_pytorch_at_any_image_size(tmp_path, capsys):
    from fpn.export import OnnxDetector

    torch.manual_seed(0)
    # Test size 80 with at most 120 a side: every image below is resized, non-uniformly rounded.
    overrides = [*TINY_MODEL, "model.input.min_size_test=80", "model.input.max_size=120",
                 "model.roi_heads.score_thresh=0.02", "model.backbone.norm=frozen_bn",
                 "model.roi_heads.num_classes=3"]
    cfg = load_config(None, overrides)
    model = FasterRCNN(cfg.model).eval()
    with torch.no_grad():  # frozen BN with non-trivial statistics, so that folding it matters
        for name, buffer in model.backbone.named_buffers():
            if name.endswith("running_mean"):
                buffer.uniform_(-0.2, 0.2)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
    save_checkpoint(tmp_path / "run" / "checkpoints", 0, model.state_dict(), None,
                    to_dict(Config(model=cfg.model)))
    onnx_path = tmp_path / "model.onnx"

    assert main(["export", str(tmp_path / "run"), "--output", str(onnx_path)]) == 0
    captured = capsys.readouterr()
    assert "detections matched" in captured.out
    assert captured.err == "", "the export must trace cleanly, without a fallback's graph dump"

    exported = OnnxDetector(onnx_path)
    generator = torch.Generator().manual_seed(1)
    for height, width in [(96, 130), (200, 77), (64, 64), (333, 500)]:
        image = torch.rand(3, height, width, generator=generator)
        with torch.inference_mode():
            want = model([image])[0]
        got = exported([image])[0]
        assert len(want["boxes"]) > 10, "the test needs detections to compare"
        assert got["boxes"].shape == want["boxes"].shape, (height, width)
        # same label, box within 0.01 px, score within 1e-4, in any order (near-equal scores may
        # swap places, and at the top-100 cut, which of them stays)
        assert_same_detections(want, got, box_tol=1e-2, score_tol=1e-4, cut_tol=1e-5)
        assert got["boxes"][:, 2].max() <= width + 1e-3 and got["boxes"][:, 3].max() <= height + 1e-3


def test_fpn_export_reports_a_missing_checkpoint_in_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nothing"), "--output", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fpn export: error:") and "nothing" in err and "\n" not in err


def test_only_faster_rcnn_exports(tmp_path):
    from fpn.export import ExportError, export_onnx

    cfg = load_config(None, [*TINY_MODEL, "model.box_head=false"]).model
    with pytest.raises(ExportError, match="model.box_head=False"):
        export_onnx(FasterRCNN(cfg), tmp_path / "rpn.onnx")
    assert not (tmp_path / "rpn.onnx").exists()
