"""What several commands share: the help text of each shared option, written once, and the options
themselves (overrides, a checkpoint, precision and backend)."""

from __future__ import annotations

import argparse
from pathlib import Path

# The help text of each option several commands share, written once.
HELP = {
    "checkpoint": "run directory, checkpoint directory or weights file",
    "overrides": "config overrides, anywhere after the command (before or after options), e.g. {}",
    "set": "the same as a key=value item (repeatable)",
    "device": "cpu, cuda, cuda:N or auto (default: cuda when present)",
    "config": "a preset name (fpn presets lists them) or a YAML file (default: demo)",
    "colour_by": "box colours: one per class (default), or per pyramid level P2..P5 (Eq. 1)",
    "precision": "what the convolutions and fc layers compute in (default %(default)s; auto: bf16 or int8 "
                 "where this CPU computes them natively and their accuracy gate passed, else fp32)",
    "calibration": "images or folders int8 calibrates on (repeatable; default: the run's training images"
                   "{})",
    "backend": "what runs the model: pytorch (default) or openvino (fp32 or int8 on the CPU, converted at "
               "start; needs pip install 'fpn[openvino]')",
}


def add_overrides(p: argparse.ArgumentParser, example: str) -> None:
    p.add_argument("overrides", nargs="*", metavar="key=value", help=HELP["overrides"].format(example))
    p.add_argument("--set", dest="set_overrides", action="append", default=[], metavar="key=value",
                   help=HELP["set"])


def add_checkpoint(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=Path, help=HELP["checkpoint"])


def add_precision(p: argparse.ArgumentParser, *, default: str = "auto", fallback: str = "") -> None:
    """--precision and --calibration (``fpn.model.precision``); ``fallback``: what int8 calibrates on
    when the run's training images are not on disk."""
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "int8"], default=default,
                   help=HELP["precision"])
    p.add_argument("--calibration", action="append", type=Path, default=None, metavar="PATH",
                   help=HELP["calibration"].format(fallback))
    p.add_argument("--backend", choices=["pytorch", "openvino"], default="pytorch", help=HELP["backend"])


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
