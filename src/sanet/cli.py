"""The ``sanet`` command line: thin subcommands that parse arguments and call the library.

Each area registers its subcommands from its own module (``cli_*.py``) with ``add_parsers``;
this file only assembles them and maps errors a user can fix to a one-line message.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from sanet import __version__

# Modules that contribute subcommands; each defines ``add_parsers(subparsers)`` and sets
# ``func`` on its parsers via ``set_defaults(func=...)``.
_COMMAND_MODULES = ("sanet.cli_train", "sanet.cli_data", "sanet.cli_eval", "sanet.cli_figures")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="sanet", description="Squeeze-and-Attention Networks for semantic segmentation."
    )
    parser.add_argument("--version", action="version", version=f"sanet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
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


if __name__ == "__main__":  # `python -m sanet.cli` (also under torchrun)
    sys.exit(main())
