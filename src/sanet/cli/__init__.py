"""The ``sanet`` command line: thin subcommands that parse arguments and call the library.

Each command group registers its subcommands from its own module in this package
(``train.py``, ``data.py``, ``eval.py``, ``figures.py``, ``compare.py``, ``deploy.py``,
``bench.py``, ``trust.py``, ``suggest.py``) with
``add_parsers``; helpers they share are in ``common.py``. This file only assembles them and
applies the error rule of docs/reliability.md: a problem the user can fix is one line and exit 2,
a bug keeps its traceback. Nothing outside ``sanet/cli/`` imports this package.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator, Sequence

from sanet.cli import (
    bench,
    compare,
    data,
    deploy,
    eval,
    figures,
    suggest,
    train,
    trust,
    weights,
)
from sanet.errors import (
    Interrupted,
    NonFiniteLossError,
    TrainingInterrupted,
    flag_names,
    is_user_error,
    one_line,
)
from sanet.training.runtime import exit_status
from sanet.version import __version__

# Modules that contribute subcommands; each defines ``add_parsers(subparsers)`` and sets
# ``func`` on its parsers via ``set_defaults(func=...)``. A new command group is one more
# module here (docs/architecture.md).
COMMAND_MODULES = (train, data, eval, figures, compare, deploy, bench, trust, suggest, weights)


def build_parser() -> argparse.ArgumentParser:
    """The ``sanet`` parser with every command group's subcommands."""
    parser = argparse.ArgumentParser(
        prog="sanet", description="Squeeze-and-Attention Networks for semantic segmentation."
    )
    parser.add_argument("--version", action="version", version=f"sanet {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also the library's notes (INFO, DEBUG) and the traceback of errors",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``sanet`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with flag_names(flags_of(parser)), show_logs(args.verbose):
            return int(args.func(args) or 0)  # library messages name the flags typed here
    except KeyboardInterrupt:
        print(f"sanet {args.command}: interrupted", file=sys.stderr)
        return 130
    except Interrupted as err:  # stopped by a signal after saving: how to continue, 130/143
        # a training run's message is a whole sentence ("Stopped by SIGINT after step 3; ...")
        prefix = "" if isinstance(err, TrainingInterrupted) else f"sanet {args.command}: "
        print(f"\n{prefix}{err}", file=sys.stderr)
        return exit_status(err.signal)
    except NonFiniteLossError as err:  # a run that diverged: exit 3 (docs/reliability.md)
        print(f"\nsanet {args.command}: error: {err}", file=sys.stderr)
        return 3
    except Exception as err:
        # The rule (docs/reliability.md): a problem the user can fix is one line and exit 2;
        # anything else is a bug and keeps its traceback. -v shows the traceback of both.
        if args.verbose or not is_user_error(err):
            raise
        print(f"sanet {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2


@contextlib.contextmanager
def show_logs(verbose: bool) -> Iterator[None]:
    """Show the library's log records while a command runs: its notes (INFO; DEBUG too with
    ``-v``) on stdout beside the command's output, its warnings on stderr, so that an error
    stays the one line of stderr it is (docs/reliability.md)."""
    notes, warnings = logging.StreamHandler(sys.stdout), logging.StreamHandler(sys.stderr)
    notes.addFilter(lambda record: record.levelno < logging.WARNING)
    warnings.setLevel(logging.WARNING)
    for handler in (notes, warnings):
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root, ours = logging.getLogger(), logging.getLogger("sanet")
    level = ours.level
    ours.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.addHandler(notes)
    root.addHandler(warnings)
    try:
        yield
    finally:
        root.removeHandler(notes)
        root.removeHandler(warnings)
        ours.setLevel(level)


def flags_of(parser: argparse.ArgumentParser) -> dict[str, str]:
    """``{parameter: flag}`` of every option of every subcommand (``out`` → ``--out``,
    ``overrides`` → ``--set``): how a message of the library names what a user typed here."""
    flags: dict[str, str] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                for dest, flag in flags_of(sub).items():
                    flags.setdefault(dest, flag)
        elif action.option_strings:
            flags.setdefault(action.dest, max(action.option_strings, key=len))
    return flags
