"""The ``fpn`` command end to end on a tiny synthetic set: synth -> train -> eval -> predict."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_MODEL, data_overrides
from fpn.cli import main


@pytest.mark.slow
def test_synth_train_eval_predict(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["--quiet", "synth", str(data), "--train", "4", "--val", "2", "--image-size", "96"]) == 0
    run = tmp_path / "run"
    overrides = [*TINY_MODEL, *data_overrides(data), "train.batch_size=2", "train.max_iter=3",
                 "train.warmup_iters=1", "train.device=cpu"]
    assert main(["--quiet", "train", "--config", "demo", "--output", str(run), *overrides]) == 0
    out = capsys.readouterr().out
    assert "AP50" in out and "AR@1000" in out
    assert (run / "config.yaml").is_file() and (run / "metrics.jsonl").is_file()

    # overrides after an option, and as --set: one syntax on every command
    assert main(["--quiet", "eval", str(run), "--output", str(tmp_path / "eval"), "data.num_workers=0"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {"AP", "AP50", "AR@100", "AR@1000"} <= set(metrics) and metrics["num_images"] == 2
    results = json.loads((tmp_path / "eval" / "coco_results.json").read_text())
    assert all(r["category_id"] in range(1, 6) for r in results)

    preds = tmp_path / "preds"
    assert main(["--quiet", "predict", str(run), str(data / "val" / "images"), "--output", str(preds),
                 "--set", "model.roi_heads.detections_per_image=50"]) == 0
    assert len(list((preds / "drawn").glob("*.png"))) == 2
    records = json.loads((preds / "predictions.json").read_text())
    assert all({"file_name", "bbox", "score", "category_name", "level"} <= set(r) for r in records)


def test_user_errors_are_one_line_without_traceback(tmp_path, capsys, tiny_synth):
    code = main(["train", "--config", "demo", "--output", str(tmp_path),
                 f"data.train_images={tiny_synth}/train/images", "data.train_annotations=/nope.json"])
    err = capsys.readouterr().err
    assert code == 2 and "/nope.json" in err and "Traceback" not in err and err.count("\n") == 1
    assert main(["train", "--config", "demo", "model.neck.channels=wide"]) == 2
    assert "model.neck.channels" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "no_run"), str(tmp_path)]) == 2


def test_console_script_version():
    script = Path(sys.executable).parent / "fpn"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=True)
    assert result.stdout.startswith("fpn ")


@pytest.mark.slow
def test_convert_torchvision_weights_then_predict(tmp_path, tiny_synth, capsys):
    """A torchvision .pth becomes a checkpoint that fpn predict uses; a malicious one is refused."""
    import os

    import torch
    import torchvision

    torch.manual_seed(0)
    tv = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    torch.save({"model": tv.state_dict()}, tmp_path / "tv.pth")
    assert main(["convert", str(tmp_path / "tv.pth"), "--output", str(tmp_path / "ckpt")]) == 0
    capsys.readouterr()
    image = next((tiny_synth / "val" / "images").glob("*.png"))
    out = tmp_path / "p"
    assert main(["--quiet", "predict", str(tmp_path / "ckpt"), str(image), "--output", str(out)]) == 0
    assert (out / "predictions.json").is_file()

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": Payload()}, tmp_path / "evil.pth")
    assert main(["convert", str(tmp_path / "evil.pth"), "--output", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "evil.pth: refusing" in err and "Traceback" not in err
    assert not (tmp_path / "pwned").exists()


def test_a_bug_prints_its_traceback_and_a_user_error_does_not(monkeypatch, capsys):
    """Only fpn.errors.UserError is one line: a bare ValueError from deep inside is a bug."""
    import fpn.config
    from fpn.errors import ConfigError

    def broken():
        raise ValueError("an internal inconsistency")

    monkeypatch.setattr(fpn.config, "preset_descriptions", broken)
    assert main(["presets"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ValueError: an internal inconsistency" in err
    assert "fpn presets: unexpected ValueError (a bug in fpn" in err

    def refused():
        raise ConfigError("model.neck.channels: expected int, got 'wide'")

    monkeypatch.setattr(fpn.config, "preset_descriptions", refused)
    assert main(["presets"]) == 2
    assert capsys.readouterr().err == "fpn presets: error: model.neck.channels: expected int, got 'wide'\n"


OVERRIDING_COMMANDS = {  # command -> its arguments besides the overrides
    "train": ["--config", "demo", "--output", "RUN"],
    "eval": ["RUN", "--output", "OUT"],
    "proposals": ["RUN", "--split", "val", "--output", "FILE"],
    "predict": ["RUN", "a.png", "b", "--output", "OUT", "--score-thresh", "0.5"],
    "demo": ["--output", "RUN"],
    "export": ["RUN", "--output", "m.onnx", "--no-verify"],
    "serve": ["RUN", "--port", "9000", "--device", "cpu"],
}


@pytest.mark.parametrize("command", sorted(OVERRIDING_COMMANDS))
def test_one_override_syntax_on_every_command_before_or_after_options(command):
    """key=value anywhere after the command (between positionals too), or --set key=value, in order."""
    from fpn.cli import parse

    rest = OVERRIDING_COMMANDS[command]
    plain = vars(parse([command, *rest]))
    a, b = "model.roi_heads.score_thresh=0.2", "model.input.test_scales=[96, 128]"
    c = "model.rpn.nms_thresh=0.6"
    cut = 2 if rest[0].startswith("--") else 1  # after the first option and its value, or positional
    for argv in ([command, a, *rest, b, "--set", c],  # before the options, after them, and --set
                 [command, *rest[:cut], a, *rest[cut:], "--set=" + b, c],  # in between
                 [command, "--set", a, *rest, b, c]):
        args = vars(parse(["--quiet", *argv]))
        assert args["overrides"] == [a, b, c], argv
        # everything else parsed as without the overrides
        assert {k: v for k, v in args.items() if k not in ("overrides", "quiet")} == \
            {k: v for k, v in plain.items() if k not in ("overrides", "quiet")}


def test_option_values_are_never_taken_for_overrides_and_other_items_are_errors(capsys):
    from fpn.cli import parse

    args = parse(["predict", "RUN", "--output", "train.x=1", "img.png"])  # a folder named like an override
    assert str(args.output) == "train.x=1" and args.overrides == []
    assert [str(p) for p in args.inputs] == ["img.png"]
    assert main(["train", "--config", "demo", "--output", "/nowhere", "colour=red"]) == 2  # not a config key
    assert "unknown field" in capsys.readouterr().err


def test_every_option_of_every_command_has_one_help_text():
    from fpn.cli import HELP, _build

    parser, commands = _build()
    for name, command in commands.items():
        for action in command._actions:
            assert action.help, f"fpn {name} {action.option_strings or action.dest}: no help text"
    # the shared options say the same thing everywhere they appear
    device = {a.help for c in commands.values() for a in c._actions if "--device" in a.option_strings}
    assert device == {HELP["device"]}
    checkpoint = {a.help for n, c in commands.items() for a in c._actions if a.dest == "checkpoint"
                  and n != "proposals"}
    assert checkpoint == {HELP["checkpoint"]}
