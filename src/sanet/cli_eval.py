"""`sanet` subcommands for this area (see cli.py)."""

from __future__ import annotations

import argparse


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register this area's subcommands on the `sanet` parser."""
