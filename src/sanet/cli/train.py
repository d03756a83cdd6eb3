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
    from sanet._files import ensure_writable_dir
    from sanet.cli.views import TrainingView
    from sanet.config import load_config
    from sanet.training.trainer import NonFiniteLossError, Trainer, TrainingInterrupted

    cfg = load_config(args.config, args.overrides)
    out = Path(args.out or Path("runs") / Path(args.config).stem)
    if not args.resume and RunDir(out).has_checkpoint():
        raise FileExistsError(
            f"{out} already holds a run (checkpoints/last.pt). Pass --resume to continue it, "
            "or --out NEW_DIR to start another; nothing was overwritten."
        )
    ensure_writable_dir(out, "--out")
    trainer = Trainer(cfg, out, resume=args.resume, callbacks=TrainingView())
    if trainer.state.global_step >= trainer.total_steps and trainer.dist.is_main:
        print(
            f"{out} finished its {trainer.total_steps} steps already; to train longer, resume "
            "with a larger train.epochs (--set train.epochs=N).",
            file=sys.stderr,
        )
    try:
        summary = trainer.fit()
    except TrainingInterrupted as err:
        print(f"\n{err}", file=sys.stderr)
        return 130
    except NonFiniteLossError as err:
        print(f"\nsanet train: error: {err}", file=sys.stderr)
        return 3
    if trainer.dist.is_main:
        best = summary["best_mIoU"]
        shown = f"{best:.4f}" if best >= 0 else "n/a (no validation ran)"
        print(f"best val mIoU {shown} after {summary['steps']} steps; run: {summary['run_dir']}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from sanet._files import ensure_writable_dir
    from sanet.cli.views import TrainingView
    from sanet.training.demo import run_demo

    ensure_writable_dir(args.out, "--out")
    summary = run_demo(Path(args.out), args.overrides, callbacks=TrainingView())
    print(json.dumps({k: summary[k] for k in ("val_mIoU", "val_pixAcc", "seconds", "run_dir")}))
    print(
        f"demo: final val mIoU {summary['val_mIoU']:.4f} (synthetic scenes, {summary['model']}); "
        f"see {args.out}/"
    )
    return 0
