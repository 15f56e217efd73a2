"""Typed configs: presets, YAML round trip, dotted overrides, clear errors."""

from __future__ import annotations

import pytest

from fpn.config.files import PRESET_DIR, list_presets, load_config, preset_descriptions, save_config
from fpn.config.schema import Config
from fpn.errors import ConfigError


def test_defaults_are_the_papers():
    cfg = Config()
    assert cfg.model.neck.channels == 256
    assert cfg.model.rpn.anchors.sizes == {"p2": [32], "p3": [64], "p4": [128], "p5": [256], "p6": [512]}
    assert cfg.model.roi_heads.pooler_resolution == 7 and cfg.model.roi_heads.fc_dim == 1024
    assert cfg.model.roi_heads.batch_size_per_image == 512 and cfg.model.rpn.batch_size_per_image == 256
    assert cfg.model.input.min_size_test == 800 and cfg.model.input.size_divisibility == 32


@pytest.mark.parametrize("preset", list_presets())
def test_every_preset_loads_and_round_trips(preset, tmp_path):
    cfg = load_config(preset)
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    # and to the byte: a resumed run rewrites its config.yaml unchanged (a default of 32 for a
    # float field came back as 32.0 once)
    save_config(load_config(tmp_path / "c.yaml"), tmp_path / "again.yaml")
    assert (tmp_path / "again.yaml").read_text() == (tmp_path / "c.yaml").read_text()


def test_preset_inherits_and_replaces_anchor_sizes():
    cfg = load_config("ablation_f_p2_only")
    assert cfg.model.rpn.anchors.sizes == {"p2": [32.0, 64.0, 128.0, 256.0, 512.0]}  # replaced, not merged
    assert cfg.train.max_iter == 90000  # from its base


def test_overrides_are_typed():
    cfg = load_config(None, ["model.neck.channels=128", "train.base_lr=0.01", "model.neck.top_down=false",
                             "model.input.min_size_train=[600, 700]"])
    assert cfg.model.neck.channels == 128 and cfg.train.base_lr == 0.01
    assert cfg.model.neck.top_down is False and cfg.model.input.min_size_train == [600, 700]
    assert Config().data.on_bad_annotations == "error"
    assert load_config(None, ["data.on_bad_annotations=warn"]).data.on_bad_annotations == "warn"


@pytest.mark.parametrize("override, message", [
    ("model.neck.chanels=3", "unknown field"),
    ("model.neck.channels=wide", "expected int"),
    ("model.backbone.norm=layer", "not one of"),
    ("model.neck.top_down=3", "true or false"),
    ("model.neck", "key=value"),
    ("data.on_bad_annotations=ignore", "not one of"),
])
def test_bad_overrides_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_bad_file_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)
    with pytest.raises(ConfigError, match="no such config"):
        load_config("no_such_preset")


def test_every_preset_has_a_one_line_description(capsys):
    from fpn.cli import main

    descriptions = preset_descriptions()
    assert list(descriptions) == list_presets() and "demo" in descriptions
    for name, text in descriptions.items():
        first_line = (PRESET_DIR / f"{name}.yaml").read_text().splitlines()[0]
        assert first_line == f"# {text}"  # the first comment, without "# "
        assert len(text) > 20 and text.endswith("."), name  # a sentence, not the head of a longer one
    assert "synthetic benchmark" in descriptions["demo"] and "CPU" in descriptions["demo"]
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(descriptions)
    for line, (name, text) in zip(lines, descriptions.items(), strict=True):
        assert line.startswith(f"{name} ") and line.endswith(f"  {text}")
    assert len({line.index(text) for line, text in zip(lines, descriptions.values(), strict=True)}) == 1


def test_frozen_is_a_read_only_deep_copy_and_thawed_gives_an_ordinary_one():
    import copy
    import dataclasses
    import pickle

    from fpn.config.read_only import frozen, thawed
    from fpn.config.schema import ModelConfig, to_dict

    cfg = load_config("demo")
    model_cfg = frozen(cfg.model)
    assert isinstance(model_cfg, ModelConfig) and model_cfg.input.pixel_mean == (0.485, 0.456, 0.406)
    with pytest.raises(dataclasses.FrozenInstanceError):
        model_cfg.rpn.anchors.aspect_ratios = [1.0]
    with pytest.raises(TypeError):
        model_cfg.rpn.anchors.sizes["p2"] = [8]  # a read-only mapping
    cfg.model.rpn.anchors.sizes["p2"].append(99.0)  # later changes to the original do not reach it
    assert model_cfg.rpn.anchors.sizes["p2"] == (16.0,)
    assert copy.deepcopy(model_cfg) is model_cfg and frozen(model_cfg) is model_cfg
    assert pickle.loads(pickle.dumps(model_cfg)) == model_cfg
    plain = thawed(model_cfg)
    assert type(plain) is ModelConfig and to_dict(plain) == to_dict(model_cfg)
    plain.input.pixel_mean[0] = 0.0  # an ordinary, independent copy
    assert model_cfg.input.pixel_mean[0] == 0.485
    assert to_dict(model_cfg)["rpn"]["anchors"]["sizes"]["p3"] == [32.0]  # plain lists and dicts again
