"""``sanet train`` and ``sanet demo``: thin wrappers over :mod:`sanet.training`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sanet.cli.common import add_overrides
from sanet.rundir import RunDir


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
    d.set_defaults(func=_demo)


def _train(args: argparse.Namespace) -> int:
    from sanet.config import load_config
    from sanet.training.trainer import NonFiniteLossError, Trainer, TrainingInterrupted

    cfg = load_config(args.config, args.overrides)
    out = Path(args.out or Path("runs") / Path(args.config).stem)
    if not args.resume and RunDir(out).has_checkpoint():
        raise FileExistsError(
            f"{out} already holds a run (checkpoints/last.pt). Pass --resume to continue it, "
            "or --out NEW_DIR to start another; nothing was overwritten."
        )
    trainer = Trainer(cfg, out, resume=args.resume)
    try:
        summary = trainer.fit()
    except TrainingInterrupted as err:
        print(f"\n{err}", file=sys.stderr)
        return 130
    except NonFiniteLossError as err:
        print(f"\nsanet train: error: {err}", file=sys.stderr)
        return 3
    if trainer.dist.is_main:
        print(f"best val mIoU {summary['best_mIoU']:.4f} after {summary['steps']} steps; "
              f"run: {summary['run_dir']}")  # fmt: skip
    return 0


def _demo(args: argparse.Namespace) -> int:
    from sanet.training.demo import run_demo

    summary = run_demo(Path(args.out), args.overrides)
    print(json.dumps({k: summary[k] for k in ("val_mIoU", "val_pixAcc", "seconds", "run_dir")}))
    print(f"demo: final val mIoU {summary['val_mIoU']:.4f} (synthetic scenes, {summary['model']}); "
          f"see {args.out}/")  # fmt: skip
    return 0
