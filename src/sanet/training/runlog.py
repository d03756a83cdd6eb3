"""What a run leaves for people to read: ``metrics.jsonl``, TensorBoard events, PNG curves
(:class:`RunLog`), and what it tells whoever shows it live (:class:`TrainerCallbacks`).

Only rank 0 creates a :class:`RunLog`; every method is cheap enough to call at log intervals.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from sanet._files import atomic_write_text
from sanet.errors import DataError
from sanet.rundir import RunDir
from sanet.viz.visualize import (
    plot_confusion_matrix,
    plot_per_class_iou,
    pyplot,
    save_figure,
)

logger = logging.getLogger(__name__)


class TrainerCallbacks:
    """What a run tells whoever shows it. The trainer calls these on rank 0 only; each does
    nothing here: library code only logs, and ``progress=True`` passes a view that draws a
    progress bar and the validation tables (``sanet.training.progress.TrainingView``)."""

    def fit_start(self, total_steps: int, done_steps: int) -> None:
        """Training (re)starts with ``done_steps`` of ``total_steps`` already taken."""

    def epoch_start(self, epoch: int, epochs: int) -> None:
        """Epoch ``epoch`` (0-based) of ``epochs`` starts (or continues after a resume)."""

    def step(self, global_step: int) -> None:
        """An optimiser step was taken (no host sync happened for it)."""

    def logged(self, step: int, values: dict[str, float]) -> None:
        """A log interval's host sync: mean loss terms, ``lr`` and ``images_per_s``."""

    def validated(self, entry: dict[str, Any], result: dict[str, Any], names: list[str]) -> None:
        """A validation finished: ``entry`` (epoch, step, pixAcc, mIoU) and the full result."""

    def fit_end(self) -> None:
        """Training stopped (finished, interrupted or failed)."""


class RunLog:
    """Appends JSON lines to ``metrics.jsonl``, mirrors scalars to TensorBoard and redraws the
    loss and mIoU curves in ``plots/`` after each validation."""

    def __init__(self, run: RunDir | str | Path, tensorboard: bool = True) -> None:
        self.run = run if isinstance(run, RunDir) else RunDir(run)
        self.run.plots.mkdir(parents=True, exist_ok=True)
        self.path = self.run.metrics_log
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.run.tensorboard))

    def log(self, kind: str, step: int, **values: Any) -> None:
        """One record: ``{"kind": "train"|"val", "step": ..., **values}``."""
        record = {"kind": kind, "step": step, **values}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.writer:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(f"{kind}/{key}", value, step)
            self.writer.flush()

    def records(self) -> list[dict[str, Any]]:
        """The records logged so far; a last line cut short (a run killed while appending it)
        is dropped, with a warning."""
        if not self.path.is_file():
            return []
        lines = [line for line in self.path.read_text().splitlines() if line.strip()]
        records = []
        for number, line in enumerate(lines, start=1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                if number < len(lines):  # damage before the end: not an interrupted append
                    raise DataError(
                        self.path,
                        f"line {number} is not JSON ({err})",
                        "restore the file or delete that line",
                    ) from err
                logger.warning(
                    "Ignoring the last line of %s: cut short by an interrupted write", self.path
                )
        return records

    def truncate_after(self, step: int) -> None:
        """On resume, drop records logged after the checkpoint's step (they will be redone)."""
        kept = [r for r in self.records() if r["step"] <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def plot_curves(self) -> list[Path]:
        """Redraw ``plots/loss.png`` (train loss terms) and ``plots/val_miou.png``."""
        plt = pyplot()
        records = self.records()
        train = [r for r in records if r["kind"] == "train"]
        val = [r for r in records if r["kind"] == "val"]
        written = []
        if train:
            fig, ax = plt.subplots(figsize=(6, 4))
            for term in ("loss", "mask", "cat", "dense"):
                if term in train[0]:
                    ax.plot([r["step"] for r in train], [r[term] for r in train], label=term)
            ax.set(xlabel="step", ylabel="loss", title="Training loss (L = mask + α·cat + β·dense)")
            ax.legend()
            written.append(_save(fig, self.run.plot("loss.png")))
        if val:
            fig, ax = plt.subplots(figsize=(6, 4))
            ax.plot(
                [r["step"] for r in val], [100 * r["mIoU"] for r in val], marker="o", label="mIoU"
            )
            ax.plot(
                [r["step"] for r in val],
                [100 * r["pixAcc"] for r in val],
                marker="s",
                label="pixAcc",
            )
            ax.set(xlabel="step", ylabel="%", title="Validation (single scale)")
            ax.legend()
            written.append(_save(fig, self.run.plot("val_miou.png")))
        return written

    def plot_validation(self, iou: list[float | None], confusion: Any, names: list[str]) -> None:
        """``plots/best_per_class_iou.png`` and ``plots/best_confusion.png`` of the best weights."""
        plot_per_class_iou(iou, names, self.run.plot("best_per_class_iou.png"))
        plot_confusion_matrix(confusion, names, self.run.plot("best_confusion.png"))

    def close(self) -> None:
        if self.writer:
            self.writer.close()


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
