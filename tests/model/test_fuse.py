"""The inference path: folded normalisation and channels-last give the same function."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops.misc import FrozenBatchNorm2d

from fpn.config.files import load_config
from fpn.config.schema import BackboneConfig
from fpn.model.backbone import ResNet
from fpn.model.detector import FasterRCNN
from fpn.model.fuse import fold_norm_into_conv, inference_copy
from tests.conftest import assert_same_detections, frozen_norm, randomise_norm_statistics


@pytest.mark.parametrize("norm", ["frozen_bn", "bn"])
@torch.no_grad()
def test_folded_backbone_computes_the_same_features(norm):
    backbone = ResNet(BackboneConfig(depth=50, width=16, norm=norm, freeze_at=0)).eval()
    randomise_norm_statistics(backbone)
    fused = inference_copy(backbone)
    assert not any(isinstance(m, FrozenBatchNorm2d | torch.nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(2, 3, 96, 128)
    expected, got = backbone(x), fused(x.contiguous(memory_format=torch.channels_last))
    for level in expected:
        torch.testing.assert_close(got[level], expected[level], rtol=1e-4, atol=1e-4)


def test_fold_formula_by_hand():
    conv = torch.nn.Conv2d(1, 1, 1, bias=True)
    conv.weight.data.fill_(2.0)
    conv.bias.data.fill_(1.0)
    norm = frozen_norm(weight=3.0, bias=0.5, mean=4.0, var=9.0)
    fused = fold_norm_into_conv(conv, norm)
    # y = 3 * ((2x + 1) - 4) / 3 + 0.5 = 2x - 2.5
    assert fused.weight.item() == pytest.approx(2.0) and fused.bias.item() == pytest.approx(-2.5)


def test_eval_mode_uses_the_fast_path_and_follows_weight_changes():
    torch.manual_seed(0)
    cfg = load_config(None, ["model.backbone.depth=18", "model.backbone.width=8", "model.neck.channels=16",
                             "model.roi_heads.fc_dim=32", "model.input.min_size_test=128",
                             "model.input.max_size=128", "model.roi_heads.score_thresh=0.0"]).model
    model = FasterRCNN(cfg).eval()
    randomise_norm_statistics(model.backbone)
    images = [torch.rand(3, 100, 120)]
    with torch.no_grad():
        fast = model(images)
        assert model.inference_backbone.module is not None  # the folded copy, built on first use
        assert not any(k.startswith("inference") for k in model.state_dict())
        model.fast_inference = False
        slow = model(images)
        # order-free: 100 detections of an untrained model, adjacent scores ~1e-8 apart
        assert_same_detections(slow[0], fast[0], box_tol=1e-3, score_tol=1e-4, cut_tol=1e-6)
        model.fast_inference = True
        model.backbone.stem.conv.weight.mul_(0.5)  # a weight change must rebuild the folded copy
        changed_fast = model(images)
        model.fast_inference = False
        changed_slow = model(images)
    assert_same_detections(changed_slow[0], changed_fast[0], box_tol=1e-3, score_tol=1e-4, cut_tol=1e-6)
    assert not torch.allclose(changed_fast[0]["scores"][:5], fast[0]["scores"][:5])


def test_a_model_built_under_inference_mode_runs_the_fast_path():
    with torch.inference_mode():
        model = FasterRCNN(load_config(None, ["model.backbone.depth=18", "model.backbone.width=8",
                                              "model.neck.channels=16", "model.roi_heads.fc_dim=32"]).model)
        out = model.eval()([torch.rand(3, 64, 64)])
    assert set(out[0]) == {"boxes", "scores", "labels", "levels"}


@pytest.mark.slow
def test_compiled_inference_path_gives_the_same_detections_at_new_sizes():
    from torch._dynamo.utils import counters

    from tests.conftest import TINY_MODEL

    torch.manual_seed(0)
    overrides = [*TINY_MODEL, "model.backbone.norm=frozen_bn", "model.roi_heads.score_thresh=0.0"]
    cfg = load_config(None, overrides)
    model = FasterRCNN(cfg.model).eval()
    randomise_norm_statistics(model.backbone)
    images = [[torch.rand(3, 96, 120)], [torch.rand(3, 70, 96)]]
    with torch.inference_mode():
        eager = [model(batch)[0] for batch in images]
        model.compile_inference = True
        counters.clear()
        compiled = [model(batch)[0] for batch in images]
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo really compiled the bottom-up pathway
    for want, got in zip(eager, compiled, strict=True):
        # order-free: inductor's kernels may round differently from eager ATen's, and these 100
        # scores lie within 2e-4 of each other, adjacent ones ~1e-8 apart
        assert_same_detections(want, got, box_tol=1e-3, score_tol=1e-4, cut_tol=1e-6)
    model.train()  # training mode runs the ordinary modules, with gradients
    losses = model([torch.rand(3, 96, 96)], [{"boxes": torch.tensor([[10.0, 10, 60, 60]]),
                                               "labels": torch.tensor([1])}])
    sum(losses.values()).backward()
    assert model.backbone.stem.conv.weight.grad is not None


def test_the_order_free_comparison_still_catches_real_differences():
    g = torch.Generator().manual_seed(0)
    boxes = torch.rand(100, 2, generator=g) * 50
    want = {"boxes": torch.cat([boxes, boxes + 10], dim=1), "labels": torch.ones(100, dtype=torch.int64),
            "scores": torch.linspace(0.9, 0.1, 100)}
    shuffled = {k: v.flip(0) for k, v in want.items()}
    assert_same_detections(want, shuffled, box_tol=1e-3, score_tol=1e-4)  # order does not matter
    for key, index, delta in [("boxes", 3, 0.01), ("scores", 3, 1e-3), ("labels", 3, 1)]:
        bad = {k: v.clone() for k, v in shuffled.items()}
        bad[key][index] += delta  # one detection moved by 10x the tolerance, or relabelled
        with pytest.raises(AssertionError):
            assert_same_detections(want, bad, box_tol=1e-3, score_tol=1e-4)
    with pytest.raises(AssertionError):  # one detection fewer
        assert_same_detections(want, {k: v[1:] for k, v in want.items()}, box_tol=1e-3, score_tol=1e-4)
