"""Values into a config: checked against the schema, merged, and ``key=value`` overrides.

Every value that reaches a config (a YAML file, an override, ``FasterRCNN.with_changes``) goes
through ``merge``, which names the dotted field of a bad value or an unknown key. The sections an
override may start with are ``Config``'s fields (``SECTIONS``), so a new section needs no edit here
or in the command line.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any, Literal

import yaml

from fpn.config.read_only import ReadOnly, thawed
from fpn.config.schema import Config
from fpn.errors import ConfigError


def _check_value(value: Any, annotation: Any, where: str) -> Any:
    """Coerce ``value`` to ``annotation`` where that is lossless, else raise ConfigError."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(annotation, value, where)
    if annotation is Any:
        return value
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_value(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_check_value(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _check_value(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if annotation is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if annotation is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if annotation in (int, str) and not isinstance(value, annotation):
        raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r}")
    if isinstance(value, bool) and annotation is int:
        raise ConfigError(f"{where}: expected int, got {value!r}")
    return value


def from_dict(cls: type, values: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass ``cls`` from a (partial) mapping; missing fields keep their defaults."""
    return merge(cls(), values, where)


def merge(cfg: Any, values: dict[str, Any], where: str = "config") -> Any:
    """A copy of dataclass ``cfg`` with the (nested, partial) ``values`` applied.

    Nested dataclasses merge field by field; any other field (a list, a mapping such as the
    anchor sizes per level) is replaced whole.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {values!r}")
    if isinstance(cfg, ReadOnly):
        cfg = thawed(cfg)
    hints = typing.get_type_hints(type(cfg))
    names = {f.name for f in dataclasses.fields(cfg)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(names)}")
    changes = {}
    for key, value in values.items():
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current):
            changes[key] = merge(current, value, f"{where}.{key}")
        else:
            changes[key] = _check_value(value, hints[key], f"{where}.{key}")
    return dataclasses.replace(cfg, **changes)


# Fields renamed since older config files were written: (section, old name) -> (new name, old value
# -> new value). train.amp was CUDA-only: "bf16" becomes "auto", which is bf16 on CUDA as before and
# on CPUs that compute bf16 natively, and fp32 elsewhere, as before.
RENAMED_FIELDS: dict[tuple[str, str], tuple[str, dict[Any, Any]]] = {
    ("train", "amp"): ("precision", {"off": "fp32", False: "fp32", "bf16": "auto", "fp16": "fp16"}),
}


def upgrade_renamed(values: dict[str, Any], where: str) -> dict[str, Any]:
    """``values`` (a config mapping) with renamed fields under their new names (``RENAMED_FIELDS``)."""
    if not isinstance(values, dict):
        return values
    values = dict(values)
    for (section, old), (new, mapping) in RENAMED_FIELDS.items():
        part = values.get(section)
        if not isinstance(part, dict) or old not in part:
            continue
        part = dict(part)
        value = part.pop(old)
        if value not in mapping:
            raise ConfigError(f"{where}: {section}.{old}: {value!r} is not one of {list(mapping)}")
        if new in part and part[new] != mapping[value]:
            raise ConfigError(f"{where}: {section}.{old} (the old name of {section}.{new}) and "
                              f"{section}.{new} disagree")
        part.setdefault(new, mapping[value])
        values[section] = part
    return values


# The sections of a config (``Config``'s fields: model, data, train, pretrain), and what an override
# looks like on a command line: a dotted key under one of them, "=", a YAML value. Whether the rest of
# the key names a field is checked where every value is checked: ``merge``, which names the bad field.
SECTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Config))
OVERRIDE = re.compile(rf"^({'|'.join(map(re.escape, SECTIONS))})(\.[A-Za-z_]\w*)+=")


def is_override(token: str) -> bool:
    """Whether a command-line token is a ``key=value`` override (``train.base_lr=0.01``)."""
    return OVERRIDE.match(token) is not None


def nested(dotted: dict[str, Any]) -> dict[str, Any]:
    """``{"train.base_lr": 0.01, "train.max_iter": 2}`` -> ``{"train": {"base_lr": 0.01, "max_iter": 2}}``."""
    tree: dict[str, Any] = {}
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["model.neck.channels=128", "train.base_lr=0.01"]`` -> a nested mapping.

    Values are parsed as YAML scalars or flow collections (``[1, 2]``, ``{p2: [32]}``).
    """
    values: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value")
        values[key.strip()] = yaml.safe_load(raw)
    return upgrade_renamed(nested(values), "overrides")
