"""mmdetection checkpoints: key table, config, anchors, deltas, level mapping, class names.

The fixture is mmdetection's ``faster_rcnn_r50_fpn`` state dict built in code from its key names
and shapes (``backbone`` = torchvision-style ResNet with BatchNorm counters, ``neck`` = FPN
``lateral_convs`` / ``fpn_convs``, ``rpn_head``, ``roi_head.bbox_head`` = Shared2FCBBoxHead with
background last), random values; mmdetection itself is not needed. Where mmdetection computes
something we compute too, the test writes mmdetection's formula by hand and compares.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from fpn.api import Detector
from fpn.cli import main
from fpn.errors import ConversionError, UnsafeCheckpointError
from fpn.interop.detectors import coco80, convert_detector, identify
from fpn.model.anchors import AnchorGenerator
from fpn.model.boxes import decode_boxes
from fpn.model.preprocess import Preprocessor
from fpn.model.roi_heads import map_rois_to_levels
from fpn.safe_reading import read_checkpoint

BLOCKS_R50 = [3, 4, 6, 3]


def _bn(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    names = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    return {f"{prefix}.{name}": (() if name == "num_batches_tracked" else (channels,)) for name in names}


def mmdetection_shapes(num_classes: int = 80) -> dict[str, tuple[int, ...]]:
    """mmdetection's FasterRCNN (R-50, FPN, Shared2FCBBoxHead) state dict: name -> shape."""
    shapes = {"backbone.conv1.weight": (64, 3, 7, 7), **_bn("backbone.bn1", 64)}
    in_ch = 64
    for layer, blocks in enumerate(BLOCKS_R50, start=1):
        width = 64 * 2 ** (layer - 1)
        for i in range(blocks):
            block = f"backbone.layer{layer}.{i}"
            convs = [(width, in_ch, 1, 1), (width, width, 3, 3), (4 * width, width, 1, 1)]
            for k, shape in enumerate(convs, 1):
                shapes[f"{block}.conv{k}.weight"] = shape
                shapes.update(_bn(f"{block}.bn{k}", shape[0]))
            if i == 0:
                shapes[f"{block}.downsample.0.weight"] = (4 * width, in_ch, 1, 1)
                shapes.update(_bn(f"{block}.downsample.1", 4 * width))
            in_ch = 4 * width
    for i, channels in enumerate([256, 512, 1024, 2048]):
        shapes |= {f"neck.lateral_convs.{i}.conv.weight": (256, channels, 1, 1),
                   f"neck.lateral_convs.{i}.conv.bias": (256,)}
    for i in range(4):
        shapes |= {f"neck.fpn_convs.{i}.conv.weight": (256, 256, 3, 3),
                   f"neck.fpn_convs.{i}.conv.bias": (256,)}
    shapes |= {"rpn_head.rpn_conv.weight": (256, 256, 3, 3), "rpn_head.rpn_conv.bias": (256,),
               "rpn_head.rpn_cls.weight": (3, 256, 1, 1), "rpn_head.rpn_cls.bias": (3,),
               "rpn_head.rpn_reg.weight": (12, 256, 1, 1), "rpn_head.rpn_reg.bias": (12,)}
    head = "roi_head.bbox_head"
    shapes |= {f"{head}.shared_fcs.0.weight": (1024, 256 * 7 * 7), f"{head}.shared_fcs.0.bias": (1024,),
               f"{head}.shared_fcs.1.weight": (1024, 1024), f"{head}.shared_fcs.1.bias": (1024,),
               f"{head}.fc_cls.weight": (num_classes + 1, 1024), f"{head}.fc_cls.bias": (num_classes + 1,),
               f"{head}.fc_reg.weight": (4 * num_classes, 1024), f"{head}.fc_reg.bias": (4 * num_classes,)}
    return shapes


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith(("running_mean", "bias")):
            state[key] = 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1:
            state[key] = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            state[key] = torch.randn(shape, generator=g) * (1.0 / int(np.prod(shape[1:]))) ** 0.5
    return state


@pytest.fixture(scope="module")
def mm_state():
    return random_state(mmdetection_shapes())


def test_conversion_uses_every_key_once_and_sets_the_config(mm_state):
    checkpoint = {"state_dict": mm_state, "meta": {"mmdet_version": "2.28.2"}}
    assert identify(checkpoint) == "mmdetection"
    foreign = convert_detector(checkpoint)
    counters = [k for k in mm_state if k.endswith("num_batches_tracked")]
    assert len(counters) == 53  # one per BatchNorm: stem + 16 blocks x 3 + 4 downsamples
    assert len(foreign.state_dict) == len(mm_state) - len(counters) == 295
    cfg = foreign.cfg
    assert cfg.backbone.depth == 50 and cfg.roi_heads.num_classes == 80
    assert not cfg.backbone.stride_in_1x1  # style='pytorch': the stride in the 3x3 conv
    assert (cfg.input.pixel_scale, cfg.input.channel_order) == (255.0, "RGB")
    assert cfg.input.pixel_mean == [123.675, 116.28, 103.53]
    assert cfg.input.pixel_std == [58.395, 57.12, 57.375]
    assert cfg.roi_heads.aligned and cfg.roi_heads.sampling_ratio == 0
    assert cfg.rpn.clamp_box_shrink and cfg.roi_heads.clamp_box_shrink
    assert cfg.roi_heads.box_weights == [10.0, 10.0, 5.0, 5.0]  # 1 / stds (0.1, 0.1, 0.2, 0.2)
    assert cfg.rpn.box_weights == [1.0, 1.0, 1.0, 1.0]
    assert (cfg.rpn.post_nms_top_n_train, cfg.rpn.post_nms_top_n_test) == (1000, 1000)
    names, ids = coco80()  # no names in the meta, 80 classes: COCO's
    assert cfg.class_names == names and cfg.category_ids == ids
    torch.testing.assert_close(foreign.state_dict["neck.lateral.p5.weight"],
                               mm_state["neck.lateral_convs.3.conv.weight"])  # block 3 = P5
    # background: mmdetection's last row, our first
    torch.testing.assert_close(foreign.state_dict["roi_heads.box_predictor.cls_score.bias"][0],
                               mm_state["roi_head.bbox_head.fc_cls.bias"][80])
    torch.testing.assert_close(foreign.state_dict["roi_heads.box_predictor.bbox_pred.weight"][4:],
                               mm_state["roi_head.bbox_head.fc_reg.weight"])


def test_caffe_style_and_class_names_come_from_the_meta(mm_state):
    state = dict(mm_state)
    state["roi_head.bbox_head.fc_cls.weight"] = torch.zeros(4, 1024)  # 3 classes
    state["roi_head.bbox_head.fc_cls.bias"] = torch.zeros(4)
    state["roi_head.bbox_head.fc_reg.weight"] = torch.zeros(12, 1024)
    state["roi_head.bbox_head.fc_reg.bias"] = torch.zeros(12)
    v2 = {"CLASSES": ("cat", "dog", "bird"), "config": "model = dict(backbone=dict(style='caffe'))"}
    foreign = convert_detector({"state_dict": state, "meta": v2})
    assert foreign.cfg.class_names == ["cat", "dog", "bird"] and foreign.cfg.category_ids == []
    assert foreign.cfg.backbone.stride_in_1x1  # caffe style: the stride in the 1x1 conv
    assert foreign.cfg.input.channel_order == "BGR" and foreign.cfg.input.pixel_std == [1.0, 1.0, 1.0]
    v3 = {"dataset_meta": {"classes": ("a", "b", "c"), "palette": [(1, 2, 3)] * 3},
          "cfg": "style = 'pytorch'"}
    foreign = convert_detector({"state_dict": state, "meta": v3})
    assert foreign.cfg.class_names == ["a", "b", "c"] and not foreign.cfg.backbone.stride_in_1x1
    assert convert_detector(state).cfg.class_names == []  # 3 unnamed classes


def test_rgb_0_255_config_equals_mmdetections_normalisation_by_hand(mm_state):
    cfg = convert_detector(mm_state).cfg.input
    rgb = torch.rand(3, 4, 6, generator=torch.Generator().manual_seed(0))
    mean = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
    torch.testing.assert_close(Preprocessor(cfg).normalize(rgb), (rgb * 255 - mean) / std)


def test_anchors_of_a_level_equal_mmdetections_formula(mm_state):
    """(f) AnchorGenerator(scales=[8], ratios=[0.5, 1, 2], strides=[4..64]), center_offset 0."""
    cfg = convert_detector(mm_state).cfg.rpn.anchors
    strides = {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
    ours = AnchorGenerator(cfg.sizes, strides, cfg.aspect_ratios, round_cell_anchors=cfg.round_cell_anchors,
                           stride_from_feature_size=cfg.stride_from_feature_size)
    feature_hw = {"p2": (5, 7), "p3": (3, 4), "p4": (2, 2), "p5": (1, 1), "p6": (1, 1)}
    got = ours(feature_hw, (20, 28), torch.device("cpu"))
    for (level, stride), anchors in zip(strides.items(), got, strict=True):
        # mmdetection's gen_single_level_base_anchors: base_size = stride, ratio-major
        ratios = torch.tensor([0.5, 1.0, 2.0])
        h_ratios = torch.sqrt(ratios)
        ws = stride * (1 / h_ratios) * 8
        hs = stride * h_ratios * 8
        base = torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], dim=1)  # centre 0 * stride
        h, w = feature_hw[level]
        xx = (torch.arange(w) * stride).repeat(h).float()  # x fastest, then y
        yy = (torch.arange(h) * stride).repeat_interleave(w).float()
        shifts = torch.stack([xx, yy, xx, yy], dim=1)
        expected = (shifts[:, None, :] + base[None]).reshape(-1, 4)
        torch.testing.assert_close(anchors, expected)
    assert got[0][1].tolist() == pytest.approx([-16, -16, 16, 16])  # 32 px at ratio 1 on P2


def _mmdet_delta2bbox(rois, deltas, stds):
    """mmdetection's DeltaXYWHBBoxCoder.decode (delta2bbox, means 0, no clipping), by hand."""
    denorm = deltas * torch.tensor(stds)
    max_ratio = abs(math.log(16 / 1000))
    dxy, dwh = denorm[:, :2], denorm[:, 2:].clamp(min=-max_ratio, max=max_ratio)
    pxy = (rois[:, :2] + rois[:, 2:]) * 0.5
    pwh = rois[:, 2:] - rois[:, :2]
    gxy, gwh = pxy + pwh * dxy, pwh * dwh.exp()
    return torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], dim=1)


def test_delta_decoding_equals_mmdetections_formula(mm_state):
    """(f) Our weights are 1 / mmdetection's stds; mmdetection also clamps shrinking."""
    cfg = convert_detector(mm_state).cfg
    rois = torch.tensor([[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 16.0, 16.0], [5.0, 5.0, 300.0, 105.0]])
    deltas = torch.tensor([[0.5, -0.3, 1.0, -2.0], [0.0, 0.0, -30.0, 3.0], [-1.0, 2.0, 40.0, -0.5]])
    heads = [(cfg.roi_heads.box_weights, [0.1, 0.1, 0.2, 0.2], cfg.roi_heads.clamp_box_shrink),
             (cfg.rpn.box_weights, [1.0, 1.0, 1.0, 1.0], cfg.rpn.clamp_box_shrink)]
    for weights, stds, clamp in heads:
        ours = decode_boxes(deltas, rois, weights, clamp_shrink=clamp)[:, 0]
        torch.testing.assert_close(ours, _mmdet_delta2bbox(rois, deltas, stds))
    # dw = -30 * 0.2 = -6 < -log(62.5): without the lower clamp the box would shrink 403 times
    unclamped = decode_boxes(deltas, rois, cfg.roi_heads.box_weights)[:, 0]
    assert not torch.allclose(unclamped[1], _mmdet_delta2bbox(rois, deltas, [0.1, 0.1, 0.2, 0.2])[1])


def test_finest_scale_56_level_mapping_is_eq1_with_224_at_level_4():
    """mmdetection: floor(log2(s / 56 + 1e-6)) clamped to 0..3; ours: floor(4 + log2(s / 224)) - 2.

    56 = 224 / 2^(4 - 2), so both send 224 to P4, 112 to P3, and the power-of-two boundaries the
    same way; a 1e-6 inside or outside the log2 only matters within 1e-6 of a boundary.
    """
    sides = torch.tensor([1.0, 30.0, 55.9, 56.0, 111.9, 112.0, 150.0, 224.0, 447.0, 448.0, 1000.0])
    boxes = torch.stack([torch.zeros_like(sides), torch.zeros_like(sides), sides, sides], dim=1)
    ours = map_rois_to_levels(boxes, 2, 5) - 2
    scale = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    theirs = torch.floor(torch.log2(scale / 56 + 1e-6)).clamp(min=0, max=3).long()
    assert ours.tolist() == theirs.tolist() == [0, 0, 0, 0, 0, 1, 1, 2, 2, 3, 3]


def test_a_retinanet_or_wrong_shape_fails_in_one_line(mm_state):
    """(e) Another mmdetection architecture, and a head with the wrong input size."""
    retina = {k: v for k, v in mm_state.items() if k.startswith(("backbone.", "neck."))}
    retina["bbox_head.retina_cls.weight"] = torch.zeros(720, 256, 3, 3)
    assert identify(retina) == "mmdetection"
    with pytest.raises(ConversionError) as err:
        convert_detector(retina)
    assert "bbox_head.retina_cls.weight (720, 256, 3, 3)" in str(err.value) and "\n" not in str(err.value)
    wrong = {**mm_state, "roi_head.bbox_head.shared_fcs.0.weight": torch.zeros(1024, 256 * 14 * 14)}
    with pytest.raises(ConversionError, match=r"roi_head\.bbox_head\.shared_fcs\.0\.weight \(our "
                       r"roi_heads\.box_head\.fc6\.weight\) has shape \(1024, 50176\) in the checkpoint, "
                       r"\(1024, 12544\) in our model"):
        convert_detector(wrong)


def test_identify_names_each_library_and_refuses_the_rest(mm_state):
    assert identify({"conv1.weight": torch.zeros(1), "layer1.0.conv1.weight": torch.zeros(1),
                     "fc.weight": torch.zeros(1)}) == "torchvision_resnet"
    assert identify({"model": {"backbone.body.conv1.weight": torch.zeros(1)}}) == "torchvision"
    assert identify({"backbone.stem.conv.weight": torch.zeros(1)}) == "fpn"
    with pytest.raises(ConversionError, match="not a checkpoint of torchvision, detectron2, mmdetection"):
        identify({"encoder.layers.0.weight": torch.zeros(1)})
    dup = {**mm_state, "backbone.layer1.0.bn1.num_batches_tracked": torch.tensor(3)}
    assert identify(dup) == "mmdetection"
    # two source keys for one of ours: torchvision's old and new names of the RPN conv
    both = {"backbone.body.conv1.weight": torch.zeros(64, 3, 7, 7), "rpn.head.conv.weight": torch.zeros(1),
            "rpn.head.conv.0.0.weight": torch.zeros(1)}
    with pytest.raises(ConversionError, match="both map to rpn.head.conv.weight"):
        convert_detector(both)


def test_a_checkpoint_with_python_objects_is_refused_in_one_line(tmp_path, mm_state):
    marker = tmp_path / "pwned"

    class HistoryBuffer:  # what an mmengine training checkpoint's message_hub holds
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "epoch_12.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "message_hub": HistoryBuffer()}, path)
    with pytest.raises(UnsafeCheckpointError) as err:
        read_checkpoint(path)
    assert "epoch_12.pth: refusing" in str(err.value) and "system" in str(err.value)
    assert "\n" not in str(err.value) and not marker.exists()


@pytest.mark.slow
@torch.inference_mode()
def test_converted_detector_runs_and_the_cli_writes_a_run_the_api_loads(mm_state, tmp_path, capsys):
    """(g) A forward in eval mode; then ``fpn convert --from mmdetection`` on a .pth."""
    model = convert_detector(mm_state).build().with_changes({"input": {"min_size_test": 96, "max_size": 128}})
    (result,) = model([torch.rand(3, 100, 80)])
    assert result["boxes"].shape[1] == 4

    path = tmp_path / "faster_rcnn_r50_fpn_1x_coco.pth"
    names, _ = coco80()
    torch.save({"state_dict": mm_state, "meta": {"CLASSES": tuple(names), "mmdet_version": "2.28.2"}}, path)
    assert main(["convert", str(path), "--output", str(tmp_path / "run"), "--from", "mmdetection"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("mmdetection ResNet-50-FPN, 80 classes (person, bicycle, car, ...); RGB 0-255, "
                          "stride in 3x3, aligned RoIAlign") and "deltas clamped both ways" in out
    detector = Detector.from_checkpoint(tmp_path / "run", "cpu")
    assert detector.model.cfg.rpn.clamp_box_shrink and detector.model.cfg.category_ids[-1] == 90
    assert main(["convert", str(path), "--output", str(tmp_path / "r2"), "--from", "detectron2"]) == 2
    assert "has no place" in capsys.readouterr().err  # forced to the wrong library: one line
