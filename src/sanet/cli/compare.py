"""``sanet compare``: train models × seeds under one recipe and print the Table 3 comparison."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sanet.cli.common import add_overrides
from sanet.errors import UsageError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``compare``."""
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


def _compare(args: argparse.Namespace) -> int:
    from sanet.cli.views import TrainingView
    from sanet.config import recipe_path
    from sanet.experiments.compare import ComparisonInterrupted, compare
    from sanet.training.runtime import exit_status

    if args.seeds < 1:
        raise UsageError(f"--seeds must be at least 1, got {args.seeds}.")
    overrides = list(args.overrides)
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    seeds = list(range(args.seed_start, args.seed_start + args.seeds))
    recipe = Path(args.config)
    if not recipe.is_file() and recipe.suffix == "" and len(recipe.parts) == 1:
        recipe = recipe_path(args.config)  # an embedded recipe by name, e.g. "demo"
    try:
        payload = compare(recipe, args.models, seeds, args.out, overrides, TrainingView())
    except ComparisonInterrupted as err:  # one line; the runs are kept (docs/reliability.md)
        print(f"\nsanet compare: {err}", file=sys.stderr)
        return exit_status(err.signal)
    _print_tables(payload)
    print(f"Wrote {args.out / 'compare.json'} and {args.out / 'compare.png'}")
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
