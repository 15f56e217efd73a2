"""What a new user's run on dirty data met (issue 17): evaluation that skips unreadable images,
``fpn predict`` that fails when nothing could be read, and error messages that say what was
looked for."""

from __future__ import annotations

import json
import shutil

from conftest import TINY_MODEL, data_overrides
from fpn.cli import main


def _dirty_copy(root, tmp_path):
    """The tiny synthetic set with its first validation image truncated."""
    data = tmp_path / "data"
    shutil.copytree(root, data)
    bad = sorted((data / "val" / "images").glob("*.png"))[0]
    bad.write_bytes(bad.read_bytes()[:100])
    return data, bad


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


def test_too_many_unreadable_validation_images_stop_the_evaluation(tiny_synth, tmp_path, capsys):
    data, _ = _dirty_copy(tiny_synth, tmp_path)
    overrides = [*TINY_MODEL, *data_overrides(data), "train.batch_size=2", "train.max_iter=1",
                 "train.warmup_iters=1", "train.device=cpu", "train.max_bad_samples=0"]
    assert main(["--quiet", "train", "--config", "demo", "--output", str(tmp_path / "run"), *overrides]) == 2
    err = capsys.readouterr().err
    assert "1 sample(s) could not be read (limit train.max_bad_samples=0)" in err and err.count("\n") == 1


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
