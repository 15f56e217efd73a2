"""The feature pyramid and its ablation switches (docs/paper.md §1), on tiny hand-checkable maps."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fpn.config.schema import BackboneConfig
from fpn.model.backbone import ResNet
from fpn.model.neck import FeaturePyramid

IN_CHANNELS = {"c2": 2, "c3": 2, "c4": 2, "c5": 2}


def _identity_pyramid(**switches) -> FeaturePyramid:
    """1x1 laterals and 3x3 outputs that copy their input: P_k is the merged map itself."""
    fpn = FeaturePyramid(IN_CHANNELS, 2, **switches)
    with torch.no_grad():
        for conv in fpn.lateral.values():
            conv.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
            conv.bias.zero_()
        for conv in fpn.output.values():
            conv.weight.zero_()
            conv.weight[:, :, 1, 1] = torch.eye(2)
            conv.bias.zero_()
    return fpn


def _bottom_up(size=(64, 96)):  # a multiple of 32, as padded batches are
    torch.manual_seed(0)
    h, w = size
    return {f"c{k}": torch.randn(1, 2, -(-h // 2**k), -(-w // 2**k)) for k in range(2, 6)}


def test_top_down_with_laterals_is_sum_of_lateral_and_upsampled_coarser():
    c = _bottom_up()
    p = _identity_pyramid()(c)
    torch.testing.assert_close(p["p5"], c["c5"])
    expected_p4 = c["c4"] + F.interpolate(c["c5"], scale_factor=2, mode="nearest")
    torch.testing.assert_close(p["p4"], expected_p4)
    expected_p3 = c["c3"] + F.interpolate(expected_p4, scale_factor=2, mode="nearest")
    torch.testing.assert_close(p["p3"], expected_p3)
    torch.testing.assert_close(p["p6"], c["c5"][:, :, ::2, ::2])  # stride-2 subsampling of P5


def test_bottom_up_pyramid_has_no_top_down():
    c = _bottom_up()
    p = _identity_pyramid(top_down=False)(c)
    for k in range(2, 6):
        torch.testing.assert_close(p[f"p{k}"], c[f"c{k}"])


def test_no_lateral_keeps_only_the_coarsest_projection():
    fpn = _identity_pyramid(lateral=False)
    assert list(fpn.lateral) == ["p5"]
    c = _bottom_up()
    p = fpn(c)
    torch.testing.assert_close(p["p3"], F.interpolate(c["c5"], scale_factor=4, mode="nearest"))
    c["c3"] += 100.0  # finer bottom-up maps do not reach the output
    torch.testing.assert_close(fpn(c)["p3"], p["p3"])


def test_odd_image_size_through_the_pyramid():
    backbone = ResNet(BackboneConfig(depth=18, width=8, norm="gn", freeze_at=0))
    fpn = FeaturePyramid(backbone.out_channels, 16)
    image = torch.randn(1, 3, 333, 517)  # not padded: sizes round up at every stride
    p = fpn(backbone(image))
    expected = {"p2": (84, 130), "p3": (42, 65), "p4": (21, 33), "p5": (11, 17), "p6": (6, 9)}
    assert {k: tuple(v.shape[-2:]) for k, v in p.items()} == expected
    assert all(v.shape[1] == 16 for v in p.values())
