"""Distributed training: 2 gloo processes under torchrun give the parameters of one process."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from conftest import TINY_MODEL, data_overrides
from fpn.engine.checkpoint import latest_checkpoint, load_checkpoint
from fpn.engine.train import autocast, make_grad_scaler

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _train_args(root, run_dir):
    # GroupNorm (in TINY_MODEL): BatchNorm statistics would differ between a batch of 4 and 2 x 2
    return ["--quiet", "train", "--config", "demo", "--output", str(run_dir), "--no-eval", *TINY_MODEL,
            *data_overrides(root), "train.batch_size=4", "train.base_batch_size=4", "train.max_iter=2",
            # more RoIs asked for than there are candidates: each image samples (proposals + its own
            # ground truth) RoIs, so the ranks sample different counts and only a loss normalised by
            # the global count makes two ranks equal one process
            "model.roi_heads.batch_size_per_image=512",
            "train.warmup_iters=0", "train.device=cpu", "data.horizontal_flip=0.5"]


@pytest.mark.slow
def test_two_ranks_with_global_batch_4_match_one_process(tiny_synth, tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    subprocess.run([sys.executable, "-m", "fpn", *_train_args(tiny_synth, single)], check=True,
                   capture_output=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = subprocess.run([*torchrun, "-m", "fpn", *_train_args(tiny_synth, ddp)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = load_checkpoint(latest_checkpoint(single / "checkpoints"))[0]
    got = load_checkpoint(latest_checkpoint(ddp / "checkpoints"))[0]
    gap = max((expected[k] - got[k]).abs().max().item() for k in expected)
    assert gap <= 1e-5, f"largest parameter difference {gap:.2e}"
    assert len(list((ddp / "checkpoints").glob("step_*"))) == 1  # only rank 0 wrote


def test_mixed_precision_is_off_on_the_cpu():
    """The AMP code path runs where CUDA is absent: no autocast, a pass-through scaler."""
    cpu = torch.device("cpu")
    with autocast(cpu, "bf16"):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float32
    scaler = make_grad_scaler(cpu, "fp16")
    assert not scaler.is_enabled()
    loss = torch.tensor(2.0, requires_grad=True)
    assert scaler.scale(loss) is loss
