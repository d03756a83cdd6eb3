"""The ``sanet`` command line: thin subcommands that parse arguments and call the library.

Each command group registers its subcommands from its own module in this package
(``train.py``, ``data.py``, ``eval.py``, ``figures.py``, ``deploy.py``) with ``add_parsers``;
helpers they share are in ``common.py``. This file only assembles them and maps errors a user can fix to a
one-line message. Nothing outside ``sanet/cli/`` imports this package.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from sanet import __version__
from sanet.cli import data, deploy, eval, figures, train

# Modules that contribute subcommands; each defines ``add_parsers(subparsers)`` and sets
# ``func`` on its parsers via ``set_defaults(func=...)``. A new command group is one more
# module here (docs/architecture.md).
COMMAND_MODULES = (train, data, eval, figures, deploy)


def build_parser() -> argparse.ArgumentParser:
    """The ``sanet`` parser with every command group's subcommands."""
    parser = argparse.ArgumentParser(
        prog="sanet", description="Squeeze-and-Attention Networks for semantic segmentation."
    )
    parser.add_argument("--version", action="version", version=f"sanet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``sanet`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s"
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as err:
        # Errors a user can fix: one clear line, no traceback (use -v for one).
        if args.verbose:
            raise
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"sanet {args.command}: error: {msg}", file=sys.stderr)
        return 2
