"""What a new user's run on dirty data met (issue 17): evaluation that skips unreadable images,
``fpn predict`` that fails when nothing could be read, and error messages that say what was
looked for."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from fpn.cli import main
from tests.conftest import TINY_MODEL, data_overrides


def _dirty_copy(root, tmp_path):
    """The tiny synthetic set with its first validation image truncated."""
    data = tmp_path / "data"
    shutil.copytree(root, data)
    bad = sorted((data / "val" / "images").glob("*.png"))[0]
    bad.write_bytes(bad.read_bytes()[:100])
    return data, bad


@pytest.mark.slow
def test_an_unreadable_validation_image_is_skipped_and_the_rest_scored(tiny_synth, tmp_path, capsys):
    data, bad = _dirty_copy(tiny_synth, tmp_path)
    run = tmp_path / "run"
    overrides = [*TINY_MODEL, *data_overrides(data), "train.batch_size=2", "train.max_iter=2",
                 "train.warmup_iters=1", "train.device=cpu", "model.roi_heads.score_thresh=0.0"]
    assert main(["--quiet", "train", "--config", "demo", "--output", str(run), *overrides]) == 0
    out = capsys.readouterr().out
    assert "1 unreadable image(s) skipped, metrics over the 2 readable ones" in out and bad.name in out

    assert main(["--quiet", "eval", str(run), "--output", str(tmp_path / "dirty")]) == 0
    dirty = json.loads((tmp_path / "dirty" / "metrics.json").read_text())
    assert dirty["num_images"] == 2 and len(dirty["skipped_images"]) == 1
    assert bad.name in dirty["skipped_images"][0]

    # the same weights on a val set that never had the bad image: the same numbers
    annotations = json.loads((data / "val" / "annotations.json").read_text())
    bad_id = next(im["id"] for im in annotations["images"] if im["file_name"] == bad.name)
    annotations["images"] = [im for im in annotations["images"] if im["id"] != bad_id]
    annotations["annotations"] = [a for a in annotations["annotations"] if a["image_id"] != bad_id]
    clean_file = tmp_path / "clean.json"
    clean_file.write_text(json.dumps(annotations))
    assert main(["--quiet", "eval", str(run), f"data.val_annotations={clean_file}",
                 "--output", str(tmp_path / "clean")]) == 0
    clean = json.loads((tmp_path / "clean" / "metrics.json").read_text())
    assert clean["num_images"] == 2 and not clean["skipped_images"]
    for key in ("AP", "AP50", "AR@100", "AR@1000"):
        assert abs(clean[key] - dirty[key]) < 1e-9, key


@pytest.mark.slow
def test_too_many_unreadable_validation_images_stop_the_evaluation(tiny_synth, tmp_path, capsys):
    data, _ = _dirty_copy(tiny_synth, tmp_path)
    overrides = [*TINY_MODEL, *data_overrides(data), "train.batch_size=2", "train.max_iter=1",
                 "train.warmup_iters=1", "train.device=cpu", "train.max_bad_samples=0"]
    assert main(["--quiet", "train", "--config", "demo", "--output", str(tmp_path / "run"), *overrides]) == 2
    err = capsys.readouterr().err
    assert "1 sample(s) could not be read (limit train.max_bad_samples=0)" in err and err.count("\n") == 1


@pytest.mark.slow
def test_predict_fails_when_no_input_can_be_read(tiny_synth, tmp_path, capsys):
    run = tmp_path / "run"
    overrides = [*TINY_MODEL, *data_overrides(tiny_synth), "train.batch_size=2", "train.max_iter=1",
                 "train.warmup_iters=1", "train.device=cpu"]
    assert main(["--quiet", "train", "--config", "demo", "--output", str(run), "--no-eval", *overrides]) == 0
    empty, text = tmp_path / "empty.png", tmp_path / "notes.jpg"
    empty.write_bytes(b"")
    text.write_text("not an image")
    capsys.readouterr()
    assert main(["--quiet", "predict", str(run), str(empty), str(text), "--output", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "none of the 2 input image(s) could be read" in err and "empty.png" in err
    assert not (tmp_path / "p" / "predictions.json").exists()
    # one readable image among them: exit 0, the bad ones reported
    good = next((tiny_synth / "val" / "images").glob("*.png"))
    assert main(["--quiet", "predict", str(run), str(empty), str(good), "--output", str(tmp_path / "q")]) == 0
    assert (tmp_path / "q" / "predictions.json").is_file()


def test_a_wrong_run_folder_says_what_was_looked_for(tmp_path, capsys):
    folder = tmp_path / "not_a_run"
    folder.mkdir()
    assert main(["predict", str(folder), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a run or checkpoint directory" in err and "checkpoints" in err and "model.safetensors" in err
    assert main(["eval", str(tmp_path / "missing")]) == 2
    assert "no such run, checkpoint directory or weights file" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Pascal VOC is also scored with VOC's own metric


def _voc_tree(root):
    """Two images: a dog and a difficult cat; a dog and a horse (boxes 1-based inclusive)."""
    from PIL import Image

    objects = {"a": [("dog", 0, (11, 21, 60, 70)), ("cat", 1, (70, 10, 90, 40))],
               "b": [("dog", 0, (5, 5, 40, 50)), ("horse", 0, (50, 30, 95, 75))]}
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for name, objs in objects.items():
        xml = "".join(f"<object><name>{c}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin>"
                      f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
                      for c, d, b in objs)
        (root / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><filename>{name}.jpg</filename><size><width>100</width><height>80</height></size>"
            f"{xml}</annotation>")
        Image.new("RGB", (100, 80), (90, 120, 150)).save(root / "JPEGImages" / f"{name}.jpg")
    for split in ("train", "val"):
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("a\nb\n")
    return objects


class _Replay(torch.nn.Module):
    """Stands in for a detector: returns given detections per image, in dataset order."""

    def __init__(self, detections):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # a device to report
        self.rpn, self.roi_heads, self.detections = None, object(), list(detections)

    @property
    def device(self):
        return self.anchor.device

    def forward(self, images, return_proposals=False):
        out = [self.detections.pop(0) for _ in images]
        return [{**d, "proposals": d["boxes"], "objectness": d["scores"]} for d in out]


def test_voc_map_through_the_evaluation(tmp_path):
    from fpn.config.files import load_config
    from fpn.data.voc import VOC_CLASSES, VOCDetection
    from fpn.jobs.datasets import with_dataset_classes
    from fpn.jobs.evaluation import evaluate_model

    objects = _voc_tree(tmp_path)
    dataset = VOCDetection(tmp_path, "val")
    cfg = with_dataset_classes(load_config(None, ["data.num_workers=0"]), dataset)
    label = {name: VOC_CLASSES.index(name) + 1 for name in VOC_CLASSES}

    def perfect(image, extra=()):
        boxes = [[b[0] - 1, b[1] - 1, b[2], b[3]] for _, _, b in objects[image]] + [e[1] for e in extra]
        labels = [label[c] for c, _, _ in objects[image]] + [label[e[0]] for e in extra]
        return {"boxes": torch.tensor(boxes, dtype=torch.float32),
                "scores": torch.linspace(0.9, 0.5, len(boxes)), "labels": torch.tensor(labels)}

    result = evaluate_model(_Replay([perfect("a"), perfect("b")]), dataset, cfg, progress=False)
    # every object found, the difficult cat too (VOC neither rewards nor punishes it)
    assert result.metrics["mAP_voc07"] == pytest.approx(1.0)
    assert result.metrics["mAP_voc12"] == pytest.approx(1.0)
    per_class = result.per_class["voc"]
    assert per_class["dog"]["positives"] == 2 and per_class["cat"]["positives"] == 0
    assert per_class["cat"]["AP_voc12"] is None  # no positives: left out of the mean, stored as null
    # a false horse ranked above the true one in image b: horse AP12 = 0.5 (precision 1/2 at recall 1)
    wrong = perfect("b", extra=[("horse", [0.0, 0.0, 20.0, 20.0])])
    wrong["scores"] = torch.tensor([0.9, 0.5, 0.95])
    result = evaluate_model(_Replay([perfect("a"), wrong]), dataset, cfg, progress=False)
    assert per_class["horse"]["AP_voc12"] == 1.0
    assert result.per_class["voc"]["horse"]["AP_voc12"] == pytest.approx(0.5)
    # 11-point: precision 0.5 at every recall level -> 0.5
    assert result.per_class["voc"]["horse"]["AP_voc07"] == pytest.approx(0.5)
    assert result.metrics["mAP_voc12"] == pytest.approx((1.0 + 0.5) / 2)  # dog and horse have positives


@pytest.mark.slow
def test_fpn_eval_on_pascal_voc_prints_the_voc_table(tmp_path, capsys):
    _voc_tree(tmp_path / "voc")
    run = tmp_path / "run"
    overrides = [*TINY_MODEL, "data.format=voc", f"data.voc_root={tmp_path / 'voc'}", "data.num_workers=0",
                 "train.batch_size=2", "train.max_iter=1", "train.warmup_iters=1", "train.device=cpu"]
    assert main(["--quiet", "train", "--config", "demo", "--output", str(run), *overrides]) == 0
    out = capsys.readouterr().out
    assert "Pascal VOC AP at IoU 0.5" in out and "mAP" in out and "horse" in out
    metrics = json.loads(next((run / "eval").glob("step_*/metrics.json")).read_text())
    assert {"mAP_voc07", "mAP_voc12", "voc_per_class", "AP"} <= set(metrics)


# ---------------------------------------------------------------------------------------------
# An annotation with a string bbox (issue 36): skipped and counted by every command, never a traceback


def _with_string_bbox(root, tmp_path, split):
    """The tiny synthetic set with one ``split`` annotation's bbox written as the text "5,5,20,15"."""
    data = tmp_path / "data"
    shutil.copytree(root, data)
    ann_file = data / split / "annotations.json"
    annotations = json.loads(ann_file.read_text())
    annotations["annotations"][0]["bbox"] = "5,5,20,15"
    ann_file.write_text(json.dumps(annotations))
    return data, annotations["annotations"][0]["id"]


@pytest.mark.slow
@pytest.mark.parametrize("split", ["train", "val"])
def test_a_string_bbox_is_skipped_with_one_warning_by_train_and_eval(tiny_synth, tmp_path, capsys, caplog,
                                                                    split):
    data, bad_id = _with_string_bbox(tiny_synth, tmp_path, split)
    run = tmp_path / "run"
    overrides = [*TINY_MODEL, *data_overrides(data), "train.batch_size=2", "train.max_iter=1",
                 "train.warmup_iters=1", "train.device=cpu"]
    warning = f"1 annotation skipped: bbox not 4 numbers (id {bad_id})"
    assert main(["--quiet", "train", "--config", "demo", "--output", str(run), *overrides]) == 0
    assert warning in caplog.text and "Traceback" not in capsys.readouterr().err
    assert "AP" in json.loads(next((run / "eval").glob("step_*/metrics.json")).read_text())
    caplog.clear()
    assert main(["--quiet", "eval", str(run), "--output", str(tmp_path / "eval")]) == 0
    assert (warning in caplog.text) == (split == "val") and "Traceback" not in capsys.readouterr().err
    assert "AP" in json.loads((tmp_path / "eval" / "metrics.json").read_text())


@pytest.mark.slow
def test_an_annotation_of_an_unknown_category_stops_every_command_in_one_line(tiny_synth, tmp_path, capsys):
    """The other side of the rule: what stops, stops train (before any step), eval and proposals
    alike, with one line naming the file, the annotation and the category; exit 2, no traceback."""
    data = tmp_path / "data"
    shutil.copytree(tiny_synth, data)
    overrides = [*TINY_MODEL, *data_overrides(data), "train.batch_size=2", "train.max_iter=1",
                 "train.warmup_iters=1", "train.device=cpu"]
    run = tmp_path / "run"
    assert main(["--quiet", "train", "--config", "demo", "--output", str(run), "--no-eval", *overrides]) == 0
    capsys.readouterr()
    for split in ("train", "val"):
        ann_file = data / split / "annotations.json"
        annotations = json.loads(ann_file.read_text())
        annotations["annotations"][0]["category_id"] = 999
        ann_file.write_text(json.dumps(annotations))
    line = "1 annotation names a category id not in 'categories' (first: annotation"
    commands = {"train": ["train", "--config", "demo", "--output", str(tmp_path / "run2"), *overrides],
                "eval": ["eval", str(run), "--output", str(tmp_path / "eval")],
                "proposals": ["proposals", str(run), "--split", "val", "--output", str(tmp_path / "p.bin")]}
    for name, argv in commands.items():
        assert main(["--quiet", *argv]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith(f"fpn {name}: error: ") and line in err and "category 999" in err, err
        assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "run2" / "checkpoints").exists() and not (tmp_path / "p.bin").exists()
