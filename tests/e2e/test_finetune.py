"""Fine-tuning: ``train.init`` from the weights people hold, and the small-data schedule knobs.

The independent references: torchvision's own ResNet (features) and its COCO detector's tensors
(the rows a carried-over class must hold, value by value); COCO's label layout in torchvision is
background at 0 and category id j at row j (person 1, dog 18).
"""

from __future__ import annotations

import json
import logging
import pickle
import shutil

import pytest
import torch
import torchvision
from torchvision.models.detection import fasterrcnn_resnet50_fpn
from torchvision.ops.misc import FrozenBatchNorm2d

from fpn.cli import main
from fpn.config.files import load_config
from fpn.engine.checkpoint import latest_checkpoint, load_checkpoint
from fpn.engine.init_loading import match_classes
from fpn.engine.optim import build_optimizer
from fpn.errors import InitError
from fpn.jobs.training import new_model, run_train
from fpn.model.backbone import ResNet
from fpn.model.detector import FasterRCNN
from tests.conftest import TINY_MODEL, data_overrides

COCO_PERSON, COCO_DOG = 1, 18  # torchvision's rows for these COCO category ids
CLASS_KEYS = ["roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.cls_score.bias",
              "roi_heads.box_predictor.bbox_pred.weight", "roi_heads.box_predictor.bbox_pred.bias"]


def _weights(run_dir):
    return load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))[0]


def _renamed_classes(root, tmp_path, names: list[str]):
    """The tiny synthetic set with only its first len(names) classes, renamed to ``names``."""
    out = tmp_path / "renamed"
    for split in ("train", "val"):
        data = json.loads((root / split / "annotations.json").read_text())
        keep = {c["id"]: name for c, name in zip(data["categories"], names, strict=False)}
        data["categories"] = [{**c, "name": keep[c["id"]]} for c in data["categories"] if c["id"] in keep]
        data["annotations"] = [a for a in data["annotations"] if a["category_id"] in keep]
        (out / split).mkdir(parents=True)
        (out / split / "annotations.json").write_text(json.dumps(data))
        shutil.copytree(root / split / "images", out / split / "images")
    return out


def _r50_cfg(root, *overrides):
    return load_config("paper_r50_fpn", [
        *data_overrides(root), "model.input.min_size_train=[96]", "model.input.min_size_test=96",
        "model.input.max_size=96", "train.batch_size=2", "train.base_batch_size=2", "train.max_iter=1",
        "train.warmup_iters=1", "train.device=cpu", "model.rpn.pre_nms_top_n_train=200",
        "model.rpn.post_nms_top_n_train=100", "model.roi_heads.batch_size_per_image=32", *overrides])


@pytest.fixture(scope="module")
def torchvision_coco(tmp_path_factory):
    """A torchvision COCO Faster R-CNN checkpoint (random weights, 91 class slots) and its tensors."""
    torch.manual_seed(0)
    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    with torch.no_grad():  # make the class rows tell apart from a fresh initialisation
        for name in ("cls_score", "bbox_pred"):
            layer = getattr(model.roi_heads.box_predictor, name)
            layer.weight.normal_(std=0.1)
            layer.bias.normal_(std=0.1)
    path = tmp_path_factory.mktemp("tv") / "fasterrcnn_resnet50_fpn_coco.pth"
    state = model.state_dict()
    torch.save(state, path)
    return path, {k: v.clone() for k, v in state.items()}


def test_class_names_match_without_case_or_separators():
    source, target = ["person", "Traffic_Light", "dog"], ["dog", "traffic light", "widget"]
    assert match_classes(source, target) == {1: 3, 2: 2}
    assert match_classes(["person", "N/A", "dog"], ["cat"]) == {}


@pytest.mark.slow
def test_overlapping_class_rows_are_carried_over_value_by_value(torchvision_coco, tiny_synth, tmp_path,
                                                                caplog):
    path, tv = torchvision_coco
    root = _renamed_classes(tiny_synth, tmp_path, ["person", "widget", "dog"])
    cfg = _r50_cfg(root, f"train.init=[{path}]")
    with caplog.at_level(logging.INFO, logger="fpn"):
        run_train(cfg, tmp_path / "run", progress=False, evaluate=False)
    report = caplog.text
    assert "torchvision Faster R-CNN, 90 classes" in report
    assert "2 of 3 carried over by name (person, dog)" in report
    assert "re-initialised: roi_heads.box_predictor (cls_score, bbox_pred) rows of 1 class(es)" in report
    assert "(widget)" in report

    # Before the one training step: a run of zero steps holds exactly what initialisation made.
    run_train(load_config(tmp_path / "run" / "config.yaml", ["train.max_iter=0"]), tmp_path / "run0",
              progress=False, evaluate=False)
    ours = _weights(tmp_path / "run0")
    fresh = new_model(load_config(tmp_path / "run" / "config.yaml", []).model, 0).state_dict()
    tv_rows = {"cls_score": 1, "bbox_pred": 4}
    for key in CLASS_KEYS:
        rows = tv_rows[key.split(".")[2]]
        source, target = tv["roi_heads.box_predictor." + key.split(".", 2)[2]], ours[key]
        assert target.shape[0] == 4 * rows  # background + 3 classes
        for our_label, tv_label in ((0, 0), (1, COCO_PERSON), (3, COCO_DOG)):
            torch.testing.assert_close(target[our_label * rows:(our_label + 1) * rows],
                                       source[tv_label * rows:(tv_label + 1) * rows], rtol=0, atol=0)
        widget = target[2 * rows:3 * rows]
        torch.testing.assert_close(widget, fresh[key][2 * rows:3 * rows], rtol=0, atol=0)
    # every other tensor came over unchanged (the backbone's first conv as a witness)
    torch.testing.assert_close(ours["backbone.stem.conv.weight"], tv["backbone.body.conv1.weight"])


def _detectron2_pkl(tmp_path):
    from tests.interop.test_detectron2 import detectron2_shapes, random_state

    d2 = random_state(detectron2_shapes(), seed=4)  # COCO's 80 classes, background last
    path = tmp_path / "model_final_b275ba.pkl"
    path.write_bytes(pickle.dumps({"model": {k: v.numpy() for k, v in d2.items()},
                                   "__author__": "Detectron2 Model Zoo"}))
    return d2, path


@pytest.mark.slow
def test_a_detectron2_pkl_brings_its_conventions_and_its_person_row(tiny_synth, tmp_path, capsys):
    d2, path = _detectron2_pkl(tmp_path)
    root = _renamed_classes(tiny_synth, tmp_path, ["person", "widget", "dog"])
    code = main(["train", "--config", "paper_r50_fpn", "--output", str(tmp_path / "run"), "--init", str(path),
                 "--no-eval", *data_overrides(root), "train.max_iter=0", "train.device=cpu"])
    assert code == 0, capsys.readouterr().err
    cfg = load_config(tmp_path / "run" / "config.yaml", [])
    assert cfg.model.input.channel_order == "BGR" and cfg.model.input.pixel_scale == 255
    assert cfg.model.input.pixel_mean == pytest.approx([103.53, 116.28, 123.675])
    assert cfg.model.backbone.stride_in_1x1
    ours = _weights(tmp_path / "run")
    score, deltas = "roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.bbox_pred.weight"
    torch.testing.assert_close(ours[score][0], d2[score][80], rtol=0, atol=0)  # background: last there
    torch.testing.assert_close(ours[score][1], d2[score][0], rtol=0, atol=0)  # person: COCO's first
    torch.testing.assert_close(ours[score][3], d2[score][16], rtol=0, atol=0)  # dog: COCO's 17th
    torch.testing.assert_close(ours[deltas][4:8], d2[deltas][0:4], rtol=0, atol=0)
    torch.testing.assert_close(ours[deltas][12:16], d2[deltas][64:68], rtol=0, atol=0)


@pytest.mark.slow
def test_a_resumed_run_keeps_its_init_conventions_when_the_init_file_is_gone(tiny_synth, tmp_path, capsys):
    """The checkpoint's weights replace the initial ones, so resuming does not read train.init
    again; the conventions it brought (detectron2: BGR, 0-255, caffe means) come from the
    checkpoint's config, also when --init is left out on resume. Stopped after steps 1 and 2 and
    resumed each time, the run ends with exactly the weights of three steps in one go."""
    _, path = _detectron2_pkl(tmp_path)
    run = tmp_path / "run"
    command = ["train", "--config", "paper_r50_fpn", "--output", str(run), "--no-eval"]
    overrides = [*data_overrides(tiny_synth), "model.input.min_size_train=[96]", "model.input.max_size=96",
                 "train.batch_size=2", "train.base_batch_size=2", "model.roi_heads.batch_size_per_image=32",
                 "train.device=cpu"]
    assert main([*command, "--init", str(path), *overrides, "train.max_iter=1"]) == 0, capsys.readouterr().err
    first = _weights(run)
    straight = ["train", "--config", "paper_r50_fpn", "--output", str(tmp_path / "straight"), "--no-eval"]
    code = main([*straight, "--init", str(path), *overrides, "train.max_iter=3"])
    assert code == 0, capsys.readouterr().err
    path.unlink()
    for options, steps in ((["--resume", "--init", str(path)], 2), (["--resume"], 3)):
        code = main([*command, *options, *overrides, f"train.max_iter={steps}"])
        assert code == 0, capsys.readouterr().err
        assert latest_checkpoint(run / "checkpoints").name == f"step_{steps:07d}"
        cfg = load_config(run / "config.yaml", [])
        assert cfg.model.input.channel_order == "BGR" and cfg.model.input.pixel_scale == 255
        assert cfg.model.input.pixel_mean == pytest.approx([103.53, 116.28, 123.675])
        assert cfg.model.backbone.stride_in_1x1
    resumed, expected = _weights(run), _weights(tmp_path / "straight")
    key = "roi_heads.box_predictor.cls_score.weight"
    assert not torch.equal(resumed[key], first[key])  # the steps moved the weights: the check below can fail
    different = [k for k in expected if not torch.equal(resumed[k], expected[k])]
    assert not different, f"resumed and straight runs differ in {len(different)} tensors: {different[:3]}"


@pytest.mark.slow
def test_a_disjoint_dataset_reinitialises_the_class_rows_and_trains(torchvision_coco, tiny_synth, tmp_path,
                                                                     caplog):
    path, tv = torchvision_coco
    root = _renamed_classes(tiny_synth, tmp_path, ["circle", "square", "triangle"])
    with caplog.at_level(logging.INFO, logger="fpn"):
        result = run_train(_r50_cfg(root, f"train.init=[{path}]"), tmp_path / "run", progress=False,
                           evaluate=False)
    assert result["step"] == 1
    assert "0 of 3 carried over by name" in caplog.text
    assert "circle, square, triangle" in caplog.text
    weights = _weights(tmp_path / "run")
    assert weights["roi_heads.box_predictor.cls_score.weight"].shape == (4, 1024)
    assert weights["roi_heads.box_predictor.bbox_pred.weight"].shape == (16, 1024)
    # conv1 and res2 are frozen (freeze_at 2): still torchvision's after a step
    torch.testing.assert_close(weights["backbone.res2.0.conv1.weight"],
                               tv["backbone.body.layer1.0.conv1.weight"])


@pytest.mark.slow
def test_a_checkpoint_of_another_architecture_is_one_line(torchvision_coco, tiny_synth, tmp_path, capsys):
    path, _ = torchvision_coco
    cfg = _r50_cfg(tiny_synth, "model.neck.channels=128", f"train.init=[{path}]")
    with pytest.raises(InitError, match=r"has shape \(256, 256, 1, 1\), this model's is \(128, 256, 1, 1\)"):
        run_train(cfg, tmp_path / "run", progress=False, evaluate=False)
    code = main(["train", "--config", "paper_r50_fpn", "--output", str(tmp_path / "cli"), "--init", str(path),
                 "--no-eval", *data_overrides(tiny_synth), "model.neck.channels=128"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "neck.lateral.p2.weight has shape (256, 256, 1, 1)" in err and "(128, 256, 1, 1)" in err


@pytest.mark.slow
def test_mismatched_tensors_can_be_skipped_on_request(torchvision_coco, tiny_synth, tmp_path, caplog):
    path, tv = torchvision_coco
    cfg = _r50_cfg(tiny_synth, "model.neck.channels=128", f"train.init=[{path}]",
                   "train.init_skip_mismatched=true", "train.max_iter=0")
    with caplog.at_level(logging.INFO, logger="fpn"):
        run_train(cfg, tmp_path / "run", progress=False, evaluate=False)
    assert "shape does not fit" in caplog.text and "neck.lateral.p2.weight" in caplog.text
    torch.testing.assert_close(_weights(tmp_path / "run")["backbone.res5.2.conv3.weight"],
                               tv["backbone.body.layer4.2.conv3.weight"])


@pytest.fixture(scope="module")
def imagenet_resnet18(tmp_path_factory):
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None)
    with torch.no_grad():  # non-trivial BatchNorm statistics, as ImageNet weights have
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("imagenet") / "resnet18-f37072fd.pth"
    torch.save(reference.state_dict(), path)
    return path, reference.eval()


@pytest.mark.slow
def test_an_imagenet_resnet_initialises_the_backbone_as_torchvision_computes_it(imagenet_resnet18, tiny_synth,
                                                                                tmp_path, capsys):
    path, reference = imagenet_resnet18
    code = main(["train", "--config", "demo", "--output", str(tmp_path / "run"), "--init", str(path),
                 "--no-eval", *data_overrides(tiny_synth), "model.backbone.width=64",
                 "model.backbone.norm=frozen_bn", "model.input.pixel_scale=255", "train.max_iter=0",
                 "train.device=cpu"])
    assert code == 0, capsys.readouterr().err
    cfg = load_config(tmp_path / "run" / "config.yaml", [])
    assert cfg.model.input.pixel_scale == 1.0  # torchvision's ImageNet convention replaced ours
    model = FasterRCNN(cfg.model)
    model.load_state_dict(_weights(tmp_path / "run"))
    backbone: ResNet = model.backbone.eval()
    x = torch.randn(1, 3, 64, 96)
    ours = backbone(x)
    body = torchvision.models.resnet18(weights=None, norm_layer=FrozenBatchNorm2d)
    body.load_state_dict({k: v for k, v in reference.state_dict().items() if "num_batches" not in k})
    want = torchvision.models._utils.IntermediateLayerGetter(
        body.eval(), {"layer1": "c2", "layer2": "c3", "layer3": "c4", "layer4": "c5"})(x)
    for level in ("c2", "c3", "c4", "c5"):
        torch.testing.assert_close(ours[level], want[level], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_imagenet_statistics_refuse_a_groupnorm_backbone(imagenet_resnet18, tiny_synth, tmp_path):
    path, _ = imagenet_resnet18
    cfg = load_config("demo", [*TINY_MODEL, *data_overrides(tiny_synth), "model.backbone.width=64",
                               f"train.init=[{path}]", "train.max_iter=0", "train.device=cpu"])
    with pytest.raises(InitError, match="GroupNorm"):
        run_train(cfg, tmp_path / "run", progress=False, evaluate=False)


def _tiny(root, *overrides):
    return load_config("demo", [*TINY_MODEL, *data_overrides(root), "train.batch_size=2",
                                "train.base_batch_size=2", "train.warmup_iters=1", "train.device=cpu",
                                "train.checkpoint_period=1", *overrides])


def test_backbone_lr_factor_scales_only_the_backbone_update(tiny_synth):
    updates = {}
    for factor in (1.0, 0.1):
        cfg = _tiny(tiny_synth, f"train.backbone_lr_factor={factor}", "train.momentum=0")
        model = new_model(cfg.model, 0)
        before = {k: v.detach().clone() for k, v in model.named_parameters()}
        optimizer = build_optimizer(model, cfg.train)
        torch.manual_seed(3)
        for param in model.parameters():
            param.grad = torch.randn_like(param)
        optimizer.step()
        updates[factor] = {k: v.detach() - before[k] for k, v in model.named_parameters()}
    for key, full in updates[1.0].items():
        want = full * 0.1 if key.startswith("backbone.") else full
        torch.testing.assert_close(updates[0.1][key], want, rtol=1e-3, atol=1e-6)  # p - (p - u) rounds
    assert any(k.startswith("backbone.") and v.abs().sum() > 0 for k, v in updates[1.0].items())


@pytest.mark.slow
def test_heads_only_steps_keep_the_backbone_and_pyramid_fixed(tiny_synth, tmp_path):
    cfg = _tiny(tiny_synth, "train.heads_only_iters=2", "train.max_iter=3", "model.backbone.freeze_at=1")
    run_train(cfg, tmp_path / "run", progress=False, evaluate=False)
    start = new_model(load_config(tmp_path / "run" / "config.yaml", []).model, 0).state_dict()
    checkpoints = (tmp_path / "run" / "checkpoints").glob("step_*")
    steps = {int(p.name[5:]): load_checkpoint(p)[0] for p in checkpoints}
    assert sorted(steps)[-2:] == [2, 3]

    def changed(state, prefix):
        return any(not torch.equal(v, start[k]) for k, v in state.items()
                   if k.startswith(prefix) and v.is_floating_point())

    assert not changed(steps[2], "backbone.") and not changed(steps[2], "neck.")
    assert changed(steps[2], "rpn.") and changed(steps[2], "roi_heads.")
    assert changed(steps[3], "backbone.res2.") and changed(steps[3], "neck.")
    assert not changed(steps[3], "backbone.stem.")  # freeze_at 1 still holds after the switch


@pytest.mark.slow
def test_without_class_names_rows_load_by_position_or_start_fresh(tiny_synth, tmp_path, caplog):
    source = _tiny(tiny_synth, "train.max_iter=0")
    run_train(source, tmp_path / "source", progress=False, evaluate=False)
    bare = tmp_path / "bare" / "weights.safetensors"  # no config.yaml beside it: class names unknown
    bare.parent.mkdir()
    shutil.copy(latest_checkpoint(tmp_path / "source" / "checkpoints") / "model.safetensors", bare)
    weights = _weights(tmp_path / "source")

    with caplog.at_level(logging.INFO, logger="fpn"):
        run_train(_tiny(tiny_synth, "train.max_iter=0", "train.seed=5", f"train.init=[{bare}]"),
                  tmp_path / "same_count", progress=False, evaluate=False)
    assert "names unknown on one side" in caplog.text and "all 5 classes loaded by position" in caplog.text
    for key in CLASS_KEYS:
        torch.testing.assert_close(_weights(tmp_path / "same_count")[key], weights[key], rtol=0, atol=0)

    caplog.clear()
    fewer = _renamed_classes(tiny_synth, tmp_path, ["circle", "square", "triangle"])
    with caplog.at_level(logging.INFO, logger="fpn"):
        run_train(_tiny(fewer, "train.max_iter=0", "train.seed=5", f"train.init=[{bare}]"),
                  tmp_path / "fewer", progress=False, evaluate=False)
    assert "5 classes in the source, 3 here, and no class names to match them by" in caplog.text
    ours = _weights(tmp_path / "fewer")
    fresh = new_model(load_config(tmp_path / "fewer" / "config.yaml", []).model, 5).state_dict()
    torch.testing.assert_close(ours["roi_heads.box_predictor.cls_score.weight"][0],
                               weights["roi_heads.box_predictor.cls_score.weight"][0], rtol=0, atol=0)
    torch.testing.assert_close(ours["roi_heads.box_predictor.cls_score.weight"][1:],
                               fresh["roi_heads.box_predictor.cls_score.weight"][1:], rtol=0, atol=0)
    torch.testing.assert_close(ours["rpn.head.conv.weight"], weights["rpn.head.conv.weight"])
