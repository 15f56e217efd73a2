"""detectron2 checkpoints: reading, key table, config, and each transform on small tensors.

The fixture is detectron2's R50-FPN Faster R-CNN state dict built in code from its published key
names and shapes (docs/interop.md, "Key names: detectron2"), with random values; no binary file
is committed and detectron2 is not needed.
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fpn.api import Detector
from fpn.cli import main
from fpn.config.schema import BackboneConfig, InputConfig, ModelConfig
from fpn.errors import ConversionError, UnsafeCheckpointError
from fpn.interop.detectors import coco80, convert_detector, identify
from fpn.model.backbone import Bottleneck, make_norm_factory
from fpn.model.preprocess import Preprocessor
from fpn.safe_reading import read_checkpoint

BLOCKS = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}


def _norm(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    names = ("weight", "bias", "running_mean", "running_var")
    return {f"{prefix}.norm.{name}": (channels,) for name in names}


def detectron2_shapes(num_classes: int = 80, depth: int = 50) -> dict[str, tuple[int, ...]]:
    """detectron2's ``GeneralizedRCNN`` R-FPN state dict: name -> shape, in its module order."""
    shapes = {"backbone.bottom_up.stem.conv1.weight": (64, 3, 7, 7),
              **_norm("backbone.bottom_up.stem.conv1", 64)}
    in_ch = 64
    for stage, blocks in zip(range(2, 6), BLOCKS[depth], strict=True):
        width = 64 * 2 ** (stage - 2)
        for i in range(blocks):
            block = f"backbone.bottom_up.res{stage}.{i}"
            if i == 0:
                shapes[f"{block}.shortcut.weight"] = (4 * width, in_ch, 1, 1)
                shapes.update(_norm(f"{block}.shortcut", 4 * width))
            convs = [(width, in_ch, 1, 1), (width, width, 3, 3), (4 * width, width, 1, 1)]
            for k, shape in enumerate(convs, 1):
                shapes[f"{block}.conv{k}.weight"] = shape
                shapes.update(_norm(f"{block}.conv{k}", shape[0]))
            in_ch = 4 * width
    for stage, channels in zip(range(2, 6), [256, 512, 1024, 2048], strict=True):
        shapes |= {f"backbone.fpn_lateral{stage}.weight": (256, channels, 1, 1),
                   f"backbone.fpn_lateral{stage}.bias": (256,),
                   f"backbone.fpn_output{stage}.weight": (256, 256, 3, 3),
                   f"backbone.fpn_output{stage}.bias": (256,)}
    rpn = "proposal_generator.rpn_head"
    shapes |= {f"{rpn}.conv.weight": (256, 256, 3, 3), f"{rpn}.conv.bias": (256,),
               f"{rpn}.objectness_logits.weight": (3, 256, 1, 1), f"{rpn}.objectness_logits.bias": (3,),
               f"{rpn}.anchor_deltas.weight": (12, 256, 1, 1), f"{rpn}.anchor_deltas.bias": (12,),
               "roi_heads.box_head.fc1.weight": (1024, 256 * 7 * 7), "roi_heads.box_head.fc1.bias": (1024,),
               "roi_heads.box_head.fc2.weight": (1024, 1024), "roi_heads.box_head.fc2.bias": (1024,),
               "roi_heads.box_predictor.cls_score.weight": (num_classes + 1, 1024),
               "roi_heads.box_predictor.cls_score.bias": (num_classes + 1,),
               "roi_heads.box_predictor.bbox_pred.weight": (4 * num_classes, 1024),
               "roi_heads.box_predictor.bbox_pred.bias": (4 * num_classes,)}
    return shapes


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors a network can run on: He-scaled weights, variances near 1."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith(("running_mean", "bias")):
            state[key] = 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1:  # norm scale
            state[key] = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            fan_in = int(np.prod(shape[1:]))
            state[key] = torch.randn(shape, generator=g) * (1.0 / fan_in) ** 0.5
    return state


@pytest.fixture(scope="module")
def d2_state():
    return random_state(detectron2_shapes())


def test_the_fixture_has_detectron2s_295_tensors(d2_state):
    assert len(d2_state) == 295  # docs/interop.md: as torchvision's R50-FPN with FrozenBN


def test_conversion_uses_every_key_once_and_sets_the_config(d2_state):
    checkpoint = {"model": d2_state, "__author__": "Detectron2 Model Zoo"}
    assert identify(checkpoint) == "detectron2"
    foreign = convert_detector(checkpoint)
    assert foreign.library == "detectron2"
    assert len(foreign.state_dict) == len(d2_state)  # one of ours per source tensor, none dropped
    cfg = foreign.cfg
    assert cfg.backbone.depth == 50 and cfg.roi_heads.num_classes == 80
    assert cfg.backbone.stride_in_1x1 and cfg.backbone.frozen_bn_eps == 1e-5
    assert (cfg.input.pixel_scale, cfg.input.channel_order) == (255.0, "BGR")
    assert cfg.input.pixel_mean == [103.53, 116.28, 123.675] and cfg.input.pixel_std == [1.0, 1.0, 1.0]
    assert cfg.roi_heads.aligned and cfg.roi_heads.sampling_ratio == 0
    assert not cfg.rpn.anchors.round_cell_anchors and not cfg.rpn.anchors.stride_from_feature_size
    assert (cfg.rpn.pre_nms_top_n_train, cfg.rpn.pre_nms_top_n_test) == (2000, 1000)
    assert (cfg.rpn.post_nms_top_n_train, cfg.rpn.post_nms_top_n_test) == (1000, 1000)
    assert not cfg.rpn.clamp_box_shrink  # detectron2 clamps growth only, as torchvision
    names, ids = coco80()
    assert cfg.class_names == names and cfg.category_ids == ids
    assert (names[0], names[-1], ids[11], ids[-1]) == ("person", "toothbrush", 13, 90)  # id 12 is a gap
    # the stride moved to the 1x1 conv of each stage's first block, the same weights
    torch.testing.assert_close(foreign.state_dict["backbone.res3.0.conv1.weight"],
                               d2_state["backbone.bottom_up.res3.0.conv1.weight"])
    torch.testing.assert_close(foreign.state_dict["backbone.res3.0.shortcut.1.running_var"],
                               d2_state["backbone.bottom_up.res3.0.shortcut.norm.running_var"])
    model = foreign.build()
    assert model.backbone.res3[0].conv1.stride == (2, 2) and model.backbone.res3[0].conv2.stride == (1, 1)


def test_counters_cached_anchors_and_pixel_buffers_carry_no_weights(d2_state):
    extra = {"backbone.bottom_up.stem.conv1.norm.num_batches_tracked": torch.tensor(0),
             "proposal_generator.anchor_generator.cell_anchors.0": torch.zeros(3, 4),
             "pixel_mean": torch.tensor([[[100.0]], [[110.0]], [[120.0]]]),
             "pixel_std": torch.tensor([[[1.0]], [[2.0]], [[3.0]]])}
    foreign = convert_detector({**d2_state, **extra})
    assert len(foreign.state_dict) == len(d2_state)
    assert foreign.cfg.input.pixel_mean == [100.0, 110.0, 120.0]  # an older checkpoint's own buffers
    assert foreign.cfg.input.pixel_std == [1.0, 2.0, 3.0]


def test_class_rows_move_background_first_with_the_same_probabilities(d2_state):
    """(a) detectron2: K object rows then background; ours: background then the K rows."""
    g = torch.Generator().manual_seed(3)
    num_classes, features = 5, 8
    state = dict(d2_state)
    for name, rows in [("cls_score", num_classes + 1), ("bbox_pred", 4 * num_classes)]:  # small heads
        state[f"roi_heads.box_predictor.{name}.weight"] = torch.randn(rows, 1024, generator=g)
        state[f"roi_heads.box_predictor.{name}.bias"] = torch.randn(rows, generator=g)
    ours = convert_detector(state).state_dict
    x = torch.randn(features, 1024, generator=g)
    theirs_logits = F.linear(x, state["roi_heads.box_predictor.cls_score.weight"],
                             state["roi_heads.box_predictor.cls_score.bias"])
    our_logits = F.linear(x, ours["roi_heads.box_predictor.cls_score.weight"],
                          ours["roi_heads.box_predictor.cls_score.bias"])
    theirs, mine = theirs_logits.softmax(1), our_logits.softmax(1)
    torch.testing.assert_close(mine[:, 1:], theirs[:, :num_classes])  # class k: their k-1, our k
    torch.testing.assert_close(mine[:, 0], theirs[:, num_classes])  # background: their last, our 0
    their_deltas = F.linear(x, state["roi_heads.box_predictor.bbox_pred.weight"],
                            state["roi_heads.box_predictor.bbox_pred.bias"])
    our_deltas = F.linear(x, ours["roi_heads.box_predictor.bbox_pred.weight"],
                          ours["roi_heads.box_predictor.bbox_pred.bias"])
    assert our_deltas.shape == (features, 4 * (num_classes + 1))
    assert bool((our_deltas[:, :4] == 0).all())  # background's unused rows
    torch.testing.assert_close(our_deltas[:, 4:], their_deltas)  # class k's 4 rows follow it


def test_bgr_0_255_config_equals_detectron2s_normalisation_by_hand(d2_state):
    """(b) Our input is RGB in [0, 1]; the config makes it BGR 0-255 minus the caffe means."""
    cfg = convert_detector(d2_state).cfg.input
    rgb = torch.rand(3, 5, 7, generator=torch.Generator().manual_seed(0))
    bgr_255 = torch.stack([rgb[2], rgb[1], rgb[0]]) * 255
    by_hand = bgr_255 - torch.tensor([103.53, 116.28, 123.675]).view(3, 1, 1)  # std 1
    torch.testing.assert_close(Preprocessor(cfg).normalize(rgb), by_hand)
    assert not torch.allclose(Preprocessor(InputConfig()).normalize(rgb), by_hand, atol=1)


def _frozen_bn(x, norm):
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    return (x - norm.running_mean[:, None, None]) * scale[:, None, None] + norm.bias[:, None, None]


@torch.no_grad()
def test_stride_placement_changes_the_output_and_matches_a_hand_built_bottleneck():
    """(c) The same weights, stride 2 on the 1x1 conv (MSRA) or on the 3x3 (torchvision)."""
    torch.manual_seed(0)
    norm = make_norm_factory(BackboneConfig(norm="frozen_bn"))
    in_1x1 = Bottleneck(16, 8, 2, norm, stride_in_1x1=True)
    for module in in_1x1.modules():
        if hasattr(module, "running_var"):
            module.weight.uniform_(0.5, 1.5)
            module.bias.normal_()
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 1.5)
    in_3x3 = Bottleneck(16, 8, 2, norm, stride_in_1x1=False)
    in_3x3.load_state_dict(in_1x1.state_dict())
    x = torch.randn(1, 16, 9, 11)
    b = in_1x1
    out = F.relu(_frozen_bn(F.conv2d(x, b.conv1.weight, stride=2), b.norm1))  # the stride here
    out = F.relu(_frozen_bn(F.conv2d(out, b.conv2.weight, padding=1), b.norm2))
    out = _frozen_bn(F.conv2d(out, b.conv3.weight), b.norm3)
    reference = F.relu(out + _frozen_bn(F.conv2d(x, b.shortcut[0].weight, stride=2), b.shortcut[1]))
    torch.testing.assert_close(in_1x1(x), reference, rtol=1e-4, atol=1e-4)  # float32 rounding only
    flipped = in_3x3(x)
    assert flipped.shape == reference.shape
    assert (flipped - reference).abs().max() > 0.1  # same shapes, different outputs


def test_a_pkl_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    """(d) The restricted unpickler refuses the global before looking it up."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "model_final.pkl"
    path.write_bytes(pickle.dumps({"model": {"w": np.zeros(2, np.float32)}, "x": Payload()}))
    with pytest.raises(UnsafeCheckpointError) as err:
        read_checkpoint(path)
    message = str(err.value)
    assert "model_final.pkl: refusing" in message and "system" in message and "\n" not in message
    assert not marker.exists()
    path.write_bytes(pickle.dumps({"model": {"w": np.zeros(2)}, "f": eval}))  # any other callable
    with pytest.raises(UnsafeCheckpointError, match="builtins.eval"):
        read_checkpoint(path)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_a_model_zoo_pkl_of_numpy_arrays_is_read(tmp_path, protocol):
    # protocol 2 carries the array bytes through _codecs.encode, as detectron2's older files do
    arrays = {"roi_heads.box_head.fc1.bias": np.arange(4, dtype=np.float32),
              "backbone.bottom_up.stem.conv1.weight": np.ones((2, 3, 1, 1), np.float64)}
    path = tmp_path / "R50.pkl"
    path.write_bytes(pickle.dumps({"model": arrays, "__author__": "Detectron2 Model Zoo"}, protocol=protocol))
    checkpoint = read_checkpoint(path)
    assert checkpoint["__author__"] == "Detectron2 Model Zoo"
    torch.testing.assert_close(checkpoint["model"]["roi_heads.box_head.fc1.bias"], torch.arange(4.0))
    assert checkpoint["model"]["backbone.bottom_up.stem.conv1.weight"].dtype == torch.float64


def test_wrong_architectures_fail_in_one_line_naming_the_key_and_shapes(d2_state):
    """(e) A different class count forced by a config, an extra block, a mask head."""
    cfg = ModelConfig()
    cfg.roi_heads.num_classes = 20
    with pytest.raises(ConversionError) as err:
        convert_detector(d2_state, cfg=cfg)
    message = str(err.value)
    assert "\n" not in message
    assert "roi_heads.box_predictor.cls_score.weight" in message
    assert "(81, 1024) in the checkpoint, (21, 1024) in our model" in message

    extra = {"backbone.bottom_up.res4.6.conv1.weight": torch.zeros(256, 1024, 1, 1)}
    with pytest.raises(ConversionError, match="res4 has 7 bottleneck blocks"):  # R-50 has 6, R-101 23
        convert_detector({**d2_state, **extra})
    with pytest.raises(ConversionError) as err:  # the same, into an R-50 config given by hand
        convert_detector({**d2_state, **extra}, cfg=ModelConfig())
    assert "backbone.bottom_up.res4.6.conv1.weight (our backbone.res4.6.conv1.weight) (256, 1024, 1, 1) " \
        "has no place" in str(err.value)
    mask = {"roi_heads.mask_head.predictor.weight": torch.zeros(80, 256, 1, 1)}
    with pytest.raises(ConversionError, match=r"roi_heads\.mask_head\.predictor\.weight \(80, 256, 1, 1\) "
                                              "has no place"):
        convert_detector({**d2_state, **mask})


@pytest.mark.slow
@torch.inference_mode()
def test_converted_detector_runs_and_the_cli_writes_a_run_the_api_loads(d2_state, tmp_path, capsys):
    """(g) A forward in eval mode; then ``fpn convert`` on a .pkl, loaded by fpn.api."""
    model = convert_detector(d2_state).build().with_changes({"input": {"min_size_test": 96, "max_size": 128}})
    (result,) = model([torch.rand(3, 90, 120)])
    assert result["boxes"].shape[1] == 4 and len(result["boxes"]) == len(result["labels"])

    path = tmp_path / "model_final_280758.pkl"
    arrays = {k: v.numpy() for k, v in d2_state.items()}
    path.write_bytes(pickle.dumps({"model": arrays, "__author__": "Detectron2 Model Zoo"}, protocol=4))
    assert main(["convert", str(path), "--output", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out.strip()
    assert out.count("\n") == 0
    assert out.startswith("detectron2 ResNet-50-FPN, 80 classes (person, bicycle, car, ...)")
    assert "BGR 0-255, stride in 1x1, aligned RoIAlign, sampling ratio 0, unrounded anchors" in out
    detector = Detector.from_checkpoint(tmp_path / "run", "cpu")
    assert detector.model.cfg.backbone.stride_in_1x1 and detector.class_names[0] == "person"
    torch.testing.assert_close(detector.model.roi_heads.box_predictor.cls_score.bias[0],
                               d2_state["roi_heads.box_predictor.cls_score.bias"][80])


def test_a_detectron2_pth_converts_as_its_pkl_does(d2_state, tmp_path, capsys):
    """``fpn convert`` on a .pth as detectron2's own trainer writes it (DetectionCheckpointer: the
    tensors under "model", beside the optimizer, scheduler and iteration) gives the run that the
    model-zoo .pkl of the same tensors gives: the same description, config and weights."""
    from fpn.engine.checkpoint import latest_checkpoint, load_checkpoint

    pth = tmp_path / "model_0089999.pth"
    optimizer = {"state": {i: {"momentum_buffer": torch.zeros(2)} for i in range(2)},
                 "param_groups": [{"lr": 0.02, "params": [0, 1]}]}
    scheduler = {"last_epoch": 89999, "base_lrs": [0.02]}
    torch.save({"model": d2_state, "optimizer": optimizer, "scheduler": scheduler, "iteration": 89999}, pth)
    pkl = tmp_path / "model_final_280758.pkl"
    pkl.write_bytes(pickle.dumps({"model": {k: v.numpy() for k, v in d2_state.items()},
                                  "__author__": "Detectron2 Model Zoo"}, protocol=4))
    said = {}
    for name, path in (("pth", pth), ("pkl", pkl)):
        assert main(["convert", str(path), "--output", str(tmp_path / name)]) == 0, capsys.readouterr().err
        said[name] = capsys.readouterr().out.split("; wrote")[0]
    assert said["pth"] == said["pkl"] and said["pth"].startswith("detectron2 ResNet-50-FPN, 80 classes")
    (from_pth, _, cfg_pth), (from_pkl, _, cfg_pkl) = (
        load_checkpoint(latest_checkpoint(tmp_path / name / "checkpoints")) for name in ("pth", "pkl"))
    assert cfg_pth == cfg_pkl and from_pth.keys() == from_pkl.keys()
    assert all(torch.equal(from_pth[k], from_pkl[k]) for k in from_pth)
    # and what they hold is detectron2's, moved: background from its last row to our first
    torch.testing.assert_close(from_pth["roi_heads.box_predictor.cls_score.bias"][0],
                               d2_state["roi_heads.box_predictor.cls_score.bias"][80], rtol=0, atol=0)


def test_an_r101_checkpoint_gets_depth_101():
    shapes = detectron2_shapes(depth=101)
    state = {key: torch.empty(shape) for key, shape in shapes.items()}  # values do not matter here
    foreign = convert_detector({"model": state})
    assert foreign.cfg.backbone.depth == 101 and "backbone.res4.22.conv3.weight" in foreign.state_dict


def test_an_fpn_state_dict_passes_through_from_safetensors(tmp_path):
    from safetensors.torch import save_file

    from fpn.model.detector import FasterRCNN

    cfg = ModelConfig()
    cfg.backbone.depth, cfg.roi_heads.num_classes = 18, 3
    state = FasterRCNN(cfg).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    checkpoint = read_checkpoint(tmp_path / "model.safetensors")
    assert identify(checkpoint) == "fpn"
    foreign = convert_detector(checkpoint)
    assert (foreign.cfg.backbone.depth, foreign.cfg.roi_heads.num_classes) == (18, 3)
    assert all(torch.equal(foreign.state_dict[k], v) for k, v in state.items())


def test_cell_anchors_equal_detectron2s_formula(d2_state):
    """detectron2's generate_cell_anchors: w = sqrt(size² / ratio), h = ratio · w, centred at 0."""
    from fpn.model.anchors import cell_anchors

    cfg = convert_detector(d2_state).cfg.rpn.anchors
    for level, sizes in cfg.sizes.items():
        expected = []
        for size in sizes:  # size-major, then ratio; one size per level in FPN
            for ratio in cfg.aspect_ratios:
                w = (size**2 / ratio) ** 0.5
                h = ratio * w
                expected.append([-w / 2, -h / 2, w / 2, h / 2])
        got = cell_anchors(sizes, cfg.aspect_ratios, cfg.round_cell_anchors)
        torch.testing.assert_close(got, torch.tensor(expected), msg=level)
    # 32 px at ratio 1:2 (h / w = 0.5): 45.25 x 22.63, not torchvision's rounded [-23, -11, 23, 11]
    assert cell_anchors([32], [0.5], cfg.round_cell_anchors)[0].tolist() == pytest.approx(
        [-22.627, -11.314, 22.627, 11.314], abs=1e-3)
