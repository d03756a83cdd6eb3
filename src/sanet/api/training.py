"""``sanet.train`` (``sanet train``): a training run from a recipe, resumable; and ``sanet.demo``
(``sanet demo``): the demo's run on the synthetic scenes, evaluated and drawn."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sanet._files import ensure_writable_dir, refuse_foreign_files
from sanet.config import (
    Config,
    TrainConfig,
    load_config,
    override_hint,
    resolve_recipe,
    with_overrides,
)
from sanet.errors import UsageError, arg, speaks_cli
from sanet.experiments.demo import demo_recipe, run_demo
from sanet.rundir import RunDir
from sanet.training.progress import training_view
from sanet.training.resume import refuse_started_run
from sanet.training.trainer import Trainer

logger = logging.getLogger(__name__)

#: what a run writes into its folder (named when a folder holding other files is refused)
RUN_FILES = "config.yaml, metrics.jsonl, checkpoints/, model/, plots/ and tensorboard/"


@dataclass
class TrainResult:
    """What :func:`train` did.

    Attributes:
        run_dir: the run's folder: ``config.yaml``, ``metrics.jsonl``, ``checkpoints/last.pt``
            (resume), ``model/`` (the best weights), ``plots/``.
        steps: optimiser steps the run has taken in all (earlier sessions included).
        total_steps: the steps the recipe asks for (``train.epochs``, capped by
            ``train.max_steps``).
        best_miou: the best validation mIoU (single scale, the trainer's protocol); ``None``
            when no validation ran.
        history: every validation: ``epoch``, ``step``, ``pixAcc``, ``mIoU``.
        already_finished: when the run had taken all its steps before this call (a resume of a
            finished run: nothing was trained), the warning that says how to train longer;
            else ``None``.
        stopped_by: a signal (``"SIGTERM"``) that came after the last step: the run is complete
            and saved, and the caller should stop too; else ``None``.
        rank: this process's rank under ``torchrun`` (rank 0 writes the run).
    """

    run_dir: Path
    steps: int
    total_steps: int
    best_miou: float | None
    history: list[dict[str, Any]] = field(default_factory=list)
    already_finished: str | None = None
    stopped_by: str | None = None
    rank: int = 0


def train(
    config: str | Path | Config,
    *,
    out: str | Path | None = None,
    overrides: Sequence[str] = (),
    resume: bool = False,
    progress: bool = False,
) -> TrainResult:
    """Train a model from a recipe into the run folder ``out`` (one process, or one rank of a
    ``torchrun`` job).

    A folder that holds a run (``checkpoints/last.pt``) is continued only with ``resume=True``
    (the recipe may change only what the resume policy allows, docs/reliability.md) and is
    otherwise refused; a folder holding files a run did not write is refused too. A signal
    (SIGINT/SIGTERM) finishes the step, saves ``last.pt`` and raises
    :class:`~sanet.errors.TrainingInterrupted`; the same call with ``resume=True`` continues.

    Args:
        config: a YAML recipe, an embedded recipe by name (``"demo"``) or a
            :class:`~sanet.config.Config`.
        out: the run folder (default: ``runs/<recipe file name>``; needed with a ``Config``).
        overrides: ``section.key=value`` settings applied to the recipe (``"train.lr=0.01"``).
        resume: continue the run in ``out`` from its ``checkpoints/last.pt``.
        progress: show a progress bar and the validation tables.

    Returns:
        a :class:`TrainResult`.

    Raises:
        OutputExistsError: ``out`` holds a run and ``resume`` is False, or files a run did not
            write.
        NonFiniteLossError: the loss became NaN/inf (``train.nonfinite=stop``).
        TrainingInterrupted: a signal stopped the run after saving it.
    """
    cfg, run = _recipe_and_run(config, out, overrides)
    if not resume:
        refuse_started_run(run, f"pass another {arg('out')} to start a new one")
    ensure_writable_dir(run.root, arg("out"))
    if not resume:
        command = "sanet train" if speaks_cli() else "sanet.train"
        refuse_foreign_files(run.root, run.clashing_files(), arg("out"), command, RUN_FILES)
    trainer = Trainer(cfg, run.root, resume=resume, callbacks=training_view(progress))
    finished = _finished_already(trainer)
    summary = trainer.fit()
    best = summary["best_mIoU"]
    return TrainResult(
        run_dir=run.root,
        steps=summary["steps"],
        total_steps=trainer.total_steps,
        best_miou=best if best >= 0 else None,
        history=summary["history"],
        already_finished=finished,
        stopped_by=summary["stopped_by"],
        rank=trainer.dist.rank,
    )


def _recipe_and_run(
    config: str | Path | Config, out: str | Path | None, overrides: Sequence[str]
) -> tuple[Config, RunDir]:
    """The recipe with ``overrides`` (refused before anything is created) and the run folder."""
    if isinstance(config, Config):
        if out is None:
            raise UsageError(
                f"{arg('out')} is needed when {arg('config')} is a Config (no file names the "
                "run): pass the run folder."
            )
        return with_overrides(config, list(overrides)), RunDir(out)
    cfg = load_config(resolve_recipe(config), list(overrides))
    return cfg, RunDir(Path(out) if out is not None else Path("runs") / Path(config).stem)


def _finished_already(trainer: Trainer) -> str | None:
    """The warning (logged on rank 0) when a resumed run has already taken all its steps."""
    if trainer.state.global_step < trainer.total_steps or not trainer.dist.is_main:
        return None
    longer = _longer(trainer.cfg.train, trainer.steps_per_epoch)
    note = (
        f"{trainer.run.root} finished its {_steps(trainer.total_steps)} already; to train "
        f"longer, resume with {longer}."
    )
    logger.warning(note)
    return note


def _steps(n: int) -> str:
    return f"{n} step{'' if n == 1 else 's'}"


def _longer(t: TrainConfig, steps_per_epoch: int) -> str:
    """The override that makes a finished run longer: whichever of ``train.epochs`` and
    ``train.max_steps`` ended it (raising the other would train nothing)."""
    by_epochs = steps_per_epoch * t.epochs
    if t.max_steps and t.max_steps < by_epochs:
        return f"a larger train.max_steps (now {t.max_steps}; {override_hint('train.max_steps=N')})"
    also = (
        f" and train.max_steps above {t.max_steps} ({override_hint('train.max_steps=0')} for no "
        "cap)"
        if t.max_steps
        else ""
    )
    return f"a larger train.epochs (now {t.epochs}; {override_hint('train.epochs=N')}){also}"


@dataclass
class DemoResult:
    """What :func:`demo` measured (also in ``out/metrics.json``).

    Attributes:
        summary: the ``metrics.json`` content: ``model``, ``val_mIoU``, ``val_pixAcc``,
            per-class ``IoU``, the validation ``protocol``, ``seconds``, ``run_dir`` and what the
            numbers depend on beyond the recipe (``threads``, ``cpu_kernels``, ``torch``), the
            ``kernel_family`` used and the ``precision`` (:class:`~sanet.devices.Precision`).
        out: the run folder (``metrics.json``, ``plots/predictions.png``, ``model/`` ...).
    """

    summary: dict[str, Any]
    out: Path

    @property
    def miou(self) -> float:
        return float(self.summary["val_mIoU"])

    @property
    def pixacc(self) -> float:
        return float(self.summary["val_pixAcc"])


def demo(
    out: str | Path = "runs/demo",
    *,
    overrides: Sequence[str] = (),
    overwrite: bool = False,
    progress: bool = False,
    recipe: str = "demo",
) -> DemoResult:
    """Train a small SANet on the synthetic scenes on the CPU with the embedded recipe
    ``demo`` (SANet on an ImageNet-pretrained EfficientNet-Lite0, offline: docs/pretrained.md),
    validate the best weights and draw them (``make demo``; about 4 minutes on 2 cores).

    Args:
        out: the run folder.
        overrides: ``section.key=value`` settings applied to the demo recipe.
        overwrite: replace a run already in ``out`` (the demo always starts fresh); by default
            such a folder is refused, nothing touched.
        progress: show a progress bar and the validation tables.
        recipe: ``"demo"`` or ``"demo_scratch"`` (resnet18d from random weights: the demo
            before issue 31, the recipe of the studies in docs/).

    Returns:
        a :class:`DemoResult`.
    """
    demo_recipe(recipe)  # a name that is not a demo is refused before the folder is touched
    out = Path(out)
    ensure_writable_dir(out, arg("out"))
    command = "sanet demo" if speaks_cli() else "sanet.demo"
    refuse_foreign_files(out, RunDir(out).clashing_files(), arg("out"), command, RUN_FILES)
    summary = run_demo(
        out, list(overrides), training_view(progress), overwrite=overwrite, recipe=recipe
    )
    return DemoResult(summary, out)
