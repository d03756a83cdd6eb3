"""``sanet train`` and ``sanet demo``: flags → :func:`sanet.api.training.train` /
:func:`sanet.api.training.demo` → printed results."""

from __future__ import annotations

import argparse
import json
import sys

from sanet.cli.common import add_overrides, add_overwrite, call
from sanet.config import DEMO_RECIPES


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``train`` and ``demo``."""
    p = sub.add_parser("train", help="train a model from a YAML recipe (torchrun for many GPUs)")
    p.add_argument("config", help="YAML recipe, e.g. configs/sanet_r101s_context.yaml")
    add_overrides(p)
    p.add_argument("--out", default=None, help="run directory (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt")
    p.set_defaults(func=_train)
    d = sub.add_parser("demo", help="train and evaluate a small SANet on synthetic scenes (CPU)")
    d.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    add_overrides(d)
    add_overwrite(d, "a run already in --out (the demo starts fresh)")
    d.add_argument(
        "--recipe",
        default="demo",
        choices=DEMO_RECIPES,
        help="demo: SANet on an ImageNet-pretrained EfficientNet-Lite0 (default); demo_scratch: "
        "resnet18d from random weights",
    )
    d.set_defaults(func=_demo)


def _train(args: argparse.Namespace) -> int:
    from sanet.api import train
    from sanet.training.runtime import exit_status

    result = call(train, args, progress=True)  # a signal or a NaN loss: cli/__init__.py
    if result.rank == 0:
        best = result.best_miou
        shown = f"{best:.4f}" if best is not None else "n/a (no validation ran)"
        steps = f"{result.steps} step{'' if result.steps == 1 else 's'}"
        print(f"best val mIoU {shown} after {steps}; run: {result.run_dir}")
    if result.stopped_by:  # after the last step: the run is complete, nothing to resume
        print(
            f"Stopped by {result.stopped_by} after the last step; the run finished and is "
            "saved (nothing to resume).",
            file=sys.stderr,
        )
        return exit_status(result.stopped_by)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from sanet.api.training import demo

    result = call(demo, args, progress=True)
    summary = result.summary
    print(json.dumps({k: summary[k] for k in ("val_mIoU", "val_pixAcc", "seconds", "run_dir")}))
    print(
        f"demo: {summary['seconds']:.0f} s in all, on {summary['threads']} "
        f"thread{'s' if summary['threads'] != 1 else ''}, CPU kernels {summary['kernel_family']}"
    )
    print(
        f"demo: final val mIoU {result.miou:.4f} (synthetic scenes, {summary['model']}); "
        f"see {args.out}/"
    )
    return 0
