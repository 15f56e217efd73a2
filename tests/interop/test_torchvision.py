"""Our detector against torchvision's own, on identical (random) weights and inputs.

torchvision is the independent reference here: ``fasterrcnn_resnet50_fpn`` is built seeded with
random weights, converted into ours, and both run on the same images. Both use a reduced input
size (shorter side 320) so the suite stays fast; the code path is the same as at 800.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision.models.detection import FasterRCNN as TVFasterRCNN
from torchvision.models.detection import fasterrcnn_resnet50_fpn
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import FrozenBatchNorm2d

from fpn import from_torchvision, load_torchvision_resnet
from fpn.config.schema import BackboneConfig
from fpn.errors import ConversionError
from fpn.interop.detectors import convert_detector
from fpn.model.backbone import ResNet

MIN_SIZE, MAX_SIZE = 320, 544


def _set_input_size(model, min_size=MIN_SIZE, max_size=MAX_SIZE):
    model.transform.min_size = (min_size,)
    model.transform.max_size = max_size


def _ours_like(tv_model):
    return from_torchvision(tv_model.state_dict()).with_changes({"input": {"min_size_test": MIN_SIZE,
                                                                           "max_size": MAX_SIZE}})


def _images():
    g = torch.Generator().manual_seed(1)
    # three sizes and aspect ratios: landscape, portrait, and an odd-sized one (P5 odd -> P6 quirk)
    return [torch.rand(3, 333, 517, generator=g), torch.rand(3, 480, 300, generator=g),
            torch.rand(3, 401, 401, generator=g)]


@pytest.fixture(scope="module")
def tv_model():
    torch.manual_seed(0)
    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).eval()
    with torch.no_grad():  # random weights score below 0.05: make class 3 confident
        model.roi_heads.box_predictor.cls_score.bias[3] += 6.0
    _set_input_size(model)
    return model


def match_boxes(ref_boxes, ref_scores, ref_labels, boxes, scores, labels, box_tol, score_tol, cap=100):
    """Indices of reference detections that have no counterpart (same label, close box and score).

    When the reference is cut at ``cap`` detections, those scored within ``score_tol`` of its last
    one are left out: rounding may swap which of two near-equal scores makes the cut.
    """
    unmatched = []
    cut = float(ref_scores.min()) + score_tol if len(ref_scores) >= cap else -float("inf")
    for i in range(len(ref_boxes)):
        if float(ref_scores[i]) <= cut:
            continue
        close = ((boxes - ref_boxes[i]).abs().amax(dim=1) <= box_tol) & (labels == ref_labels[i])
        close &= (scores - ref_scores[i]).abs() <= score_tol
        if not bool(close.any()):
            unmatched.append(i)
    return unmatched


@pytest.mark.slow
@torch.inference_mode()
def test_pyramid_and_proposals_match_torchvision(tv_model):
    ours = _ours_like(tv_model)
    images = _images()
    tv_list, _ = tv_model.transform(images)
    batch, _ = ours.preprocess(images)
    assert batch.image_sizes == [tuple(s) for s in tv_list.image_sizes]
    torch.testing.assert_close(batch.tensor, tv_list.tensors, rtol=1e-5, atol=1e-5)

    tv_features = tv_model.backbone(tv_list.tensors)  # OrderedDict "0".."3", "pool"
    features = ours.features(batch.tensor)
    for tv_name, level in zip(["0", "1", "2", "3", "pool"], ["p2", "p3", "p4", "p5", "p6"], strict=True):
        ref = tv_features[tv_name]
        assert features[level].shape == ref.shape
        rel = (features[level] - ref).abs().max() / ref.abs().max()
        assert rel < 1e-4, f"{level}: relative difference {rel:.2e}"

    tv_proposals, _ = tv_model.rpn(tv_list, tv_features)
    proposals, objectness, _ = ours.rpn(features, batch.image_sizes, batch.padded_hw)
    for ref, got, prob in zip(tv_proposals, proposals, objectness, strict=True):
        assert len(got) == len(ref) > 100
        assert bool((prob[:-1] >= prob[1:]).all()), "proposals are sorted by objectness"
        missing = [i for i in range(len(ref)) if not bool(((got - ref[i]).abs().amax(1) < 0.05).any())]
        assert len(missing) <= 0.01 * len(ref), f"{len(missing)} of torchvision's proposals not found"


@pytest.mark.slow
@torch.inference_mode()
def test_detections_match_torchvision(tv_model):
    ours = _ours_like(tv_model)
    images = _images()
    reference = tv_model(images)
    results = ours(images)
    for ref, got in zip(reference, results, strict=True):
        assert len(ref["boxes"]) > 0, "the comparison needs detections"
        assert abs(len(got["boxes"]) - len(ref["boxes"])) <= 2
        unmatched = match_boxes(ref["boxes"], ref["scores"], ref["labels"],
                                got["boxes"], got["scores"], got["labels"], box_tol=0.05, score_tol=1e-3)
        assert not unmatched, f"{len(unmatched)} of {len(ref['boxes'])} detections have no match"


@pytest.mark.slow
@torch.inference_mode()
def test_published_frozen_bn_weights_use_eps_zero():
    """Published COCO weights come from FrozenBatchNorm2d models meant for eps 0 (docs/interop.md §8)."""
    torch.manual_seed(0)
    body = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    body.bn1.running_var.uniform_(2e-6, 2e-5)  # variances near eps make eps matter
    tv = TVFasterRCNN(_resnet_fpn_extractor(body, 3), num_classes=91).eval()
    for module in tv.modules():
        if isinstance(module, FrozenBatchNorm2d):
            module.eps = 0.0  # what torchvision's overwrite_eps does for the published weights
    _set_input_size(tv)
    state = tv.state_dict()
    assert not any(k.endswith("num_batches_tracked") for k in state)
    ours = _ours_like(tv)
    assert ours.cfg.backbone.frozen_bn_eps == 0.0
    image = [torch.rand(3, 256, 320)]
    tv_list, _ = tv.transform(image)
    batch, _ = ours.preprocess(image)
    ref = tv.backbone(tv_list.tensors)["0"]
    got = ours.features(batch.tensor)["p2"]
    assert (got - ref).abs().max() / ref.abs().max() < 1e-4
    ours.backbone.stem.norm.eps = 1e-5  # the wrong eps is visibly wrong: the check can fail
    wrong = ours.features(batch.tensor)["p2"]
    assert (wrong - ref).abs().max() / ref.abs().max() > 1e-2


def test_pre_v2_key_names_are_accepted(tv_model):
    state = tv_model.state_dict()
    old = {}
    for key, value in state.items():  # torchvision < 0.13 names: no ".0" inside the FPN / RPN conv
        key = key.replace("inner_blocks.0.0.", "inner_blocks.0.")
        key = key.replace("layer_blocks.1.0.", "layer_blocks.1.")
        old[key.replace("rpn.head.conv.0.0.", "rpn.head.conv.")] = value
    assert "rpn.head.conv.weight" in old
    ours = from_torchvision(old)
    torch.testing.assert_close(ours.rpn.head.conv.weight, state["rpn.head.conv.0.0.weight"])


def test_conversion_refuses_unknown_and_misshapen_keys(tv_model):
    state = dict(tv_model.state_dict())
    with pytest.raises(ConversionError, match="no place"):
        from_torchvision({**state, "roi_heads.mask_head.0.weight": torch.zeros(1)})
    state["rpn.head.cls_logits.weight"] = torch.zeros(5, 256, 1, 1)
    with pytest.raises(ConversionError, match="shape"):
        from_torchvision(state)


@pytest.mark.slow
@pytest.mark.parametrize("depth", [18, 34, 50, 101])
@torch.inference_mode()
def test_imagenet_resnet_weights_give_torchvision_features(depth):
    torch.manual_seed(depth)
    reference = getattr(torchvision.models, f"resnet{depth}")(weights=None).eval()
    backbone = ResNet(BackboneConfig(depth=depth, norm="frozen_bn", freeze_at=0)).eval()
    load_torchvision_resnet(backbone, reference.state_dict())
    x = torch.randn(1, 3, 96, 128)
    c = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
    features = backbone(x)
    for stage, level in enumerate(["c2", "c3", "c4", "c5"], start=1):
        c = getattr(reference, f"layer{stage}")(c)
        torch.testing.assert_close(features[level], c, rtol=1e-4, atol=1e-4)


def test_convert_detector_gives_torchvisions_91_slot_coco_layout(tv_model):
    """COCO's ids are torchvision's labels: 90 classes, "N/A" in the id gaps keeps its slot."""
    foreign = convert_detector({"model": tv_model.state_dict()})
    assert foreign.library == "torchvision" and foreign.cfg.roi_heads.num_classes == 90
    assert foreign.cfg.class_names[0] == "person" and foreign.cfg.class_names[11] == "N/A"  # id 12
    assert foreign.cfg.category_ids == list(range(1, 91))
    reference = from_torchvision(tv_model.state_dict()).state_dict()
    assert foreign.state_dict.keys() == reference.keys()
    assert all(torch.equal(foreign.state_dict[k], reference[k]) for k in reference)
