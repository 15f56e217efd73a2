"""Where two configs differ, field by field: the one comparison of configs in fpn.

A resumed run compares the config asked for with the run's own (``fpn.engine.run_folder``: which
fields may change), and the reproduction study compares a finished run's recorded config with the
one the code makes now (``fpn.reproduction.study``: which runs are stale). Both ask this module.
"""

from __future__ import annotations

from typing import Any

from fpn.config.schema import to_dict


def differences(old: Any, new: Any) -> dict[str, tuple[Any, Any]]:
    """Every field where ``new`` differs from ``old``: dotted name -> (old value, new value).

    ``old`` and ``new`` are configs or parts of one (frozen or not), or their ``to_dict`` mappings.
    Sections and mappings (the anchor sizes per level) are compared key by key, a key that only one
    side has counting as None on the other; lists are compared whole. Names come in ``old``'s
    order, then those only ``new`` has. Example: ``{"train.base_lr": (0.02, 0.01)}``.
    """
    return _differences(to_dict(old), to_dict(new), "")


def _differences(old: Any, new: Any, where: str) -> dict[str, tuple[Any, Any]]:
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return {} if old == new else {where.rstrip("."): (old, new)}
    found: dict[str, tuple[Any, Any]] = {}
    for key in [*old, *(key for key in new if key not in old)]:
        found.update(_differences(old.get(key), new.get(key), f"{where}{key}."))
    return found
