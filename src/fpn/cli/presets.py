"""``fpn presets``: the config presets, one line each."""

from __future__ import annotations

import argparse

NAME = "presets"


def add_parser(sub) -> None:
    sub.add_parser(NAME, help="list the config presets")


def run(args: argparse.Namespace, progress: bool) -> None:
    from fpn.config.files import preset_descriptions

    width = max(map(len, descriptions := preset_descriptions()), default=0)
    print("\n".join(f"{name:<{width}}  {text}" for name, text in descriptions.items()))
