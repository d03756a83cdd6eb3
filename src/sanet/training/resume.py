"""Resuming a run: reading ``last.pt`` safely, refusing a config that would change the run, and
refusing to start a fresh run over one that can be resumed.

The policy itself (which keys may change on resume) is data next to the config:
``RESUME_MAY_CHANGE`` and ``RESUME_MAY_GROW`` in :mod:`sanet.config` (docs/reliability.md).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from sanet._files import remove_stale_temp_files, safe_torch_load
from sanet.config import RESUME_MAY_CHANGE, RESUME_MAY_GROW, Config, resume_conflicts
from sanet.errors import NotFoundError, OutputExistsError, UsageError, arg, speaks_cli
from sanet.rundir import RunDir

logger = logging.getLogger(__name__)


def how_to_resume(run: RunDir) -> str:
    """What continues ``run``, in the caller's words: the ``sanet train ... --resume`` command
    or the ``sanet.train(..., resume=True)`` call."""
    return run.resume_command(cli=speaks_cli())


def refuse_started_run(run: RunDir, instead: str) -> None:
    """Refuse to start a fresh run in ``run`` when it holds one that can be resumed (its
    ``checkpoints/last.pt``): starting afresh would cut its ``metrics.jsonl`` and replace its
    checkpoints. ``instead`` says where a new run goes (``"out NEW_DIR"``)."""
    if run.has_checkpoint():
        raise OutputExistsError(
            f"{run.root} already holds a run (checkpoints/last.pt); nothing was overwritten. "
            f"Pass {arg('resume', True)} to continue it ({how_to_resume(run)}), or {instead}."
        )


def read_resume_checkpoint(cfg: Config, run: RunDir, device: torch.device) -> dict[str, Any]:
    """Read ``last.pt`` once, checking (before the run directory is rewritten) that the resumed
    run changes nothing that decides the next samples or the maths (``resume_conflicts``)."""
    last, resume = run.last, arg("resume", True)
    if not last.is_file():
        raise NotFoundError(
            f"{resume}: {str(last)!r} does not exist. Resuming needs the folder of an earlier "
            f"run ({arg('out')} when it started) that saved checkpoints/last.pt."
        )
    fix = (
        f"resume from the best checkpoint instead: copy {run.best} over {last} and rerun "
        "(training continues from its step)"
        if run.best.is_file()
        else f"start the run again without {resume} (into a new {arg('out')} folder)"
    )
    ckpt = safe_torch_load(last, device, fix=fix)
    missing = _RESUME_KEYS - set(ckpt) if isinstance(ckpt, dict) else _RESUME_KEYS
    if missing:
        raise UsageError(
            f"{resume}: {str(last)!r} is not a sanet training checkpoint (no {sorted(missing)}). "
            f"{fix[0].upper()}{fix[1:]}."
        )
    changed = resume_conflicts(ckpt["config"], cfg)
    if changed:
        raise UsageError(
            f"{resume}: the config differs from the run's in {', '.join(changed)}: a resumed run "
            "must see the same samples and do the same maths. Resume with the run's own config: "
            f"{how_to_resume(run)} (may change: {', '.join(sorted(RESUME_MAY_CHANGE))}; may "
            f"grow: {', '.join(sorted(RESUME_MAY_GROW))}), or start a new run in another "
            f"{arg('out')} folder."
        )
    return ckpt


_RESUME_KEYS = {"model", "optimizer", "scheduler", "rng", "state", "config"}


def remove_interrupted_writes(run: RunDir) -> None:
    """Temporary files of writes that a ``kill -9`` interrupted (the targets are intact)."""
    for folder in (run.root, run.checkpoints, run.model, run.plots):
        for path in remove_stale_temp_files(folder):
            logger.info("Removed %s, left by an interrupted write", path)
