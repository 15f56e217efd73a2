"""The training loop: schedule, exact resume, non-finite losses."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY_MODEL, data_overrides
from fpn.config import TrainConfig, load_config
from fpn.engine.checkpoint import latest_checkpoint, load_checkpoint
from fpn.engine.train import NonFiniteLossError, _check_finite, lr_factor, scaled_lr, train
from fpn.jobs.datasets import build_dataset, with_dataset_classes
from fpn.jobs.training import new_model


def test_schedule_warmup_steps_and_linear_scaling():
    cfg = TrainConfig(batch_size=4, base_lr=0.02, base_batch_size=16, warmup_iters=100, warmup_factor=0.001,
                      lr_steps=[200, 300], lr_gamma=0.1)
    assert scaled_lr(cfg) == pytest.approx(0.005)  # 0.02 x 4 / 16
    assert lr_factor(0, cfg) == pytest.approx(0.001)
    assert lr_factor(50, cfg) == pytest.approx(0.001 * 0.5 + 0.5)
    assert lr_factor(100, cfg) == 1.0 and lr_factor(199, cfg) == 1.0
    assert lr_factor(200, cfg) == pytest.approx(0.1) and lr_factor(300, cfg) == pytest.approx(0.01)


def _cfg(root, max_iter):
    overrides = [*TINY_MODEL, *data_overrides(root), "train.batch_size=2", "train.base_batch_size=2",
                 "train.base_lr=0.01", f"train.max_iter={max_iter}", "train.warmup_iters=2",
                 "train.lr_steps=[4]", "train.checkpoint_period=100", "train.device=cpu"]
    return load_config("demo", overrides)


def _train(cfg, dataset, run_dir, **kwargs):
    cfg = with_dataset_classes(cfg, dataset)
    return train(new_model(cfg.model, cfg.train.seed), dataset, cfg, run_dir, progress=False, **kwargs)


def _weights(run_dir):
    return load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))[0]


def test_stop_and_resume_gives_identical_weights(tiny_synth, tmp_path):
    dataset = build_dataset(_cfg(tiny_synth, 6).data, "train")  # 6 images, batch 2: 3 steps an epoch
    straight = tmp_path / "straight"
    _train(_cfg(tiny_synth, 6), dataset, straight)
    resumed = tmp_path / "resumed"
    _train(_cfg(tiny_synth, 4), dataset, resumed)  # stop
    assert latest_checkpoint(resumed / "checkpoints").name == "step_0000004"
    _train(_cfg(tiny_synth, 6), dataset, resumed, resume=True)
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    lines = (resumed / "metrics.jsonl").read_text().splitlines()
    assert len(lines) >= 2  # both runs logged into the same file


def test_non_finite_loss_names_step_and_term():
    with pytest.raises(NonFiniteLossError, match="step 12: loss term 'loss_box' is nan"):
        _check_finite({"loss_cls": torch.tensor(1.0), "loss_box": torch.tensor(float("nan"))}, 11)


def _with_corrupt_images(root, tmp_path, count):
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(root, copy)
    for path in sorted((copy / "train" / "images").glob("*.png"))[:count]:
        path.write_bytes(path.read_bytes()[:100])  # truncated PNG
    return copy


def test_bad_samples_are_skipped_and_counted(tiny_synth, tmp_path, caplog):
    data = _with_corrupt_images(tiny_synth, tmp_path, 1)
    cfg = _cfg(data, 3)
    dataset = build_dataset(cfg.data, "train")
    result = _train(cfg, dataset, tmp_path / "run")
    assert result["step"] == 3 and result["bad_samples"] >= 1
    assert "000000.png" in caplog.text


def test_too_many_bad_samples_stop_with_a_summary(tiny_synth, tmp_path):
    from fpn.engine.train import TooManyBadSamplesError

    data = _with_corrupt_images(tiny_synth, tmp_path, 4)
    cfg = load_config("demo", [*TINY_MODEL, *data_overrides(data),
                               "train.batch_size=2", "train.max_iter=6", "train.max_bad_samples=2",
                               "train.device=cpu"])
    dataset = build_dataset(cfg.data, "train")
    with pytest.raises(TooManyBadSamplesError, match="max_bad_samples=2"):
        _train(cfg, dataset, tmp_path / "run")


def test_tensorboard_scalars_when_installed(tiny_synth, tmp_path, monkeypatch):
    """With tensorboard importable, losses and learning rate go to it too (a recording stand-in)."""
    import sys
    import types

    written = []

    class Writer:
        def __init__(self, log_dir):
            written.append(("dir", log_dir))

        def add_scalar(self, tag, value, step):
            written.append((tag, value, step))

        def close(self):
            written.append(("closed",))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    cfg = _cfg(tiny_synth, 2)
    cfg.train.log_period = 1
    dataset = build_dataset(cfg.data, "train")
    _train(cfg, dataset, tmp_path / "run")
    tags = {w[0] for w in written}
    assert {"train/loss", "train/lr", "train/loss_cls", "closed"} <= tags
    assert written[0] == ("dir", str(tmp_path / "run" / "tensorboard"))
