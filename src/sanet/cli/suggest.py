"""``sanet suggest`` (docs/active-learning.md): flags → :func:`sanet.suggest` → printed picks."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sanet.cli.common import (
    add_overwrite,
    add_protocol_args,
    call,
    protocol_from_args,
    report_failed,
)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``suggest``."""
    p = sub.add_parser(
        "suggest", help="pick the next images to label: uncertain ones, unlike each other"
    )
    add_protocol_args(p)
    p.add_argument(
        "--pool",
        nargs="+",
        required=True,
        metavar="IMAGE",
        help="unlabelled images, folders, globs",
    )
    p.add_argument("--budget", type=int, required=True, help="how many images to pick")
    p.add_argument("--out", type=Path, required=True, help="the CSV file to write (next.csv)")
    p.add_argument(
        "--exclude",
        type=Path,
        help="a text file of images already labelled (path, file name or stem per line)",
    )
    p.add_argument(
        "--duplicate",
        type=float,
        default=0.05,
        help="near-duplicates: closer than this share of the median feature distance (0.05)",
    )
    add_overwrite(p, "the CSV file --out")
    p.set_defaults(func=cmd_suggest)


def cmd_suggest(args: argparse.Namespace) -> int:
    from sanet.api.suggest import suggest

    result = call(suggest, args, protocol=protocol_from_args(args), progress=True)
    print(f"Wrote {result.out}: {len(result.rows)} of {result.budget} images to label, in order")
    notes = [
        (result.overlap, "in the run's training set"),
        (result.excluded, "listed in --exclude"),
        (list(result.duplicates), "near-duplicates of a picked image"),
    ]
    for items, why in notes:
        if items:
            print(f"  left out {len(items)} pool images {why}", file=sys.stderr)
    # every pool file counts (not only the picked ones): "3 of 9 inputs failed"
    return report_failed(
        "suggest", result.failed, result.pool, "fix or convert these files and rerun"
    )
