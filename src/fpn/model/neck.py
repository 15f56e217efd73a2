"""The feature pyramid: lateral 1x1 convs, the top-down pathway, 3x3 output convs, P6.

docs/paper.md §1. Every ablation row of the paper's Tables 1-3 is a switch on ``FeaturePyramid``:

- (c) FPN: ``top_down=True, lateral=True`` (the default);
- (d) bottom-up pyramid: ``top_down=False``: P_k = out_conv(lateral(C_k));
- (e) top-down without laterals: ``lateral=False``: only C5 is projected; finer levels are
  upsampled copies of the coarser one, each through its own 3x3 conv;
- (f) finest level only: the full pyramid, of which the heads read P2 alone (configured on the
  heads, not here);
- (a), (b) single-scale baselines: ``SingleLevel`` hands C4 or C5 to the heads unchanged.

A neck states its own facts (``Neck``): the bottom-up maps it reads, the levels it gives, their
channels and strides. The detector asks the neck and never its kind, so a neck written by a user
and passed in (``FasterRCNN(cfg, neck=...)``) needs no edit anywhere else.

Shape shorthand: N images, d pyramid channels, Hk x Wk the size of level k (stride 2^k).
"""

from __future__ import annotations

from typing import Protocol

import torch.nn.functional as F
from torch import Tensor, nn

from fpn.config.schema import NeckConfig
from fpn.errors import ConfigError


class Neck(Protocol):
    """What the detector reads from a neck (an ``nn.Module`` with these attributes).

    Attributes:
        in_levels: the bottom-up maps it reads, fine to coarse (``["c2", ..., "c5"]``); the
            bottom-up pathway is built up to the coarsest of them.
        levels: the maps it returns, fine to coarse (``["p2", ..., "p6"]``).
        out_channels: channels of each returned map.
        strides: the stride of each returned map in input pixels.
    """

    in_levels: list[str]
    levels: list[str]
    out_channels: dict[str, int]
    strides: dict[str, int]

    def __call__(self, bottom_up: dict[str, Tensor]) -> dict[str, Tensor]: ...


NECK_FACTS = ("in_levels", "levels", "out_channels", "strides")


class FeaturePyramid(nn.Module):
    """Top-down pathway with lateral connections (Fig. 3 of the paper).

    Args:
        in_channels: channels of each bottom-up map, ``{"c2": 256, ..., "c5": 2048}``.
        out_channels: d, the same for every level (256 in the paper).
        top_down: merge the upsampled coarser map into each level.
        lateral: project every C_k with a 1x1 conv (else only the coarsest).
        p6: add P6 = stride-2 subsampling of P5.
    """

    def __init__(self, in_channels: dict[str, int], out_channels: int = 256, *,
                 top_down: bool = True, lateral: bool = True, p6: bool = True):
        super().__init__()
        if not (top_down or lateral):
            raise ConfigError("model.neck: a pyramid needs the top-down pathway or the lateral connections "
                              "(top_down or lateral true)")
        self.top_down = top_down
        self.p6 = p6
        self.in_levels = sorted(in_channels, key=lambda name: int(name[1:]))  # fine -> coarse
        coarsest = self.in_levels[-1]
        projected = self.in_levels if lateral else [coarsest]
        self.lateral = nn.ModuleDict(
            {_p(c): nn.Conv2d(in_channels[c], out_channels, 1) for c in projected}
        )
        self.output = nn.ModuleDict(
            {_p(c): nn.Conv2d(out_channels, out_channels, 3, padding=1) for c in self.in_levels}
        )
        for conv in [*self.lateral.values(), *self.output.values()]:
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)
        self.levels = [_p(c) for c in self.in_levels] + ([_next(_p(coarsest))] if p6 else [])
        self.out_channels = {level: out_channels for level in self.levels}
        self.strides = {level: 2 ** int(level[1:]) for level in self.levels}

    def forward(self, bottom_up: dict[str, Tensor]) -> dict[str, Tensor]:
        """{"c2".."c5"} -> {"p2": (N, d, H2, W2), ..., "p6": (N, d, H6, W6)}."""
        merged: dict[str, Tensor] = {}
        previous: Tensor | None = None
        for c in reversed(self.in_levels):  # coarse -> fine
            level = _p(c)
            lateral = self.lateral[level](bottom_up[c]) if level in self.lateral else None
            if previous is None or not self.top_down:
                current = lateral
            else:
                # Upsample to the lateral's size, not by exactly 2, so odd sizes line up.
                upsampled = F.interpolate(previous, size=bottom_up[c].shape[-2:], mode="nearest")
                current = upsampled if lateral is None else lateral + upsampled
            merged[level] = current
            previous = current
        outputs = {_p(c): self.output[_p(c)](merged[_p(c)]) for c in self.in_levels}
        if self.p6:
            coarsest = _p(self.in_levels[-1])
            outputs[_next(coarsest)] = F.max_pool2d(outputs[coarsest], kernel_size=1, stride=2)
        return outputs


class SingleLevel(nn.Module):
    """The single-scale baselines (ablations a, b): one bottom-up map, passed through."""

    def __init__(self, in_channels: dict[str, int], level: str):
        super().__init__()
        self.in_levels = [level]
        self.levels = [level]
        self.out_channels = {level: in_channels[level]}
        self.strides = {level: 2 ** int(level[1:])}

    def forward(self, bottom_up: dict[str, Tensor]) -> dict[str, Tensor]:
        return {self.levels[0]: bottom_up[self.levels[0]]}


def _p(c_level: str) -> str:
    return "p" + c_level[1:]


def _next(level: str) -> str:
    return level[0] + str(int(level[1:]) + 1)


def build_neck(cfg: NeckConfig, in_channels: dict[str, int]) -> FeaturePyramid | SingleLevel:
    """The neck ``cfg`` describes, on bottom-up maps of ``in_channels`` (``{"c2": 256, ...}``)."""
    match cfg.kind:
        case "fpn":
            return FeaturePyramid(
                in_channels, cfg.channels, top_down=cfg.top_down, lateral=cfg.lateral, p6=cfg.p6
            )
        case "single_scale":
            return SingleLevel(in_channels, cfg.single_level)
    raise ValueError(f"unknown neck kind {cfg.kind!r}")
