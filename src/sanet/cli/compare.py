"""``sanet compare`` and ``sanet sweep``: flags → :func:`sanet.api.experiments.compare` /
:func:`sanet.api.experiments.sweep` → the Table 3 comparison and Fig. 4's grid, printed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sanet.cli.common import add_overrides, parse_floats


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
    from sanet.api.experiments import compare
    from sanet.errors import ComparisonInterrupted
    from sanet.training.runtime import exit_status

    try:
        result = compare(
            args.config,
            args.models,
            args.seeds,
            out=args.out,
            overrides=args.overrides,
            epochs=args.epochs,
            max_steps=args.max_steps,
            seed_start=args.seed_start,
            progress=True,
        )
    except ComparisonInterrupted as err:  # one line; the runs are kept (docs/reliability.md)
        print(f"\nsanet compare: {err}", file=sys.stderr)
        return exit_status(err.signal)
    _print_tables(result.payload)
    print(f"Wrote {result.report} and {result.figure}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from rich.console import Console

    from sanet.api.experiments import sweep

    alphas = parse_floats(args.alphas, "--alphas")
    betas = parse_floats(args.betas, "--betas")
    result = sweep(
        args.config, alphas, betas, out=args.out, overrides=args.overrides, progress=True
    )
    alpha, beta, miou = result.best
    Console().print(
        f"Best mIoU {miou:.4f} at α={alpha:g}, β={beta:g}. "
        f"Wrote {result.figure} and {result.report}."
    )
    return 0


def _print_tables(payload: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    models, first = payload["models"], payload["models"][0]
    table = Table(title=f"val mIoU of the final weights, seeds {payload['seeds']}")
    for col in (
        "model",
        "n",
        "mIoU mean ± std",
        "per seed",
        f"Δ vs {first} [95% CI]",
        "p",
        "s / run",
    ):
        table.add_column(col, justify="left" if col in ("model", "per seed") else "right")
    for model in models:
        s, d = payload["per_model"][model], payload["paired"].get(model)
        diff, p = "—", "—"
        if d is not None:
            ci = d["ci95"]
            diff = f"{d['mean']:+.4f}" + (f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "")
            p = f"{d['p_value']:.3f}" if d["p_value"] is not None else "—"
        spread = f" ± {s['mIoU_std']:.4f}" if s["n"] > 1 else " (one seed: no spread)"
        table.add_row(
            model,
            str(s["n"]),
            f"{s['mIoU_mean']:.4f}{spread}",
            " ".join(f"{v:.3f}" for v in s["mIoU"]),
            diff,
            p,
            f"{s['seconds_mean']:.0f}",
        )
    per_class = Table(title="per-class IoU, mean over seeds")
    per_class.add_column("class")
    for model in models:
        per_class.add_column(model, justify="right")
    for k, name in enumerate(payload["class_names"]):
        values = [payload["per_model"][m]["IoU_mean"][k] for m in models]
        per_class.add_row(name, *("—" if v is None else f"{v:.4f}" for v in values))
    console = Console()
    console.print(table)
    console.print(per_class)
