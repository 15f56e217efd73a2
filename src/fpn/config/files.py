"""Config files: YAML load and save, the ``base:`` chain, and the presets in ``fpn/configs/``."""

from __future__ import annotations

from pathlib import Path

import yaml

from fpn.config.overrides import merge, parse_overrides, upgrade_renamed
from fpn.config.schema import Config, to_dict
from fpn.errors import ConfigError

PRESET_DIR = Path(__file__).parent.parent / "configs"

def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """A full Config: defaults, then a YAML file (a path or a preset name), then overrides.

    A YAML file may start with ``base: <preset or path>`` to extend another file.
    """
    cfg = Config()
    if path is not None:
        for file, values in _read_yaml_chain(path):
            cfg = merge(cfg, values, str(file))
    if overrides:
        cfg = merge(cfg, parse_overrides(overrides), "overrides")
    return cfg


def resolve_preset(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.is_file():
        return path
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    if preset.is_file():
        return preset
    raise ConfigError(f"{name_or_path}: no such config file or preset (presets: {list_presets()})")


def _read_yaml_chain(name_or_path: str | Path, depth: int = 0) -> list[tuple[Path, dict]]:
    """The files of a ``base:`` chain, most basic first, each with its values."""
    path = resolve_preset(name_or_path)
    if depth > 8:
        raise ConfigError(f"{path}: 'base:' chain is too deep (a cycle?)")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    base = values.pop("base", None)
    chain = [] if base is None else _read_yaml_chain(base, depth + 1)
    return [*chain, (path, upgrade_renamed(values, str(path)))]


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_descriptions() -> dict[str, str]:
    """Each preset's name -> its one-line description: the first ``#`` comment of its YAML."""
    descriptions = {}
    for name in list_presets():
        lines = (PRESET_DIR / f"{name}.yaml").read_text().splitlines()
        first = next((line for line in lines if line.startswith("#")), "#")
        descriptions[name] = first.lstrip("#").strip()
    return descriptions
