"""``fpn reproduce``: every row shares its table's schedule, a killed run continues, the report is whole."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from fpn.config.overrides import from_dict
from fpn.config.schema import Config, to_dict
from fpn.errors import StaleRunError
from fpn.reproduction.calibrate import choose_schedule
from fpn.reproduction.plan import FULL, QUICK, ROWS, miniature
from fpn.reproduction.report import PAPER, claims, summarise
from fpn.reproduction.study import (
    Reproduction,
    busy_seconds,
    config_differences,
    config_text,
    run_reproduction,
    same_config,
    work_dir,
)


def test_every_row_of_a_table_shares_one_schedule_and_one_transform(tmp_path):
    reproduction = Reproduction(tmp_path, FULL)
    for table in ("1", "2", "3", "6"):
        configs = [reproduction.config(row, 0) for row in ROWS if row.table == table]
        schedules = {json.dumps({k: v for k, v in vars(c.train).items()}, sort_keys=True) for c in configs}
        assert len(schedules) == 1, f"table {table}: rows train differently"
        assert {c.model.backbone.depth for c in configs} == {18}
        assert {c.model.input.max_size for c in configs} == {FULL.image_size}
        # every row starts from the one pre-trained backbone, with the paper's frozen-BN convention
        assert {tuple(c.train.init) for c in configs} == {(str(tmp_path / "pretrain"),)}
        assert {(c.model.backbone.norm, c.model.backbone.freeze_at) for c in configs} == {("frozen_bn", 2)}
    # the paper's geometry in pixels (the default): anchors 32..512 px, Eq. 1's 224 px, k0 = 4
    c4 = reproduction.config(ROWS[0], 0).model
    assert c4.rpn.anchors.sizes == {"c4": [32, 64, 128, 256, 512]}
    fpn = reproduction.config(ROWS[2], 0).model
    assert fpn.rpn.anchors.sizes == {"p2": [32], "p3": [64], "p4": [128], "p5": [256], "p6": [512]}
    assert (fpn.roi_heads.canonical_scale, fpn.roi_heads.canonical_level) == (224, 4)
    # the first studies' transform, by name: the paper's 32..512 px at 800 px, scaled to 256 px: x 0.32
    scaled = Reproduction(tmp_path, replace(FULL, geometry="scaled", image_size=256))
    c4 = scaled.config(ROWS[0], 0).model
    assert c4.rpn.anchors.sizes == {"c4": pytest.approx([10.24, 20.48, 40.96, 81.92, 163.84])}
    fpn = scaled.config(ROWS[2], 0).model
    assert fpn.rpn.anchors.sizes["p2"] == pytest.approx([10.24])
    assert fpn.roi_heads.canonical_scale == pytest.approx(224 * 0.32)  # Eq. 1's 224 px, scaled alike


def test_seed_k_pairs_the_rows_of_a_table(tmp_path):
    # the same seed, the same data order, flips and heads' initialisation in every row of a table
    reproduction = Reproduction(tmp_path, FULL)
    for seed in range(3):
        assert {reproduction.config(row, seed).train.seed for row in ROWS if row.table == "2"} == {seed}
    assert sorted({seed for row, seed in reproduction.runs() if row.table in "123"}) == [0, 1, 2]
    per_row = {}
    for row, seed in reproduction.runs():
        per_row.setdefault(row.name, []).append(seed)
    assert all(per_row[row.name] == [0, 1, 2] for row in ROWS if row.table in "123")


def test_every_rpn_keeps_as_many_candidates_per_image_before_nms(tmp_path):
    # pre_nms_top_n is per level: a one-level RPN (C4, C5, P2 only) gets the five levels' total
    reproduction = Reproduction(tmp_path, FULL)
    for split in ("train", "test"):
        per_image = {row.name: getattr(cfg.rpn, f"pre_nms_top_n_{split}") * len(cfg.rpn.levels)
                     for row in ROWS if row.table in "13"
                     for cfg in [reproduction.config(row, 0).model]}
        assert len(set(per_image.values())) == 1, per_image
    p2_only = reproduction.config(next(r for r in ROWS if r.name == "table1_f"), 0).model.rpn
    assert p2_only.levels == ["p2"] and p2_only.pre_nms_top_n_test == 5000


def test_miniature_leaves_the_preset_alone():
    from fpn.config.files import load_config

    preset = load_config("paper_r50_fpn")
    miniature(preset, 256)
    assert preset.model.backbone.depth == 50 and preset.model.rpn.anchors.sizes["p2"] == [32]


def test_a_new_config_field_at_its_default_does_not_make_finished_runs_stale():
    cfg = miniature(Config(), 256)
    recorded = json.loads(config_text(cfg))
    del recorded["train"]["warmup_factor"]  # a field the run was recorded before
    assert same_config(json.dumps(recorded), cfg)
    changed = from_dict(Config, to_dict(cfg))
    changed.train.warmup_factor = 0.5
    assert not same_config(json.dumps(recorded), changed)  # ... unless it is set to something else
    recorded["train"]["no_such_field"] = 1
    assert not same_config(json.dumps(recorded), cfg)
    assert not same_config("{not json", cfg)


def test_a_renamed_field_reads_under_its_new_name_and_differences_are_named():
    # train.amp became train.precision: a run recorded with amp "off" was made with fp32
    cfg = miniature(Config(), 256)
    recorded = json.loads(config_text(cfg))
    del recorded["train"]["precision"]
    recorded["train"]["amp"] = "off"
    assert config_differences(json.dumps(recorded), cfg) == []
    recorded["train"]["base_lr"] = 0.5
    recorded["model"]["neck"]["channels"] = 7
    assert config_differences(json.dumps(recorded), cfg) == [
        f"model.neck.channels: 7 -> {cfg.model.neck.channels}", f"train.base_lr: 0.5 -> {cfg.train.base_lr}"]


def test_a_work_folder_named_relatively_or_absolutely_or_moved_is_the_same_study(tmp_path, monkeypatch):
    def study(work, budget=FULL):
        return Reproduction(work_dir(work, budget, quick=False), budget)

    monkeypatch.chdir(tmp_path)
    row = ROWS[8]  # Table 2's FPN: images, annotations, proposals and the pre-trained backbone
    recorded = config_text(study("work").config(row, 0))
    absolute = study(tmp_path / "work")
    assert config_differences(recorded, absolute.config(row, 0)) == []
    monkeypatch.chdir(tmp_path.parent)  # continued from another directory, or moved with its data
    assert config_differences(recorded, study(tmp_path / "work").config(row, 0)) == []
    assert config_differences(recorded, study(tmp_path / "moved").config(row, 0)) == []
    other_data = study("work", replace(FULL, data_seed=1)).config(row, 0)  # another draw of the data
    assert "data.train_images: 'full-data0/data/train/images' -> 'full-data1/data/train/images'" in (
        config_differences(recorded, other_data))
    elsewhere = absolute.config(row, 0)
    elsewhere.train.init = ["backbone.pth"]  # a path outside any study: compared as an absolute path
    assert config_differences(recorded, elsewhere) == [
        f"train.init: ['full-data0/pretrain'] -> ['{tmp_path.parent / 'backbone.pth'}']"]
    more_loaders = absolute.config(row, 0)
    more_loaders.data.num_workers += 3  # how the data is read, not what is trained
    assert config_differences(recorded, more_loaders) == []


def test_busy_time_counts_runs_trained_side_by_side_once():
    side_by_side = [{"started": 0.0, "ended": 10.0, "seconds": 10.0},
                    {"started": 2.0, "ended": 12.0, "seconds": 10.0},
                    {"started": 20.0, "ended": 25.0, "seconds": 5.0}]  # then a pause, then one more
    assert busy_seconds(side_by_side) == pytest.approx(12.0 + 5.0)
    assert busy_seconds([*side_by_side, {"seconds": 3.0}]) == pytest.approx(20.0)  # an older record


def test_the_schedule_rule_on_hand_made_curves():
    def curve(*values):
        return [{"step": 200 * (i + 1), "AP": v} for i, v in enumerate(values)]

    curves = {"c": {0.005: curve(0.1, 0.2, 0.25, 0.28), 0.01: curve(0.2, 0.3, 0.33, 0.34)},
              "d": {0.005: curve(0.1, 0.1, 0.2, 0.3), 0.01: curve(0.1, 0.2, 0.29, 0.30)}}
    choice = choose_schedule(curves, "AP")
    # end values (mean of the last two points, then of the rows): 0.005 -> (0.265 + 0.25) / 2,
    # 0.01 -> (0.335 + 0.295) / 2: the higher rate wins
    assert choice["rate"] == 0.01
    assert choice["end_value"][0.01] == pytest.approx(0.315)
    # 95% of the best: (c) 0.323 first reached at 0.33 (step 600), (d) 0.285 at 0.29 (step 600)
    assert choice["plateau_step"] == {"c": 600, "d": 600} and choice["length"] == 600
    # a larger rate must gain more than a point: 0.02 ending 0.8 points above 0.01 is not chosen,
    # 1.2 points above is
    for gain, chosen in ((0.008, 0.01), (0.012, 0.02)):
        curves["c"][0.02] = curve(0.2, 0.3, 0.33 + gain, 0.34 + gain)
        curves["d"][0.02] = curve(0.1, 0.2, 0.29 + gain, 0.30 + gain)
        assert choose_schedule(curves, "AP")["rate"] == chosen, gain


def test_seed_summary_and_paired_claims_on_hand_made_rows():
    def record(table, row, seed, **metrics):
        return {"table": table, "row": row, "label": f"({row})", "seed": seed, "train_seconds": 60.0,
                "metrics": metrics}

    rows = [record("3", "c", 0, AP=0.30, AP_s=0.20, AP_m=0.3, AP_l=0.4),
            record("3", "c", 1, AP=0.34, AP_s=0.22, AP_m=0.3, AP_l=0.4),
            record("3", "a", 0, AP=0.31, AP_s=0.10, AP_m=0.3, AP_l=0.45),
            record("3", "a", 1, AP=0.29, AP_s=0.12, AP_m=0.3, AP_l=0.45)]
    summary = summarise(rows)
    assert summary["3"]["c"]["AP"] == pytest.approx((0.32, 0.02))  # mean, half the range
    assert summary["3"]["c"]["seeds"] == 2
    lines = claims(summary, {}, rows)
    # paired by seed: 0.30 - 0.31 = -1.0 and 0.34 - 0.29 = +5.0 points, mean +2.0
    assert any("AP above (a)? yes (32.0 vs 30.0: +2.0 points paired by seed; the seeds disagree: "
               "1 above, 1 below, 0 equal (-1.0 to +5.0))" in line for line in lines), lines
    assert any("AP_s above (a)? yes (21.0 vs 11.0: +10.0 points paired by seed; the same sign in all 2 "
               "seeds (+10.0 to +10.0))" in line for line in lines), lines
    assert any("largest on small objects? yes (AP_s +10.0, AP_m +0.0, AP_l -5.0)" in line for line in lines)


def test_a_diverged_seed_is_reported_and_the_study_goes_on(tmp_path, monkeypatch):
    import fpn.reproduction.study as study
    from fpn.errors import NonFiniteLossError
    from fpn.reproduction.plan import row_named
    from fpn.reproduction.report import table_markdown

    def diverges(cfg, run_dir, **kwargs):
        raise NonFiniteLossError("step 131: loss term 'loss_rpn_objectness' is nan")

    monkeypatch.setattr(study, "run_train", diverges)
    reproduction = Reproduction(tmp_path, QUICK, progress=lambda line: None)
    record = reproduction.train_one(row_named("table1_f"), 2)
    assert record["diverged"].startswith("step 131") and record["metrics"] == {}
    assert json.loads((reproduction.run_dir(row_named("table1_f"), 2) / "row.json").read_text()) == record
    finished = [{"table": "1", "row": "f", "label": "(f) only P2", "seed": s, "train_seconds": 60.0,
                 "metrics": {"AR@1000": value}} for s, value in ((0, 0.5), (1, 0.6))]
    summary = summarise([*finished, record])
    assert summary["1"]["f"]["seeds"] == 2 and summary["1"]["f"]["diverged"] == 1
    assert summary["1"]["f"]["AR@1000"] == pytest.approx((0.55, 0.05))  # the diverged seed is not a zero
    assert "| (f) only P2 | 2 (1 diverged) | - | 55.0 ± 5.0 |" in table_markdown("1", summary["1"])
    assert summarise([record])["1"]["f"]["seeds"] == 0  # every seed diverged: no numbers, no error


@pytest.mark.slow
def test_quick_reproduction_continues_after_a_kill_and_reports_every_table(tmp_path):
    lines = []

    def killed_after_three_rows(line):
        lines.append(line)
        if sum(line.startswith("[") for line in lines) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_reproduction(quick=True, output=tmp_path / "report", work=tmp_path / "work", device="cpu",
                         progress=killed_after_three_rows)
    work = tmp_path / "work" / "quick-data0"
    finished = sorted((work / "runs").glob("*/row.json"))
    assert len(finished) == 3
    stamps = {p: p.stat().st_mtime_ns for p in finished}

    # --report-only: the report of the three finished runs; nothing trained, nothing moved
    run_reproduction(quick=True, output=tmp_path / "partial", work=tmp_path / "work", device="cpu",
                     report_only=True, progress=lines.append)
    assert sorted((work / "runs").glob("*/row.json")) == finished
    partial = json.loads((tmp_path / "partial" / "results.json").read_text())
    assert sorted(f"table{r['table']}_{r['row']}_seed{r['seed']}" for r in partial["rows"]) == sorted(
        p.parent.name for p in finished)
    expected = sum(QUICK.seeds.get(row.table, 1) for row in ROWS)
    partial_readme = (tmp_path / "partial" / "README.md").read_text()
    assert f"3 of the study's {expected} runs are finished" in partial_readme

    lines.clear()
    run_reproduction(quick=True, output=tmp_path / "report", work=tmp_path / "work", device="cpu",
                     jobs=2, progress=lines.append)  # the rest, two runs at a time
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in stamps.items())  # not trained again
    progress = [line for line in lines if line.startswith("[")]
    assert len(progress) == expected - 3 and progress[0].startswith(f"[4/{expected}]")
    assert all("min left" in line for line in progress)

    results = json.loads((tmp_path / "report" / "results.json").read_text())
    assert len(results["rows"]) == expected
    by_row = {(r["table"], r["row"], r["seed"]): r["metrics"] for r in results["rows"]}
    # anchors per 64-px image, counted by hand:
    # FPN 3 x (16² + 8² + 4² + 2² + 1²); C4 15 x 4²; P2 only 15 x 16²
    assert by_row[("1", "c", 0)]["anchors_per_image"] == 3 * 341
    assert by_row[("1", "a", 1)]["anchors_per_image"] == 15 * 16
    assert by_row[("1", "f", 0)]["anchors_per_image"] == 15 * 256
    for (table, _, _), metrics in by_row.items():
        wanted = {"1": "AR@1000", "2": "AP", "3": "AP", "6": "mask_AR@1000"}[table]
        assert 0.0 <= metrics[wanted] <= 1.0 and metrics["seconds_per_image"] > 0
    assert set(results["pyramid"]["rows"]) == {"C5, one scale", "C5, image pyramid [48, 64, 96]",
                                               "FPN, one scale"}

    readme = (tmp_path / "report" / "README.md").read_text()
    for title in ("Table 1", "Table 2", "Table 3", "Table 6", "image pyramid", "claims, checked"):
        assert title in readme
    assert f"| {PAPER['1']['c'][1]:.1f} |" in readme  # the paper's FPN AR@1000 beside ours
    assert "--geometry paper --seed 0`" in readme and "held-out accuracy" in readme
    # the geometry, measured before training: every row's anchor coverage, Eq. 1's level shares
    assert "## The geometry, measured before training" in readme
    assert any(line.startswith("FPN anchors at IoU >= 0.7") for line in lines)
    geometry = results["geometry"]["rows"]
    assert set(geometry) == {row.name for row in ROWS if row.table in "123"}
    shares = geometry["table3_c"]["ours"]["levels"]
    assert set(shares) == {"p2", "p3", "p4", "p5"} and sum(shares.values()) == pytest.approx(1.0)
    assert geometry["table1_f"]["ours"]["anchors"] == {"p2": [32.0, 64.0, 128.0, 256.0, 512.0]}
    for figure in ("ar_vs_proposals.png", "by_object_size.png", "time_vs_accuracy.png"):
        with Image.open(tmp_path / "report" / figure) as image:
            assert image.width > 300 and image.height > 200
        assert f"]({figure})" in readme

    # A run whose recorded config is not the one the code now makes stops the study, naming it
    # and the field; nothing is deleted. --retrain-stale moves it aside and trains it again; the
    # other rows are kept, and so is the image pyramid, which Table 6 does not feed.
    stale = work / "runs" / "table6_dual_seed0"
    recorded = json.loads((stale / "reproduce_config.json").read_text())
    recorded["train"]["base_lr"] = 0.123
    (stale / "reproduce_config.json").write_text(json.dumps(recorded))
    kept = {p: p.stat().st_mtime_ns for p in (work / "runs").glob("*/row.json")
            if stale not in p.parents}
    with pytest.raises(StaleRunError, match=r"table6_dual_seed0 were made with another config .*"
                                            r"train\.base_lr: 0\.123 -> .*--retrain-stale"):
        run_reproduction(quick=True, output=tmp_path / "report", work=tmp_path / "work", device="cpu",
                         progress=lines.append)
    assert (stale / "row.json").is_file()
    with pytest.raises(StaleRunError):  # a report of stale runs would be a report of another study
        run_reproduction(quick=True, output=tmp_path / "partial", work=tmp_path / "work", device="cpu",
                         report_only=True, progress=lines.append)
    lines.clear()
    run_reproduction(quick=True, output=tmp_path / "report", work=tmp_path / "work", device="cpu",
                     retrain_stale=True, progress=lines.append)
    moved = list((work / "stale").glob("*/runs/table6_dual_seed0/row.json"))
    assert len(moved) == 1, lines  # the stale run is kept, beside the study
    assert any(f"{stale} was made with another config (train.base_lr: 0.123 -> " in line
               for line in lines), lines
    assert [line for line in lines if line.startswith("[")] == [
        line for line in lines if line.startswith(f"[{expected}/{expected}] table 6 5x5 and 7x7 MLPs")]
    assert not any(line.startswith("image pyramid:") for line in lines)
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in kept.items())


@pytest.mark.slow
def test_calibration_trains_each_rate_at_a_constant_rate_and_chooses_by_its_own_curves(tmp_path):
    from fpn.errors import ConfigError
    from fpn.reproduction.calibrate import RATES, run_calibration
    from fpn.reproduction.study import eval_curve

    with pytest.raises(ConfigError, match=r"table '4' has no calibration \(tables: 1, 2, 3\)"):
        run_calibration("4", quick=True, output=tmp_path / "report", work=tmp_path / "work")
    written = run_calibration("1", quick=True, output=tmp_path / "report", work=tmp_path / "work",
                              device="cpu", progress=lambda line: None)
    sweep = tmp_path / "work" / "quick-data0" / "calibration"
    runs = sorted(sweep.glob("table1_*_lr*"))
    assert [run.name for run in runs] == [f"table1_{row}_lr{rate}" for row in "cd" for rate in RATES]
    for run in runs:  # what each run was trained with, from the config it recorded
        recorded = json.loads((run / "reproduce_config.json").read_text())
        train = recorded["train"]
        # evaluated on the calibration split, never on the validation images the report scores
        assert Path(recorded["data"]["val_annotations"]).parts[-2:] == ("calibration", "annotations.json")
        assert train["base_lr"] == float(run.name.rsplit("_lr", 1)[1])
        assert train["lr_steps"] == [] and train["max_iter"] == 2  # constant after warm-up
        assert [point["step"] for point in eval_curve(run)] == [1, 2]  # an evaluation every step

    record = json.loads(written.read_text())
    curves = {row: {rate: eval_curve(sweep / f"table1_{row}_lr{rate}") for rate in RATES} for row in "cd"}
    expected = choose_schedule(curves, "AR@1000")
    assert record["choice"]["rate"] == expected["rate"] in RATES
    assert record["choice"]["length"] == expected["length"]
    with Image.open(tmp_path / "report" / "calibration" / "table1.png") as image:
        assert image.width > 300

    logs = {run: (run / "metrics.jsonl").stat().st_mtime_ns for run in runs}
    run_calibration("1", quick=True, output=tmp_path / "report", work=tmp_path / "work",
                    device="cpu", progress=lambda line: None)
    assert all((run / "metrics.jsonl").stat().st_mtime_ns == stamp for run, stamp in logs.items())
