"""The optional int8 pyramid: off unless asked for, close to fp32, dropped when weights change."""

from __future__ import annotations

import logging

import pytest
import torch

from conftest import TINY_MODEL
from fpn.config import load_config
from fpn.model.detector import FasterRCNN
from fpn.model.quantize import quantize_pyramid

pytestmark = pytest.mark.skipif("x86" not in torch.backends.quantized.supported_engines,
                                reason="no x86 quantized backend")


def _model():
    torch.manual_seed(0)
    cfg = load_config(None, [*TINY_MODEL, "model.backbone.norm=bn", "model.roi_heads.score_thresh=0.0"]).model
    return FasterRCNN(cfg).eval()


@pytest.mark.slow
@torch.no_grad()
def test_int8_pyramid_is_opt_in_and_close_to_fp32(caplog):
    model = _model()
    images = [torch.rand(3, 96, 96, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    batch, _ = model.preprocess([images[0]])
    fp32 = model.features(batch.tensor)
    int8_model = quantize_pyramid(model, images[1:])
    assert torch.equal(model.features(batch.tensor)["p3"], fp32["p3"])  # the float model is untouched
    int8 = int8_model.features(batch.tensor)
    for level in fp32:
        error = (int8[level] - fp32[level]).abs().max() / fp32[level].abs().max()
        assert 0 < error < 0.25, f"{level}: {error:.3f}"  # quantized (not identical), yet close
    other_size = int8_model([torch.rand(3, 70, 130)])[0]  # the int8 graph takes any image size
    assert len(other_size["boxes"]) > 0
    model.neck.output["p3"].weight.mul_(0.5)  # a weight change turns int8 off, loudly
    with caplog.at_level(logging.WARNING):
        after = int8_model.features(batch.tensor)
    assert "int8 is off" in caplog.text and not int8_model.active
    assert torch.equal(after["p3"], model.features(batch.tensor)["p3"])  # fp32 features again


def test_segment_proposal_models_are_refused():
    cfg = load_config(None, [*TINY_MODEL, "model.proposals=segments", "model.box_head=false"]).model
    with pytest.raises(ValueError, match="segment-proposal models"):
        quantize_pyramid(FasterRCNN(cfg).eval(), [torch.rand(3, 96, 96)])
