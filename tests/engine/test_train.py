"""The training loop: schedule, exact resume, non-finite losses."""

from __future__ import annotations

import pytest
import torch

from fpn.config.files import load_config
from fpn.config.schema import TrainConfig
from fpn.engine.checkpoint import latest_checkpoint, load_checkpoint
from fpn.engine.loop import check_finite
from fpn.engine.optim import lr_factor, scaled_lr
from fpn.engine.train import train
from fpn.errors import NonFiniteLossError
from fpn.jobs.datasets import build_dataset, with_dataset_classes
from fpn.jobs.training import new_model
from tests.conftest import TINY_MODEL, data_overrides


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


@pytest.mark.slow
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


@pytest.mark.slow
def test_data_loading_processes_change_no_weight(tiny_synth, tmp_path):
    """data.num_workers is how the data is read, not what is trained (each sample's flips and
    sampling come from its own seed): 0 and 2 loader processes give the same weights, across an
    epoch boundary. fpn reproduce relies on it (fpn.reproduction.study.RESULT_NEUTRAL_FIELDS)."""
    weights = []
    for workers in (0, 2):
        cfg = _cfg(tiny_synth, 4)  # 6 images, batch 2: 3 steps an epoch
        cfg.data.num_workers, cfg.data.horizontal_flip = workers, 0.5
        _train(cfg, build_dataset(cfg.data, "train"), tmp_path / f"workers{workers}")
        weights.append(_weights(tmp_path / f"workers{workers}"))
    different = [k for k in weights[0] if not torch.equal(weights[0][k], weights[1][k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_non_finite_loss_names_step_and_term():
    with pytest.raises(NonFiniteLossError, match="step 12: loss term 'loss_box' is nan"):
        check_finite({"loss_cls": torch.tensor(1.0), "loss_box": torch.tensor(float("nan"))}, 11)


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
    from fpn.errors import TooManyBadSamplesError

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


@pytest.mark.slow
def test_hooks_run_in_order_between_steps_and_extra_hooks_are_appended(tiny_synth, tmp_path):
    """A user's hook sees every step after the default ones (log, checkpoint, evaluate) and is told
    when training ends, also when it fails."""
    from fpn.engine.loop import HookBase

    calls = []

    class Recorder(HookBase):
        def before_train(self):
            calls.append(("before_train", self.trainer.state.step))

        def before_step(self):
            calls.append(("before_step", self.trainer.state.step))

        def after_step(self):
            calls.append(("after_step", self.trainer.state.step, round(self.trainer.losses["lr"], 6)))

        def after_train(self):
            calls.append(("after_train", self.trainer.state.step))

    evaluated = []
    cfg = _cfg(tiny_synth, 3)
    cfg.train.eval_period = 2
    dataset = build_dataset(cfg.data, "train")
    _train(cfg, dataset, tmp_path / "run", hooks=[Recorder()],
           evaluate_fn=lambda model, step: evaluated.append((step, len(calls))) or {"AP": 0.5})
    lrs = [round(0.01 * lr_factor(step, cfg.train), 6) for step in range(3)]  # the rate each step used
    assert calls == [("before_train", 0), ("before_step", 0), ("after_step", 1, lrs[0]), ("before_step", 1),
                     ("after_step", 2, lrs[1]), ("before_step", 2), ("after_step", 3, lrs[2]),
                     ("after_train", 3)]
    # the evaluator (a default hook) ran at step 2 and at the end, each time before the user's hook
    assert evaluated == [(2, 4), (3, 6)]

    class Failing(HookBase):
        def after_step(self):
            raise RuntimeError("a broken hook")

    calls.clear()
    with pytest.raises(RuntimeError, match="a broken hook"):
        _train(_cfg(tiny_synth, 3), dataset, tmp_path / "failed", hooks=[Recorder(), Failing()])
    assert calls[-1] == ("after_train", 1)
