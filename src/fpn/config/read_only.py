"""Read-only copies of a config: what a built model keeps (``frozen``), and back (``thawed``).

A read-only twin is still an instance of its dataclass (for isinstance and typing), but assigning
or deleting a field raises, lists are tuples and mappings read-only; later changes to the config
it was made from do not reach it.
"""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Mapping
from typing import Any, TypeVar

from fpn.config.schema import to_dict

T = TypeVar("T")


class ReadOnly:
    """Base of the read-only twins ``frozen`` makes: assigning or deleting a field raises, and copies
    are the object itself (nothing in it can change)."""

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(
            f"cannot assign to field {name!r}: this config belongs to a built model and is read-only "
            "(the model was built from it); change a copy (fpn.config.read_only.thawed) and build a new "
            "model")

    def __delattr__(self, name: str) -> None:
        self.__setattr__(name, None)

    def __copy__(self):
        return self

    def __deepcopy__(self, memo: dict):
        return self

    def __reduce__(self):
        return frozen, (thawed(self),)


@functools.cache
def _read_only_class(cls: type) -> type:
    """``cls`` with ``ReadOnly``'s behaviour: still an instance of ``cls`` for isinstance and typing."""
    return type(f"ReadOnly{cls.__name__}", (ReadOnly, cls), {"__doc__": cls.__doc__, "__module__": __name__,
                                                               "__eq__": _equal_as_dicts, "__hash__": None})


def _equal_as_dicts(self, other: Any) -> bool:
    return dataclasses.is_dataclass(other) and to_dict(self) == to_dict(other)


def frozen(cfg: T) -> T:
    """A read-only deep copy of a config or part of one: every dataclass is a read-only twin of its
    class, lists are tuples and mappings read-only. Later changes to ``cfg`` do not reach it."""
    if isinstance(cfg, ReadOnly):
        return cfg
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        copy = object.__new__(_read_only_class(type(cfg)))
        for f in dataclasses.fields(cfg):
            object.__setattr__(copy, f.name, frozen(getattr(cfg, f.name)))
        return copy
    if isinstance(cfg, list | tuple):
        return tuple(frozen(v) for v in cfg)
    if isinstance(cfg, Mapping):
        return types.MappingProxyType({k: frozen(v) for k, v in cfg.items()})
    return cfg


def thawed(cfg: T) -> T:
    """An ordinary (mutable) deep copy of a config or part of one, frozen or not."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        cls = type(cfg).__mro__[2] if isinstance(cfg, ReadOnly) else type(cfg)  # ReadOnlyX -> ReadOnly -> X
        return cls(**{f.name: thawed(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)})
    if isinstance(cfg, list | tuple):
        return [thawed(v) for v in cfg]
    if isinstance(cfg, Mapping):
        return {k: thawed(v) for k, v in cfg.items()}
    return cfg
