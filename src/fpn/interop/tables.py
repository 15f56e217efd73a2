"""Key tables: the shared machinery of the converters (docs/interop.md, "How a converter works").

A converter is a list of regular-expression renames (source key -> our key), a few named tensor
transforms applied to our keys after renaming, and a list of source keys that carry no weights.
``convert_keys`` fails on a source key no rule places and on two source keys landing on one of
ours; ``check_exactly`` fails unless every tensor of ``FasterRCNN(cfg)`` is filled once, with
the shape it expects. Every failure is one line naming the first offending key.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from fpn.config.schema import ModelConfig
from fpn.errors import ConversionError
from fpn.model.backbone import BLOCKS_PER_STAGE
from fpn.model.detector import FasterRCNN

Rename = tuple[str, str | Callable[[re.Match], str]]
Transform = Callable[[Tensor], Tensor]


def prefixed(renames: list[Rename], source: str, target: str) -> list[Rename]:
    """The same renames, for keys under ``source`` moved under ``target``."""
    def with_target(repl: str | Callable[[re.Match], str]) -> str | Callable[[re.Match], str]:
        return target + repl if isinstance(repl, str) else (lambda m: target + repl(m))

    return [("^" + re.escape(source) + pattern[1:], with_target(repl)) for pattern, repl in renames]


def _shape(tensor: Tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)


def convert_keys(state_dict: Mapping[str, Tensor], renames: list[Rename], *, what: str,
                 ignore: tuple[str, ...] = (), transforms: Mapping[str, Transform] | None = None,
                 ) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Rename every key by the first matching rule, then apply ``transforms`` (by our key).

    Args:
        state_dict: the source tensors, in the source library's names.
        renames: (pattern, replacement) pairs tried in order; the first match renames the key.
        ignore: patterns of source keys that hold no weights (counters, cached anchors).
        transforms: our key -> a function of the source tensor (row permutations, padding).
    Returns:
        (our key -> tensor, our key -> the source key it came from).
    """
    transforms = transforms or {}
    converted: dict[str, Tensor] = {}
    source_of: dict[str, str] = {}
    for key, tensor in state_dict.items():
        if any(re.search(pattern, key) for pattern in ignore):
            continue
        for pattern, repl in renames:
            new_key, count = re.subn(pattern, repl, key, count=1)
            if count:
                break
        else:
            raise ConversionError(f"{what}: {key} {_shape(tensor)} has no place in our model "
                                  "(a checkpoint of another architecture?)")
        if new_key in converted:
            raise ConversionError(f"{what}: {source_of[new_key]} and {key} both map to {new_key}")
        converted[new_key] = transforms[new_key](tensor) if new_key in transforms else tensor
        source_of[new_key] = key
    return converted, source_of


def expected_shapes(cfg: ModelConfig) -> dict[str, torch.Size]:
    """The shape of every tensor in ``FasterRCNN(cfg).state_dict()``, built without memory."""
    with torch.device("meta"):
        model = FasterRCNN(cfg)
    return {key: value.shape for key, value in model.state_dict().items()}


def check_exactly(cfg: ModelConfig, converted: Mapping[str, Tensor], source_of: Mapping[str, str],
                  *, what: str) -> None:
    """Every tensor of ``FasterRCNN(cfg)`` filled exactly once with the shape it expects."""
    expected = expected_shapes(cfg)
    for key, tensor in converted.items():
        source = source_of.get(key, key)
        named = key if source == key else f"{source} (our {key})"
        if key not in expected:
            raise ConversionError(f"{what}: {named} {_shape(tensor)} has no place in our model "
                                  "(a checkpoint of another architecture?)")
        if tensor.shape != expected[key]:
            raise ConversionError(f"{what}: {named} has shape {_shape(tensor)} in the checkpoint, "
                                  f"{tuple(expected[key])} in our model")
    missing = [key for key in expected if key not in converted]
    if missing:
        raise ConversionError(f"{what}: no tensor for our {missing[0]} {tuple(expected[missing[0]])} "
                              f"({len(missing)} missing; a checkpoint of another architecture?)")


def resnet_depth(blocks_in_res4: int, bottleneck: bool, *, what: str) -> int:
    """The ResNet depth with this many blocks in res4 (6: ResNet-34/50, 23: ResNet-101)."""
    for depth, blocks in BLOCKS_PER_STAGE.items():
        if blocks[2] == blocks_in_res4 and (depth >= 50) == bottleneck:
            return depth
    raise ConversionError(f"{what}: res4 has {blocks_in_res4} {'bottleneck' if bottleneck else 'basic'} "
                          "blocks, which is no ResNet-18/34/50/101")


def count_blocks(keys: list[str], pattern: str) -> int:
    """1 + the largest block index captured by ``pattern``'s first group (0 if none)."""
    indices = [int(m[1]) for key in keys if (m := re.search(pattern, key))]
    return max(indices) + 1 if indices else 0


def background_first(rows: Tensor) -> Tensor:
    """(K + 1, ...) classifier rows with background last -> background first (docs/interop.md §3)."""
    return torch.cat([rows[-1:], rows[:-1]])


def with_background_deltas(rows: Tensor) -> Tensor:
    """(4K, ...) class-specific box-delta rows -> (4(K + 1), ...) with zeros for background first."""
    return torch.cat([rows.new_zeros((4, *rows.shape[1:])), rows])
