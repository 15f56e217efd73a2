"""The ``fpn`` command line: synth | train | eval | proposals | predict | browse | demo | reproduce |
convert | bench | export | serve | presets.

Each command is a module of this package (``fpn/cli/<command>.py``) holding its parser
(``add_parser``) beside its handler (``run``), which calls one job (``fpn.jobs``) and prints what it
did; ``COMMANDS`` lists them once, in the order ``fpn --help`` shows them. Options several commands
share live in ``options.py``. A new command is one module and one entry of ``COMMANDS``.

Config overrides have one syntax on every command that takes them: ``key=value`` items
(``train.max_iter=2``, ``model.input.test_scales=[600,800]``) anywhere after the command, before or
after the options, or as ``--set key=value``.

Every command exits non-zero on failure. A user error (``fpn.errors.UserError``: a missing file, a
bad config value, a corrupt dataset) prints one line naming the problem and exits 2 (``--debug``
shows its traceback too); any other exception is a bug and prints its traceback (exit 1).
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback

from fpn import __version__
from fpn.cli import (
    bench,
    browse,
    convert,
    demo,
    evaluate,
    export,
    predict,
    presets,
    pretrain,
    proposals,
    reproduce,
    serve,
    synth,
    train,
)
from fpn.config.overrides import is_override
from fpn.errors import UserError

# Every command, in the order ``fpn --help`` lists them: a module with NAME, add_parser(sub) and
# run(args, progress) -> exit code or None.
COMMANDS = [synth, train, pretrain, evaluate, proposals, predict, browse, demo, reproduce, convert, bench,
            export, serve, presets]


def build_parser() -> argparse.ArgumentParser:
    return _build()[0]


def _build() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser, and each command's own parser by name."""
    parser = argparse.ArgumentParser(prog="fpn", description="Feature Pyramid Networks for object detection.")
    parser.add_argument("--version", action="version", version=f"fpn {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser, dict(sub.choices)


# ---------------------------------------------------------------------------------------------
# overrides: one syntax on every command


def _takes_value(parser: argparse.ArgumentParser, token: str) -> bool:
    """Whether ``token`` is an option of ``parser`` that takes a value in the next token."""
    action = parser._option_string_actions.get(token)  # argparse keeps no public map of its options
    return action is not None and action.nargs != 0


def split_overrides(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[list[str], list[str]]:
    """(the arguments for argparse, the overrides in command-line order) of one command's arguments.

    An override is a ``key=value`` item under one of the config's sections
    (``fpn.config.overrides.SECTIONS``) anywhere (not the value of an option), or the value of ``--set``.
    """
    rest, overrides, i = [], [], 0
    while i < len(argv):
        token = argv[i]
        if token == "--set" and i + 1 < len(argv):
            overrides.append(argv[i + 1])
            i += 2
            continue
        if token.startswith("--set="):
            overrides.append(token.removeprefix("--set="))
        elif is_override(token):
            overrides.append(token)
        else:
            rest.append(token)
            if _takes_value(parser, token) and i + 1 < len(argv):
                rest.append(argv[i + 1])
                i += 1
        i += 1
    return rest, overrides


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line parsed, with every command's overrides in ``args.overrides`` (in order)."""
    parser, commands = _build()
    argv = list(sys.argv[1:] if argv is None else argv)
    at = next((i for i, token in enumerate(argv) if token in commands), None)
    if at is None or not any(action.dest == "overrides" for action in commands[argv[at]]._actions):
        return parser.parse_args(argv)
    rest, overrides = split_overrides(commands[argv[at]], argv[at + 1:])
    args = parser.parse_args([*argv[:at + 1], *rest])
    args.overrides = [*overrides, *args.overrides]  # argparse only saw items that are not overrides
    return args


# ---------------------------------------------------------------------------------------------
# running a command: a user error is one line, anything else a bug with its traceback


def run(args: argparse.Namespace) -> int:
    """Run the parsed command; 0 when it succeeded (a failure raises), or the exit code it returns
    (``fpn browse --check``: 1 when the dataset has problems)."""
    handlers = {command.NAME: command.run for command in COMMANDS}
    return handlers[args.command](args, not args.quiet) or 0


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("fpn").setLevel(logging.DEBUG if args.debug else logging.INFO)
    if args.command is None:
        build_parser().print_help()
        return 0
    try:
        return run(args)
    except KeyboardInterrupt as err:
        print(f"fpn {args.command}: interrupted{': ' + str(err) if str(err) else ''}", file=sys.stderr)
        return 130
    except UserError as err:
        if args.debug:
            raise
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"fpn {args.command}: error: {message}", file=sys.stderr)
        return 2
    except Exception as err:  # a bug: its traceback is what a report needs
        traceback.print_exc()
        print(f"fpn {args.command}: unexpected {type(err).__name__} (a bug in fpn, not in your input; "
              "please report it with the traceback above)", file=sys.stderr)
        return 1

