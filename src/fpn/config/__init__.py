"""Typed configuration (docs/paper.md for every default), in four rooms and one comparison:

- ``schema``: the dataclasses, ``Config`` and its parts, and ``to_dict``;
- ``read_only``: the read-only twins a built model keeps (``frozen``, ``thawed``);
- ``overrides``: values checked against the schema and merged (``merge``, ``from_dict``), renamed
  fields, ``key=value`` overrides and the sections they may name;
- ``files``: YAML load and save, the ``base:`` chain, the presets in ``fpn/configs/``;
- ``diff``: where two configs differ, field by field.

Import from the module that holds a name (``from fpn.config.schema import Config``); this file
re-exports nothing.
"""
