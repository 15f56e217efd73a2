"""ONNX export: `fpn export` writes one graph whose ONNX Runtime detections match PyTorch's at
image sizes other than the one it was traced with."""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from fpn.cli import main
from fpn.config.files import load_config
from fpn.config.schema import Config, to_dict
from fpn.engine.checkpoint import save_checkpoint
from fpn.model.detector import FasterRCNN
from tests.conftest import TINY_MODEL, assert_same_detections

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@dataclass
class Exported:
    model: FasterRCNN
    run: Path
    onnx: Path
    image: Path  # the --verify-image
    out: str  # what `fpn export` printed
    err: str


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Exported:
    """``fpn export RUN --verify-image blocks.png`` on the tiny detector, once for this module (an
    export traces the whole eval path: the slow part of these tests)."""
    from PIL import Image

    tmp_path = tmp_path_factory.mktemp("export")
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
    blocks = torch.rand(3, 6, 8, generator=torch.Generator().manual_seed(2)) * 255
    pixels = blocks.to(torch.uint8).repeat_interleave(20, 1).repeat_interleave(20, 2).permute(1, 2, 0).numpy()
    Image.fromarray(pixels).save(tmp_path / "blocks.png")  # 160 x 120, not the default random image
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["export", str(tmp_path / "run"), "--output", str(tmp_path / "model.onnx"),
                     "--verify-image", str(tmp_path / "blocks.png")])
    assert code == 0, err.getvalue()
    return Exported(model, tmp_path / "run", tmp_path / "model.onnx", tmp_path / "blocks.png", out.getvalue(),
                    err.getvalue())


@pytest.mark.slow
def test_fpn_export_onnx_matches_pytorch_at_any_image_size(exported):
    from fpn.export import OnnxDetector

    assert exported.err == "", "the export must trace cleanly, without a fallback's graph dump"
    model, onnx_detector = exported.model, OnnxDetector(exported.onnx)
    generator = torch.Generator().manual_seed(1)
    for height, width in [(96, 130), (200, 77), (64, 64), (333, 500)]:
        image = torch.rand(3, height, width, generator=generator)
        with torch.inference_mode():
            want = model([image])[0]
        got = onnx_detector([image])[0]
        assert len(want["boxes"]) > 10, "the test needs detections to compare"
        assert got["boxes"].shape == want["boxes"].shape, (height, width)
        # same label, box within 0.01 px, score within 1e-4, in any order (near-equal scores may
        # swap places, and at the top-100 cut, which of them stays)
        assert_same_detections(want, got, box_tol=1e-2, score_tol=1e-4, cut_tol=1e-5)
        assert got["boxes"][:, 2].max() <= width + 1e-3 and got["boxes"][:, 3].max() <= height + 1e-3


@pytest.mark.slow
def test_fpn_export_verifies_on_the_given_image(exported):
    """``--verify-image``: the ONNX Runtime vs PyTorch check runs on that image and says so, with as
    many detections as PyTorch finds there."""
    from fpn.api import Detector, load_image

    found = re.search(rf"ONNX Runtime vs PyTorch on {re.escape(str(exported.image))}: "
                      r"(\d+)/(\d+) detections matched", exported.out)
    assert found and found[1] == found[2] and int(found[2]) > 0, exported.out
    with torch.inference_mode():
        detections = Detector.from_checkpoint(exported.run, "cpu")(load_image(exported.image))
    assert int(found[2]) == len(detections["boxes"])


@pytest.mark.slow
def test_fpn_export_fails_when_onnx_runtime_differs(exported, tmp_path, capsys, monkeypatch):
    """If ONNX Runtime's detections differ from PyTorch's (a stand-in for a broken export: every box
    moved by 2 px), the command fails with one line naming the file instead of reporting success."""
    import shutil

    import fpn.jobs.export
    from fpn.export import OnnxDetector

    traced = []

    def reuse(model, path, *args, **kwargs):  # the module's export, without tracing it again
        traced.append(path)
        shutil.copy(exported.onnx, path)
        return Path(path)

    run_onnx = OnnxDetector.__call__

    def moved(self, images):
        return [{**out, "boxes": out["boxes"] + 2.0} for out in run_onnx(self, images)]

    monkeypatch.setattr(fpn.jobs.export, "export_onnx", reuse)  # the name the job calls
    monkeypatch.setattr(OnnxDetector, "__call__", moved)
    broken = tmp_path / "broken.onnx"
    code = main(["export", str(exported.run), "--output", str(broken), "--verify-image", str(exported.image)])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "\n" not in err, err
    assert f"{broken}: ONNX Runtime's detections differ from PyTorch's" in err
    assert traced == [broken]  # the copy was verified, not a new trace


def test_fpn_export_reports_a_missing_checkpoint_in_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nothing"), "--output", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fpn export: error:") and "nothing" in err and "\n" not in err


def test_only_faster_rcnn_exports(tmp_path):
    from fpn.errors import ExportError
    from fpn.export import export_onnx

    cfg = load_config(None, [*TINY_MODEL, "model.box_head=false"]).model
    with pytest.raises(ExportError, match="model.box_head=False"):
        export_onnx(FasterRCNN(cfg), tmp_path / "rpn.onnx")
    assert not (tmp_path / "rpn.onnx").exists()
