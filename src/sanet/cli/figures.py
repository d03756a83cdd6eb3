"""`sanet explain` and `sanet figure5`: the paper's Fig. 6 and Fig. 5."""

from __future__ import annotations

import argparse
from pathlib import Path

from sanet.cli.common import (
    add_data_options,
    add_overwrite,
    add_protocol_args,
    parse_data_options,
    protocol_from_args,
)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register the figure subcommands on the `sanet` parser."""
    p = sub.add_parser("explain", help="SA attention maps of head 1 and 4 at a pixel (Fig. 6)")
    p.add_argument("--checkpoint", required=True, help="run dir, .pt or save_pretrained folder")
    p.add_argument("image", type=Path)
    p.add_argument("--point", required=True, metavar="X,Y", help="pixel column,row")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.png")
    add_overwrite(p, "--out if it exists")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if any)")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser(
        "figure5", help="rows of input / ground truth / baseline / SANet panels (Fig. 5)"
    )
    add_protocol_args(p)
    p.add_argument("--baseline", required=True, help="the baseline (FCN) checkpoint")
    p.add_argument("--data", required=True, metavar="KIND:PATH")
    add_data_options(p)
    p.add_argument("--split", default="val")
    p.add_argument("--indices", default="0,1,2,3", help="comma-separated image indices")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.png")
    add_overwrite(p, "--out if it exists")
    p.set_defaults(func=cmd_figure5)


# ---------------------------------------------------------------------------------------------
# sanet explain (Fig. 6) and sanet figure5
# ---------------------------------------------------------------------------------------------


def cmd_explain(args: argparse.Namespace) -> int:
    from sanet.api.figures import explain

    out = explain(
        args.checkpoint,
        args.image,
        args.point,
        args.out,
        device=args.device,
        overwrite=args.overwrite,
    )
    print(f"Wrote {out}")
    return 0


def cmd_figure5(args: argparse.Namespace) -> int:
    from sanet.api.figures import figure5

    out = figure5(
        args.checkpoint,
        args.baseline,
        args.data,
        args.out,
        split=args.split,
        data_options=parse_data_options(args.data_options),
        indices=args.indices,
        protocol=protocol_from_args(args),
        device=args.device,
        overwrite=args.overwrite,
    )
    print(f"Wrote {out}")
    return 0
