"""Checkpoints: round trip, atomic writes, and refusing pickled code."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from fpn.engine.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from fpn.engine.rng import capture_rng_state, restore_rng_state
from fpn.errors import CheckpointError, UnsafeCheckpointError
from fpn.safe_reading import read_checkpoint


def _draws():
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_round_trip_of_weights_optimizer_and_rng(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    state = {"optimizer": optimizer.state_dict(), "step": 7, "rng": capture_rng_state()}
    expected = _draws()
    path = save_checkpoint(tmp_path, 7, model.state_dict(), state, {"a": 1})
    weights, train_state, config = load_checkpoint(path)
    assert config == {"a": 1} and train_state["step"] == 7
    for key, value in model.state_dict().items():
        assert torch.equal(weights[key], value)
    restored = torch.optim.SGD(torch.nn.Linear(3, 2).parameters(), lr=0.1, momentum=0.9)
    restored.load_state_dict(train_state["optimizer"])
    assert torch.equal(restored.state_dict()["state"][0]["momentum_buffer"],
                       optimizer.state_dict()["state"][0]["momentum_buffer"])
    restore_rng_state(train_state["rng"])
    assert _draws() == expected


def test_latest_ignores_a_killed_writers_temp_dir_and_prunes(tmp_path):
    weights = {"w": torch.zeros(2)}
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, weights, keep=2)
    (tmp_path / ".step_0000005.abc.tmp").mkdir()  # what a SIGKILL mid-write leaves
    assert latest_checkpoint(tmp_path).name == "step_0000004"
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_0000003", "step_0000004"]
    (tmp_path / "last_checkpoint").write_text("step_0000009")  # a pointer to nothing: fall back
    assert latest_checkpoint(tmp_path).name == "step_0000004"


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    """Another library's file and our own train_state.pt go through the same safe reader."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": _Payload(marker)}, path)
    with pytest.raises(UnsafeCheckpointError, match="evil.pth: refusing"):
        read_checkpoint(path)
    ckpt = save_checkpoint(tmp_path / "run", 1, {"w": torch.ones(2)}, {"step": 1})
    torch.save({"step": 1, "x": _Payload(marker)}, ckpt / "train_state.pt")
    with pytest.raises(UnsafeCheckpointError, match="train_state.pt: refusing"):
        load_checkpoint(ckpt)
    assert not marker.exists()


def test_wrappers_truncation_and_missing_files(tmp_path):
    path = tmp_path / "ok.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}}, path)
    assert torch.equal(read_checkpoint(path)["state_dict"]["w"], torch.ones(2))
    ckpt = save_checkpoint(tmp_path / "run", 1, {"w": torch.ones(1000)})
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match="no such file"):
        read_checkpoint(tmp_path / "none.pth")



@pytest.mark.parametrize(("umask", "folder_mode", "file_mode"),
                         [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640), (0o077, 0o700, 0o600)])
def test_checkpoints_follow_the_umask(tmp_path, umask, folder_mode, file_mode):
    """What any new file gets under the umask, not the 0700 / 0600 of Python's temporary files."""
    import stat

    old = os.umask(umask)
    try:
        path = save_checkpoint(tmp_path / "checkpoints", 1, {"w": torch.zeros(2)}, {"step": 1}, {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == folder_mode
    for name in ("model.safetensors", "train_state.pt", "config.yaml"):
        assert stat.S_IMODE((path / name).stat().st_mode) == file_mode, name
    assert stat.S_IMODE((tmp_path / "checkpoints" / "last_checkpoint").stat().st_mode) == file_mode


def test_keep_checkpoints_is_the_training_config_s(tiny_synth, tmp_path):
    from fpn.cli import main
    from tests.conftest import TINY_MODEL, data_overrides

    def steps_kept(run, keep):
        args = [*TINY_MODEL, *data_overrides(tiny_synth), "train.batch_size=2", "train.max_iter=4",
                "train.warmup_iters=1", "train.device=cpu", "train.checkpoint_period=1",
                f"train.keep_checkpoints={keep}"]
        assert main(["--quiet", "train", "--config", "demo", "--output", str(run), "--no-eval", *args]) == 0
        return sorted(int(p.name[5:]) for p in (run / "checkpoints").glob("step_*"))

    assert steps_kept(tmp_path / "two", 2) == [3, 4]
    assert steps_kept(tmp_path / "all", 0) == [1, 2, 3, 4]
