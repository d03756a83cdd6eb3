"""A resumable ``sanet eval`` (docs/reliability.md, "A stopped evaluation"): with ``out``, the
evaluation keeps ``out/.eval.resume.json`` beside its outputs — its settings, the images counted,
the unreadable ones and the confusion matrix of the counted images — written atomically every
few seconds, after the image in progress when SIGINT/SIGTERM stops it, and when an error stops
it; removed once ``metrics.json`` is written. The same call finds the state and continues from
it (a requeued SLURM job runs the same command: ``scripts/slurm/eval.sbatch``); the state of
another evaluation (other settings, another model) and files eval did not write stay refused.
The confusion matrix is a sum over images, so a continued evaluation counts every image once and
its metrics are those of an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sanet._files import (
    atomic_write_text,
    ensure_writable_dir,
    refuse_existing,
    remove_stale_temp_files,
)
from sanet.errors import OutputExistsError, UsageError, arg

logger = logging.getLogger(__name__)

EVAL_OUTPUTS = ("metrics.json", "iou_per_class.png", "confusion_matrix.png")  # in ``out``
STATE_NAME = ".eval.resume.json"
STATE_FORMAT = 1
SAVE_EVERY_S = 10.0  # seconds between two saves of the state (and after the first image)


def state_path(out: Path) -> Path:
    return out / STATE_NAME


def read_state(out: Path) -> dict[str, Any] | None:
    """The state of an unfinished evaluation in ``out``; ``None``: there is none."""
    try:
        found = json.loads(state_path(out).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"unreadable": True}
    return found if isinstance(found, dict) else {"unreadable": True}


def check_out(out: Path, save_predictions: bool, overwrite: bool) -> dict[str, Any] | None:
    """Refuse, before any work, an ``out`` that cannot be written or that holds eval's outputs
    (unless ``overwrite``) without the state of an unfinished evaluation; returns that state
    (``None`` with ``overwrite``: the evaluation starts over)."""
    ensure_writable_dir(out / "predictions" if save_predictions else out, arg("out"))
    found = read_state(out)
    if overwrite:
        return None
    if found is None:
        outputs = [out / name for name in EVAL_OUTPUTS]
        if save_predictions and (out / "predictions").is_dir():
            outputs += sorted((out / "predictions").iterdir())
        refuse_existing(outputs, arg("out"), overwrite)
    elif found.get("unreadable") or found.get("format") != STATE_FORMAT:
        raise OutputExistsError(
            f"{arg('out')} {str(out)!r} holds the state of an unfinished evaluation "
            f"({STATE_NAME}) that cannot be read; nothing was written. Pass "
            f"{arg('overwrite', True)} to start the evaluation over."
        )
    else:  # its own folder: a write a SIGKILL cut short left a temporary file (_files.py)
        for folder in (out, out / "predictions"):
            remove_stale_temp_files(folder)
    return found


@dataclass
class EvalState:
    """What an evaluation has counted: dataset indices ``done`` (in ``matrix``, the confusion
    matrix as lists, ``None`` before the first image), unreadable ones ``failed_at`` with their
    messages ``failed``."""

    settings: dict[str, Any]
    done: list[int] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    failed_at: list[int] = field(default_factory=list)
    matrix: list[list[int]] | None = None

    @property
    def tried(self) -> set[int]:
        return set(self.done) | set(self.failed_at)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "settings": self.settings,
            "done": self.done,
            "failed": self.failed,
            "failed_at": self.failed_at,
            "matrix": self.matrix,
        }


def resume_state(found: dict[str, Any] | None, settings: dict[str, Any], out: Path) -> EvalState:
    """The state to start from: empty, or ``found`` when it is an evaluation with the same
    ``settings`` (refused otherwise: its outputs would mix with this one's)."""
    settings = json.loads(json.dumps(settings, default=str))  # as the state file holds them
    if found is None:
        return EvalState(settings)
    previous = found.get("settings", {})
    differs = sorted(
        k for k in settings.keys() | previous.keys() if previous.get(k) != settings.get(k)
    )
    if differs:
        raise UsageError(
            f"{arg('out')} {str(out)!r} holds an unfinished evaluation ({len(found['done'])} "
            f"images counted) with another {', '.join(differs)}; nothing was written. Run the "
            f"same evaluation to continue it, or pass {arg('overwrite', True)} to start over."
        )
    logger.info(
        "%s: continuing an unfinished evaluation (%d images counted, %d unreadable)",
        out,
        len(found["done"]),
        len(found["failed_at"]),
    )
    return EvalState(
        settings,
        list(found["done"]),
        list(found["failed"]),
        list(found["failed_at"]),
        found.get("matrix"),
    )


class StateKeeper:
    """Keeps the last consistent :class:`EvalState` of a running evaluation in memory and in
    ``out`` (every :data:`SAVE_EVERY_S` seconds, and on :meth:`save`)."""

    def __init__(self, out: Path | None, state: EvalState) -> None:
        self.out, self.state, self._saved_at = out, state, 0.0

    def counted(self, index: int, matrix: Any, failed: str | None = None) -> None:
        """Image ``index`` is counted in ``matrix`` (a ``K×K`` tensor), or unreadable."""
        if failed is None:
            self.state.done.append(index)
        else:
            self.state.failed_at.append(index)
            self.state.failed.append(failed)
        if matrix is not None and self.out is not None:  # no out: nothing to save
            self.state.matrix = matrix.detach().cpu().tolist()
        if time.monotonic() - self._saved_at >= SAVE_EVERY_S:
            self.save()

    def save(self) -> None:
        if self.out is not None:
            atomic_write_text(state_path(self.out), json.dumps(self.state.to_dict()) + "\n")
            self._saved_at = time.monotonic()

    def finish(self) -> None:
        """The outputs are written: the evaluation is no longer unfinished."""
        if self.out is not None:
            state_path(self.out).unlink(missing_ok=True)
