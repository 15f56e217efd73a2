"""Parts passed into the detector by hand (``FasterRCNN(cfg, neck=..., rpn=..., roi_heads=...)``):
a neck the library does not know trains and detects, and gets the layout guard and speed paths of
a built one."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops import roi_align

from fpn.config.files import load_config
from fpn.errors import ConfigError
from fpn.model.conv_norm import ConvNorm
from fpn.model.detector import FasterRCNN
from fpn.model.roi_align import roi_align_for_training
from fpn.model.roi_heads import RoIHeads
from fpn.model.rpn import RegionProposalNetwork
from tests.model.test_detector import two_images

# ResNet-18 at width 16 (C3: 32 channels, C4: 64), heads on the two levels the neck below gives.
SMALL = ["model.backbone.depth=18", "model.backbone.width=16", "model.backbone.norm=frozen_bn",
         "model.backbone.freeze_at=0", "model.roi_heads.fc_dim=32", "model.roi_heads.num_classes=2",
         "model.input.min_size_train=[128]", "model.input.min_size_test=128", "model.input.max_size=160",
         "model.rpn.levels=[p3, p4]", "model.rpn.anchors.sizes={p3: [32.0], p4: [64.0]}",
         "model.roi_heads.levels=[p3, p4]", "model.rpn.batch_size_per_image=64",
         "model.roi_heads.batch_size_per_image=64"]


class TwoLevelNeck(nn.Module):
    """A neck fpn does not ship: C3 and C4, each through its own 1x1 convolution to ``d`` channels,
    no top-down pathway. It states its facts (``fpn.model.neck.Neck``) and nothing else."""

    in_levels = ["c3", "c4"]
    levels = ["p3", "p4"]

    def __init__(self, d: int):
        super().__init__()
        self.out_channels = {"p3": d, "p4": d}
        self.strides = {"p3": 8, "p4": 16}
        self.project = nn.ModuleDict({"p3": nn.Conv2d(32, d, 1), "p4": nn.Conv2d(64, d, 1)})

    def forward(self, bottom_up: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"p3": self.project["p3"](bottom_up["c3"]), "p4": self.project["p4"](bottom_up["c4"])}


def _model(d: int = 16, **kwargs) -> FasterRCNN:
    torch.manual_seed(0)
    return FasterRCNN(load_config(None, SMALL).model, neck=TwoLevelNeck(d), **kwargs)


def test_a_detector_with_a_neck_passed_in_trains_a_step_and_detects():
    model = _model()
    assert isinstance(model.neck, TwoLevelNeck)
    # the bottom-up pathway is built up to the deepest map the neck reads: C4, so no res5
    assert model.backbone.stage_names == ["res2", "res3", "res4"]
    # anchors on the 128 x 160 input: p3 16 x 20 cells, p4 8 x 10 cells, one size x 3 ratios each
    assert model.num_anchors((128, 160)) == 16 * 20 * 3 + 8 * 10 * 3
    images, targets = two_images()
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    before = model.neck.project["p4"].weight.detach().clone()
    losses = model(images, targets)
    assert set(losses) == {"loss_rpn_objectness", "loss_rpn_box", "loss_cls", "loss_box"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.neck.project["p4"].weight.grad.abs().sum() > 0  # the losses reach the neck's weights
    optimizer.step()
    assert not torch.equal(model.neck.project["p4"].weight, before)
    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2
    for det, image in zip(detections, images, strict=True):
        boxes = det["boxes"]
        assert boxes.shape[1] == 4 and len(det["scores"]) == len(boxes) == len(det["labels"])
        height, width = image.shape[-2:]
        assert (boxes[:, 0::2] <= width).all() and (boxes[:, 1::2] <= height).all()  # in the image
        assert set(det["levels"].tolist()) <= {3, 4}  # pooled from the neck's levels only


@pytest.mark.parametrize(("d", "expected"), [(16, torch.channels_last), (24, torch.contiguous_format)])
def test_the_channels_last_guard_reads_a_neck_passed_in(d, expected):
    """Width 16 allows channels-last; a hand-made neck of d = 24 channels must switch it off, as a
    configured pyramid of 24 channels does (issue 25, fpn.model.layout)."""
    assert _model(d).memory_format == expected


def test_the_speed_paths_reach_parts_passed_in():
    res5_head = ["model.roi_heads.head=res5", "model.roi_heads.pooler_resolution=14"]
    cfg = load_config(None, [*SMALL, *res5_head]).model
    torch.manual_seed(0)
    heads = RoIHeads(cfg.roi_heads, 16, {"p3": 8, "p4": 16}, cfg.backbone)
    assert all(m.fold_frozen_norm for m in heads.modules() if isinstance(m, ConvNorm))  # as built
    plain = FasterRCNN(cfg, fast_training=False, neck=TwoLevelNeck(16), roi_heads=heads)
    assert plain.roi_heads is heads
    convs = [m for m in heads.modules() if isinstance(m, ConvNorm)]
    assert convs and not any(m.fold_frozen_norm for m in convs)
    assert heads.pooler.training_roi_align is roi_align
    fast = FasterRCNN(cfg, neck=TwoLevelNeck(16), roi_heads=heads)
    assert all(m.fold_frozen_norm for m in convs)
    assert fast.roi_heads.pooler.training_roi_align is roi_align_for_training


def test_an_rpn_passed_in_is_the_one_that_runs():
    cfg = load_config(None, SMALL).model
    rpn = RegionProposalNetwork(cfg.rpn, 16, {"p3": 8, "p4": 16})
    model = FasterRCNN(cfg, neck=TwoLevelNeck(16), rpn=rpn).eval()
    calls = []
    rpn.register_forward_hook(lambda module, args, output: calls.append(output))
    with torch.no_grad():
        detections = model([torch.rand(3, 128, 160)], return_proposals=True)
    assert len(calls) == 1
    assert len(detections[0]["proposals"]) == len(calls[0][0][0])


def test_with_changes_keeps_the_parts_passed_in():
    model = _model()
    changed = model.with_changes({"input": {"min_size_test": 96}})
    assert isinstance(changed.neck, TwoLevelNeck) and changed.neck is not model.neck
    torch.testing.assert_close(changed.state_dict(), model.state_dict(), rtol=0, atol=0)


def test_parts_the_config_does_not_have_or_a_neck_without_its_facts_are_refused():
    cfg = load_config(None, SMALL).model
    rpn = RegionProposalNetwork(cfg.rpn, 16, {"p3": 8, "p4": 16})
    given = load_config(None, [*SMALL, "model.proposals=given"]).model
    with pytest.raises(ConfigError, match="model.proposals=given"):
        FasterRCNN(given, neck=TwoLevelNeck(16), rpn=rpn)

    class Factless(nn.Module):
        def forward(self, bottom_up):
            return bottom_up

    with pytest.raises(TypeError, match=r"Factless does not state \['in_levels', 'levels'"):
        FasterRCNN(cfg, neck=Factless())
