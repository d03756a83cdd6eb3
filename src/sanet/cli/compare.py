"""``sanet compare`` and ``sanet sweep``: flags → :func:`sanet.api.experiments.compare` /
:func:`sanet.api.experiments.sweep` → the Table 3 comparison and Fig. 4's grid, printed."""

from __future__ import annotations

import argparse
from pathlib import Path

from sanet.cli.common import add_overrides, call, parse_floats, show


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``compare`` and ``sweep``."""
    p = sub.add_parser(
        "compare",
        help="train models × seeds with one recipe; mean ± std, paired differences (Table 3)",
    )
    p.add_argument("config", help="YAML recipe (e.g. configs/demo.yaml) or an embedded one (demo)")
    p.add_argument(
        "--models",
        nargs="+",
        default=["sanet", "fcn", "sanet_se"],
        help="models to compare; differences are paired against the first",
    )
    p.add_argument("--seeds", type=int, default=3, help="number of seeds: 0..N-1 (default 3)")
    p.add_argument("--seed-start", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--epochs", type=int, help="shortcut for --set train.epochs=N")
    p.add_argument("--max-steps", type=int, help="shortcut for --set train.max_steps=N")
    add_overrides(p, help="config overrides applied to every run, e.g. --set train.lr=0.02")
    p.add_argument("--out", type=Path, required=True, help="runs/, compare.json, compare.png")
    p.set_defaults(func=_compare)

    p = sub.add_parser("sweep", help="train an α/β grid of loss weights, draw mIoU (Fig. 4)")
    p.add_argument("config", nargs="?", help="training recipe YAML (default: the demo recipe)")
    p.add_argument("--alphas", default="0.2,0.4,0.6,0.8,1.0", help="L_cat weights α")
    p.add_argument("--betas", default="0.2,0.4,0.6,0.8,1.0", help="L_dense weights β")
    p.add_argument("--out", type=Path, required=True, help="runs, sweep.json and fig4.png")
    add_overrides(p, "config overrides applied to every run, e.g. --set train.epochs=4")
    p.set_defaults(func=cmd_sweep)


def _compare(args: argparse.Namespace) -> int:
    from sanet.api import compare
    from sanet.api.reports import compare_tables

    result = call(compare, args, recipe=args.config, progress=True)
    show(*compare_tables(result.payload), f"Wrote {result.report} and {result.figure}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from sanet.api import sweep

    alphas = parse_floats(args.alphas, "--alphas")
    betas = parse_floats(args.betas, "--betas")
    result = call(sweep, args, alphas=alphas, betas=betas, progress=True)
    alpha, beta, miou = result.best
    print(
        f"Best mIoU {miou:.4f} at α={alpha:g}, β={beta:g}. "
        f"Wrote {result.figure} and {result.report}."
    )
    return 0
