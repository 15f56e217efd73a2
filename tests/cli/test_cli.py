"""The ``fpn`` command end to end on a tiny synthetic set: synth -> train -> eval -> predict."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fpn.cli import main
from tests.conftest import TINY_MODEL, data_overrides


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
    import fpn.config.files
    from fpn.errors import ConfigError

    def broken():
        raise ValueError("an internal inconsistency")

    monkeypatch.setattr(fpn.config.files, "preset_descriptions", broken)
    assert main(["presets"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ValueError: an internal inconsistency" in err
    assert "fpn presets: unexpected ValueError (a bug in fpn" in err

    def refused():
        raise ConfigError("model.neck.channels: expected int, got 'wide'")

    monkeypatch.setattr(fpn.config.files, "preset_descriptions", refused)
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
    from fpn.cli import _build
    from fpn.cli.options import HELP

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


def test_demo_synthesises_trains_evaluates_draws_and_resumes(tmp_path, monkeypatch, capsys, caplog):
    """``fpn demo`` end to end on a tiny budget: the data it lacks is generated (4 + 2 images of 96 px
    instead of 600 + 100 of 256), the tiny model trains 2 steps, is evaluated and draws the
    validation images; called again with a larger budget it goes on from its checkpoint."""
    import logging

    from fpn.engine.checkpoint import latest_checkpoint
    from fpn.jobs import demo

    monkeypatch.setattr(demo, "DEMO_TRAIN_IMAGES", 4)
    monkeypatch.setattr(demo, "DEMO_VAL_IMAGES", 2)
    monkeypatch.setattr(demo, "DEMO_IMAGE_SIZE", 96)
    data, out = tmp_path / "synth", tmp_path / "demo"
    overrides = [*TINY_MODEL, *data_overrides(data), "train.batch_size=2", "train.warmup_iters=1",
                 "train.device=cpu"]
    assert main(["--quiet", "demo", "--output", str(out), *overrides, "train.max_iter=2"]) == 0
    printed = capsys.readouterr().out
    assert f"generating the synthetic benchmark in {data}" in printed and "AP50" in printed
    assert len(list((data / "train" / "images").glob("*.png"))) == 4
    assert len(list((data / "val" / "images").glob("*.png"))) == 2
    assert latest_checkpoint(out / "checkpoints").name == "step_0000002"
    summary = json.loads((out / "demo_summary.json").read_text())
    assert {"AP", "AP50", "AR@100"} <= set(summary["metrics"]) and summary["seconds"] > 0
    assert all(0.0 <= summary["metrics"][key] <= 1.0 for key in ("AP", "AP50", "AR@100"))
    drawn = sorted((out / "predictions" / "drawn").glob("*.png"))
    assert [p.name for p in drawn] == sorted(p.name for p in (data / "val" / "images").glob("*.png"))

    with caplog.at_level(logging.INFO, logger="fpn"):
        assert main(["--quiet", "demo", "--output", str(out), *overrides, "train.max_iter=3"]) == 0
    assert "generating" not in capsys.readouterr().out  # the data is there now
    assert re.search(r"resumed from \S+step_0000002 \(step 2\)", caplog.text), caplog.text
    assert latest_checkpoint(out / "checkpoints").name == "step_0000003"


@pytest.mark.slow
def test_bench_quick_agrees_with_torchvision_and_writes_its_report(tmp_path):
    """``fpn bench --quick``: exit 0, and the report (printed and written) has the 512x512 row, whose
    detections all match torchvision's on the same weights. (Its timings are not asserted.)"""
    script = Path(sys.executable).parent / "fpn"
    report = tmp_path / "bench.md"
    # --precision auto: the rows this host would run (fp32 alone where bf16/int8 are not native); the
    # low-precision paths have their own tests (test_precision*.py)
    command = [str(script), "--quiet", "bench", "--quick", "--repeats", "1", "--precision", "auto",
               "--output", str(report)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-2000:]
    text = report.read_text()
    assert text.strip() in result.stdout
    rows = re.findall(r"^\| 1 x 512x512[^|]*\((\d+)/(\d+) matched\)", text, flags=re.MULTILINE)
    assert rows, text
    assert all(matched == total and int(total) > 0 for matched, total in rows), rows


def test_the_command_list_is_what_fpn_help_lists():
    """Every module of fpn/cli/ that defines a command is in COMMANDS, once, and fpn --help lists
    exactly those commands in that order (a new command: one module, one entry)."""
    import importlib
    import pkgutil

    import fpn.cli
    from fpn.cli import COMMANDS, _build

    defined = {info.name for info in pkgutil.iter_modules(fpn.cli.__path__)
               if hasattr(importlib.import_module(f"fpn.cli.{info.name}"), "add_parser")}
    assert {command.__name__.rsplit(".", 1)[1] for command in COMMANDS} == defined
    assert len(COMMANDS) == len(defined)
    _, commands = _build()
    assert list(commands) == [command.NAME for command in COMMANDS]
    listed = re.findall(r"^    (\w+)\s", _build()[0].format_help(), flags=re.MULTILINE)
    assert listed == [command.NAME for command in COMMANDS]


def test_override_sections_are_the_configs_fields():
    """A token is an override when its key starts with a field of Config: a new section needs no
    edit of the command line."""
    import dataclasses

    from fpn.config.overrides import SECTIONS, is_override
    from fpn.config.schema import Config

    assert SECTIONS == tuple(f.name for f in dataclasses.fields(Config))
    assert set(SECTIONS) == {"model", "data", "train", "pretrain"}
    for section in SECTIONS:
        assert is_override(f"{section}.some_field=1")
    assert not is_override("colour=red") and not is_override("models.x=1") and not is_override("train=1")
