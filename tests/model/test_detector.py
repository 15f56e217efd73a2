"""The assembled detector in every configuration the paper ablates (docs/paper.md §1-4).

Each preset is shrunk (ResNet-18 at width 8, 128 px images) so that all of them train for a
hundred steps within seconds; the architecture switches are the presets' own.
"""

from __future__ import annotations

import pytest
import torch

from fpn.config.files import list_presets, load_config
from fpn.evaluation.voc import voc_map
from fpn.model.detector import FasterRCNN

TINY = [
    "model.backbone.depth=18", "model.backbone.width=8", "model.backbone.norm=gn",
    "model.backbone.freeze_at=0", "model.neck.channels=32", "model.roi_heads.fc_dim=64",
    "model.roi_heads.num_classes=2", "model.input.min_size_train=[128]", "model.input.min_size_test=128",
    "model.input.max_size=160", "model.rpn.batch_size_per_image=64",
    "model.roi_heads.batch_size_per_image=64",
    "model.rpn.pre_nms_top_n_train=300", "model.rpn.post_nms_top_n_train=100",
]
PRESETS = ["paper_r50_fpn", "ablation_a_c4", "ablation_b_c5", "ablation_d_bottom_up",
           "ablation_e_no_lateral", "ablation_f_p2_only"]


def two_images():
    """Two noisy 128 x 160 images with bright squares (class 1) and dark bars (class 2)."""
    g = torch.Generator().manual_seed(0)
    images, targets = [], []
    layouts = [[(10, 20, 50, 60, 1), (70, 30, 150, 50, 2), (90, 80, 110, 100, 1)],
               [(30, 40, 100, 110, 1), (5, 5, 60, 20, 2)]]
    for layout in layouts:
        image = torch.rand(3, 128, 160, generator=g) * 0.3
        for x1, y1, x2, y2, label in layout:
            image[:, y1:y2, x1:x2] = 1.0 if label == 1 else 0.0
        images.append(image)
        targets.append({"boxes": torch.tensor([b[:4] for b in layout], dtype=torch.float32),
                        "labels": torch.tensor([b[4] for b in layout])})
    return images, targets


def test_all_ablation_rows_have_a_preset():
    assert set(PRESETS) <= set(list_presets())


# The output biases of the RPN and the box head: the issue-27 "mutant" of training. A model that learns
# only these learns the frequency of each anchor shape and class, not where the objects are.
OUTPUT_BIASES = ("rpn.head.objectness_logits.bias", "rpn.head.anchor_deltas.bias",
                 "roi_heads.box_predictor.cls_score.bias", "roi_heads.box_predictor.bbox_pred.bias")
# Box AP at IoU 0.5 on the two training images after 100 steps, measured on a 2-core AMD EPYC (AVX2)
# over initialisation seeds 0..4 for every preset: 0.49..1.0 for the full models (the lowest
# ablation_d_bottom_up and ablation_e_no_lateral, 0.49 each; 25 of the 30 runs at 0.83 or more),
# 0.00..0.17 when only OUTPUT_BIASES train (0.17 for ablation_f_p2_only at seed 0, tested below).
# The loss ratio cannot tell the two apart: 0.08..0.51 full, 0.41..0.66 biases only.
LEARNED_AP50 = 0.35


def train_on_two_images(preset: str, *, only: tuple[str, ...] | None = None, steps: int = 100):
    """The preset's tiny model after ``steps`` SGD steps on ``two_images`` (seed 0); the losses.

    ``only``: train just these parameters (everything else keeps its initial values)."""
    torch.manual_seed(0)
    model = FasterRCNN(load_config(preset, TINY).model)
    images, targets = two_images()
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if only is not None:
        assert {name for name, _ in named} >= set(only)
        for name, p in named:
            p.requires_grad_(name in only)
        named = [(name, p) for name, p in named if name in only]
    optimizer = torch.optim.SGD([p for _, p in named], lr=0.01, momentum=0.9)
    model.train()
    totals = []
    for _ in range(steps):
        losses = model(images, targets)
        assert set(losses) == {"loss_rpn_objectness", "loss_rpn_box", "loss_cls", "loss_box"}
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(total.item())
    return model.eval().with_changes({"roi_heads": {"score_thresh": 0.0}}), totals  # the same weights


@torch.no_grad()
def ap50_on_training_images(model) -> float:
    """Pascal VOC box AP at IoU 0.5 (area form, fpn.evaluation.voc) of ``model`` on ``two_images``."""
    images, targets = two_images()
    outputs = model(images)
    detections = [{"image_id": i, "boxes": out["boxes"], "scores": out["scores"], "labels": out["labels"]}
                  for i, out in enumerate(outputs)]
    truth = [{"image_id": i, "boxes": t["boxes"], "labels": t["labels"]} for i, t in enumerate(targets)]
    return voc_map(detections, truth, ["square", "bar"])["mAP_voc12"]


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_variant_trains_and_predicts(preset):
    """Every variant learns where the objects are: AP50 on its training images far above what its output
    biases alone reach (docs/paper.md §5's ablations, shrunk)."""
    model, totals = train_on_two_images(preset)
    assert all(torch.isfinite(torch.tensor(totals)))
    # the mean of the last 10 losses against the first 5: these tiny models' loss is noisy (sampled
    # RoIs, momentum). Worst ratio over seeds 0..4: 0.51 (ablation_d_bottom_up).
    first, last = sum(totals[:5]) / 5, sum(totals[-10:]) / 10
    assert last < 0.7 * first, f"{preset}: loss {first:.3f} -> {last:.3f}"
    ap50 = ap50_on_training_images(model)
    assert ap50 >= LEARNED_AP50, f"{preset}: AP50 {ap50:.3f} on its own training images"

    images, _ = two_images()
    with torch.no_grad():
        outputs = model(images, return_proposals=True)
    for image, out in zip(images, outputs, strict=True):
        assert set(out) == {"boxes", "scores", "labels", "levels", "proposals", "objectness"}
        assert len(out["boxes"]) > 0
        h, w = image.shape[-2:]
        assert bool((out["boxes"][:, 2] <= w).all() and (out["boxes"][:, 3] <= h).all())
        assert bool(((out["labels"] >= 1) & (out["labels"] <= 2)).all())


def test_a_model_that_trains_only_its_output_biases_fails_the_learning_check():
    """The baseline the check above must beat, trained the same way: if LEARNED_AP50 were lowered to
    let a variant pass, this would catch it. ablation_f_p2_only reached the highest bias-only AP50
    at seed 0 (0.17)."""
    model, totals = train_on_two_images("ablation_f_p2_only", only=OUTPUT_BIASES)
    assert sum(totals[-10:]) / 10 < 0.9 * sum(totals[:5]) / 5  # its loss falls too (0.66 measured)
    ap50 = ap50_on_training_images(model)
    assert ap50 < LEARNED_AP50, f"output biases alone reach AP50 {ap50:.3f}"


def test_boxes_come_back_in_original_pixels():
    """A 2x larger copy of an image gives 2x larger boxes: the resize is undone exactly."""
    torch.manual_seed(0)
    model = FasterRCNN(load_config(None, [*TINY, "model.roi_heads.score_thresh=0.0"]).model).eval()
    image = two_images()[0][0]
    # Nearest 2x upsampling, then the preprocessor's bilinear 0.5x resize (which averages each
    # 2x2 block), gives back the 128 x 160 network input exactly: only the scale differs.
    big = torch.nn.functional.interpolate(image[None], scale_factor=2.0, mode="nearest")[0]
    with torch.no_grad():
        small_out, big_out = model([image]), model([big])
    assert len(small_out[0]["boxes"]) > 0
    torch.testing.assert_close(big_out[0]["boxes"], 2 * small_out[0]["boxes"])


def test_training_requires_targets_and_rejects_bad_images():
    model = FasterRCNN(load_config(None, TINY).model)
    with pytest.raises(ValueError, match="targets"):
        model([torch.rand(3, 64, 64)])
    model.eval()
    with pytest.raises(ValueError, match="3 x H x W"):
        model([torch.rand(64, 64)])


def test_empty_image_and_crowd_regions_train():
    torch.manual_seed(0)
    model = FasterRCNN(load_config(None, TINY).model).train()
    images = [torch.rand(3, 96, 96), torch.rand(3, 96, 96)]
    targets = [
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
        {"boxes": torch.tensor([[10.0, 10.0, 40.0, 40.0]]), "labels": torch.tensor([1]),
         "crowd_boxes": torch.tensor([[50.0, 50.0, 96.0, 96.0]])},
    ]
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_a_built_model_cannot_be_changed_behind_its_back():
    """A built model's config and every part's settings are read-only copies: writing ``pixel_mean``
    (copied into a buffer at construction) raises instead of silently doing nothing, the caller's
    config stays the caller's, and ``with_changes`` rebuilds the model with the same weights."""
    import dataclasses

    torch.manual_seed(0)
    cfg = load_config(None, [*TINY, "model.roi_heads.score_thresh=0.0"]).model
    model = FasterRCNN(cfg).eval()
    images = two_images()[0]
    with torch.no_grad():
        before = model(images)
    for settings in (model.cfg.input, model.preprocess.settings):
        with pytest.raises(dataclasses.FrozenInstanceError, match="read-only"):
            settings.pixel_mean = [0.0, 0.0, 0.0]
    with pytest.raises(TypeError):
        model.cfg.input.pixel_mean[0] = 0.0  # a tuple
    for settings, name in ((model.rpn.settings, "nms_thresh"), (model.roi_heads.settings, "score_thresh")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(settings, name, 0.9)
    cfg.input.pixel_mean = [0.0, 0.0, 0.0]  # the caller's own config: the model keeps its copy
    cfg.roi_heads.score_thresh = 0.99
    with torch.no_grad():
        after = model(images)
    assert len(before[0]["boxes"]) > 10
    for b, a in zip(before, after, strict=True):
        assert all(torch.equal(b[k], a[k]) for k in b)
    changed = model.with_changes({"input": {"pixel_mean": [0.0, 0.0, 0.0]}})
    assert changed.preprocess.mean.flatten().tolist() == [0.0, 0.0, 0.0] and not changed.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in changed.state_dict().items())
    with torch.no_grad():
        assert not torch.equal(changed(images)[0]["scores"], before[0]["scores"])
