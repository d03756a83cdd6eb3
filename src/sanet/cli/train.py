"""``sanet train`` and ``sanet demo``: thin wrappers over :mod:`sanet.training`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sanet.cli.common import add_overrides
from sanet.errors import OutputExistsError
from sanet.rundir import RunDir

# what a run writes into its --out (for the message refusing a folder that holds other files)
RUN_FILES = "config.yaml, metrics.jsonl, checkpoints/, model/, plots/ and tensorboard/"


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
    from sanet._files import ensure_writable_dir, refuse_foreign_files
    from sanet.cli.views import TrainingView
    from sanet.config import load_config
    from sanet.training.runtime import exit_status
    from sanet.training.trainer import NonFiniteLossError, Trainer, TrainingInterrupted

    cfg = load_config(args.config, args.overrides)
    out = Path(args.out or Path("runs") / Path(args.config).stem)
    if not args.resume and RunDir(out).has_checkpoint():
        raise OutputExistsError(
            f"{out} already holds a run (checkpoints/last.pt). Pass --resume to continue it, "
            "or --out NEW_DIR to start another; nothing was overwritten."
        )
    ensure_writable_dir(out, "--out")
    if not args.resume:
        refuse_foreign_files(out, RunDir(out).clashing_files(), "--out", "sanet train", RUN_FILES)
    trainer = Trainer(cfg, out, resume=args.resume, callbacks=TrainingView())
    if trainer.state.global_step >= trainer.total_steps and trainer.dist.is_main:
        print(
            f"{out} finished its {_steps(trainer.total_steps)} already; to train longer, resume "
            f"with {_longer(cfg.train, trainer.steps_per_epoch)}.",
            file=sys.stderr,
        )
    try:
        summary = trainer.fit()
    except TrainingInterrupted as err:
        print(f"\n{err}", file=sys.stderr)
        return exit_status(err.signal)
    except NonFiniteLossError as err:
        print(f"\nsanet train: error: {err}", file=sys.stderr)
        return 3
    if trainer.dist.is_main:
        best = summary["best_mIoU"]
        shown = f"{best:.4f}" if best >= 0 else "n/a (no validation ran)"
        print(f"best val mIoU {shown} after {_steps(summary['steps'])}; run: {summary['run_dir']}")
    if summary["stopped_by"]:  # after the last step: the run is complete, nothing to resume
        print(
            f"Stopped by {summary['stopped_by']} after the last step; the run finished and is "
            "saved (nothing to resume).",
            file=sys.stderr,
        )
        return exit_status(summary["stopped_by"])
    return 0


def _steps(n: int) -> str:
    return f"{n} step{'' if n == 1 else 's'}"


def _longer(t: Any, steps_per_epoch: int) -> str:
    """The override that makes a finished run longer: whichever of ``train.epochs`` and
    ``train.max_steps`` ended it (raising the other would train nothing)."""
    by_epochs = steps_per_epoch * t.epochs
    if t.max_steps and t.max_steps < by_epochs:
        return f"a larger train.max_steps (now {t.max_steps}; --set train.max_steps=N)"
    also = (
        f" and train.max_steps above {t.max_steps} (--set train.max_steps=0 for no cap)"
        if t.max_steps
        else ""
    )
    return f"a larger train.epochs (now {t.epochs}; --set train.epochs=N){also}"


def _demo(args: argparse.Namespace) -> int:
    from sanet._files import ensure_writable_dir, refuse_foreign_files
    from sanet.cli.views import TrainingView
    from sanet.experiments.demo import run_demo

    ensure_writable_dir(args.out, "--out")
    found = RunDir(args.out).clashing_files()
    refuse_foreign_files(Path(args.out), found, "--out", "sanet demo", RUN_FILES)
    summary = run_demo(Path(args.out), args.overrides, callbacks=TrainingView())
    print(json.dumps({k: summary[k] for k in ("val_mIoU", "val_pixAcc", "seconds", "run_dir")}))
    print(
        f"demo: final val mIoU {summary['val_mIoU']:.4f} (synthetic scenes, {summary['model']}); "
        f"see {args.out}/"
    )
    return 0
