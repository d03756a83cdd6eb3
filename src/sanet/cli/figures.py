"""`sanet explain`, `sanet figure5` and `sanet sweep`: the paper's Fig. 6, Fig. 5 and Fig. 4."""

from __future__ import annotations

import argparse
from pathlib import Path

from sanet._files import ensure_writable_dir, refuse_foreign_files
from sanet.cli.common import (
    add_data_options,
    add_overrides,
    add_overwrite,
    add_protocol_args,
    parse_data_options,
    parse_floats,
    protocol_from_args,
)
from sanet.errors import UsageError
from sanet.rundir import RunDir


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

    p = sub.add_parser("sweep", help="train an α/β grid of loss weights, draw mIoU (Fig. 4)")
    p.add_argument("config", nargs="?", help="training recipe YAML (default: the demo recipe)")
    p.add_argument("--alphas", default="0.2,0.4,0.6,0.8,1.0", help="L_cat weights α")
    p.add_argument("--betas", default="0.2,0.4,0.6,0.8,1.0", help="L_dense weights β")
    p.add_argument("--out", type=Path, required=True, help="runs, sweep.json and fig4.png")
    add_overrides(p, "config overrides applied to every run, e.g. --set train.epochs=4")
    p.set_defaults(func=cmd_sweep)


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


# ---------------------------------------------------------------------------------------------
# sanet sweep (Fig. 4)
# ---------------------------------------------------------------------------------------------


def cmd_sweep(args: argparse.Namespace) -> int:
    from rich.console import Console

    from sanet.cli.views import TrainingView
    from sanet.config import load_config, recipe_path
    from sanet.experiments.sweep import sweep_foreign_files, sweep_loss_weights

    alphas = parse_floats(args.alphas, "--alphas")
    betas = parse_floats(args.betas, "--betas")
    if not alphas or not betas:
        raise UsageError("--alphas and --betas need at least one value each, e.g. 0.2,0.4.")
    if args.config is None:
        args.config = recipe_path("demo")
    load_config(args.config, args.overrides)  # fail on a bad recipe before the first run
    ensure_writable_dir(args.out, "--out")
    found = sweep_foreign_files(args.out)
    refuse_foreign_files(
        args.out, found, "--out", "sanet sweep", "alpha*_beta*/, sweep.json, fig4.png"
    )

    view = TrainingView()

    def train_one(alpha: float, beta: float, run_dir: Path) -> float:
        from sanet.training.trainer import Trainer

        overrides = [*args.overrides, f"loss.alpha={alpha}", f"loss.beta={beta}"]
        cfg = load_config(args.config, overrides)
        resume = RunDir(run_dir).has_checkpoint()  # an interrupted cell resumes
        return float(Trainer(cfg, run_dir, resume=resume, callbacks=view).fit()["best_mIoU"])

    grid = sweep_loss_weights(alphas, betas, train_one, args.out)
    i, j = divmod(int(grid.argmax()), grid.shape[1])
    Console().print(
        f"Best mIoU {grid[i, j]:.4f} at α={alphas[i]:g}, β={betas[j]:g}. "
        f"Wrote {args.out / 'fig4.png'} and {args.out / 'sweep.json'}."
    )
    return 0
