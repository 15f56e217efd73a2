"""The optimiser and its schedule (docs/paper.md §6): the linear scaling rule, the warm-up, the
x0.1 steps, the parameter groups, and the heads-only warm-up, against hand-computed values."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fpn.config.schema import TrainConfig
from fpn.engine.optim import HeadsOnly, build_optimizer, build_scheduler, lr_factor, scaled_lr
from fpn.errors import ConfigError

# 4 images a batch at 0.02 for 16: 0.005. Warm-up over 4 steps from 0.2 of it; x0.1 at 6 and 8.
SCHEDULE = TrainConfig(batch_size=4, base_lr=0.02, base_batch_size=16, warmup_iters=4, warmup_factor=0.2,
                       lr_steps=[6, 8], lr_gamma=0.1)
# lr of step s (0-based): warm-up 0.005 · (0.2 (1 - s/4) + s/4) for s < 4, then 0.005 until step 6,
# 0.0005 until step 8, 0.00005 after
EXPECTED_LRS = [0.001, 0.002, 0.003, 0.004, 0.005, 0.005, 0.0005, 0.0005, 0.00005, 0.00005]


class Model(nn.Module):
    """A backbone and a head, each a weight matrix and a bias."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(3, 2)
        self.head = nn.Linear(2, 1)


def test_the_linear_scaling_rule():
    assert scaled_lr(SCHEDULE) == pytest.approx(0.005)  # 0.02 · 4 / 16
    assert scaled_lr(TrainConfig(batch_size=32, base_lr=0.02, base_batch_size=16)) == pytest.approx(0.04)


def test_lr_factor_warms_up_linearly_then_steps_down():
    factors = [lr_factor(step, SCHEDULE) for step in range(10)]
    assert factors == pytest.approx([lr / 0.005 for lr in EXPECTED_LRS])


def test_a_step_during_the_warm_up_is_also_decayed():
    cfg = TrainConfig(warmup_iters=10, warmup_factor=0.0, lr_steps=[4], lr_gamma=0.5)
    assert lr_factor(6, cfg) == pytest.approx(0.6 * 0.5)  # 6/10 of the warm-up, after one x0.5 step


def test_the_scheduler_gives_each_step_its_lr():
    model = Model()
    optimizer = build_optimizer(model, SCHEDULE)
    scheduler = build_scheduler(optimizer, SCHEDULE)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])  # the lr the step runs at
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx(EXPECTED_LRS)


def test_weight_decay_only_on_weight_matrices_and_a_slower_backbone():
    model = Model()
    groups = build_optimizer(model, TrainConfig(batch_size=16, weight_decay=1e-4)).param_groups
    assert [(len(g["params"]), g["weight_decay"]) for g in groups] == [(2, 1e-4), (2, 0.0)]
    assert {id(p) for p in groups[0]["params"]} == {id(model.backbone.weight), id(model.head.weight)}
    slower = build_optimizer(model, TrainConfig(batch_size=16, backbone_lr_factor=0.1)).param_groups
    # heads first at the full 0.02, then the backbone's weight and bias at 0.002
    assert [(g["params"], g["lr"]) for g in slower] == [
        ([model.head.weight], pytest.approx(0.02)), ([model.head.bias], pytest.approx(0.02)),
        ([model.backbone.weight], pytest.approx(0.002)), ([model.backbone.bias], pytest.approx(0.002))]


def test_frozen_parameters_are_left_out():
    model = Model()
    model.backbone.requires_grad_(False)
    groups = build_optimizer(model, TrainConfig()).param_groups
    assert sum(len(g["params"]) for g in groups) == 2


def test_heads_only_fixes_the_body_until_its_step():
    model = Model()
    model.neck = nn.Linear(2, 2)
    model.neck.bias.requires_grad_(False)  # frozen by the config: stays frozen afterwards
    hook = HeadsOnly(model, 3)
    body = [model.backbone.weight, model.backbone.bias, model.neck.weight]
    for step, trainable in [(0, False), (2, False), (3, True), (5, True)]:
        hook.apply(step)
        assert [p.requires_grad for p in body] == [trainable] * 3, step
        assert model.head.weight.requires_grad
        assert not model.neck.bias.requires_grad


def test_heads_only_is_refused_under_torchrun():
    with pytest.raises(ConfigError, match="not supported under torchrun"):
        HeadsOnly(Model(), 3, distributed=True)


def test_sgd_moves_a_weight_by_lr_times_gradient():
    """One step at the warm-up's first lr with momentum's first step (no history): w -= lr · grad."""
    model = Model()
    optimizer = build_optimizer(model, SCHEDULE)
    build_scheduler(optimizer, SCHEDULE)  # sets the first step's factor, 0.2
    before = model.head.bias.detach().clone()
    model.head.bias.grad = torch.tensor([2.0])
    optimizer.step()
    torch.testing.assert_close(model.head.bias.detach(), before - 0.001 * 2.0)
