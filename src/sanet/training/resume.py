"""Resuming a run: reading ``last.pt`` safely and refusing a config that would change the run.

The policy itself (which keys may change on ``--resume``) is data next to the config:
``RESUME_MAY_CHANGE`` and ``RESUME_MAY_GROW`` in :mod:`sanet.config` (docs/reliability.md).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from sanet._files import remove_stale_temp_files, safe_torch_load
from sanet.config import RESUME_MAY_CHANGE, RESUME_MAY_GROW, Config, resume_conflicts
from sanet.errors import NotFoundError, UsageError
from sanet.rundir import RunDir

logger = logging.getLogger(__name__)


def read_resume_checkpoint(cfg: Config, run: RunDir, device: torch.device) -> dict[str, Any]:
    """Read ``last.pt`` once, checking (before the run directory is rewritten) that the resumed
    run changes nothing that decides the next samples or the maths (``resume_conflicts``)."""
    last = run.last
    if not last.is_file():
        raise NotFoundError(
            f"--resume: {str(last)!r} does not exist. Resume needs the run directory of an "
            "earlier `sanet train` (with --out DIR) that saved checkpoints/last.pt."
        )
    fix = (
        f"resume from the best checkpoint instead: copy {run.best} over {last} and rerun "
        "(training continues from its step)"
        if run.best.is_file()
        else "start the run again without --resume (into a new --out folder)"
    )
    ckpt = safe_torch_load(last, device, fix=fix)
    missing = _RESUME_KEYS - set(ckpt) if isinstance(ckpt, dict) else _RESUME_KEYS
    if missing:
        raise UsageError(
            f"--resume: {str(last)!r} is not a sanet training checkpoint (no {sorted(missing)}). "
            f"{fix[0].upper()}{fix[1:]}."
        )
    changed = resume_conflicts(ckpt["config"], cfg)
    if changed:
        raise UsageError(
            f"--resume: the config differs from the run's in {', '.join(changed)}: a resumed run "
            "must see the same samples and do the same maths. Resume with the run's own config: "
            f"{run.resume_command()} (may change: {', '.join(sorted(RESUME_MAY_CHANGE))}; may "
            f"grow: {', '.join(sorted(RESUME_MAY_GROW))}), or start a new run with --out NEW_DIR."
        )
    return ckpt


_RESUME_KEYS = {"model", "optimizer", "scheduler", "rng", "state", "config"}


def remove_interrupted_writes(run: RunDir) -> None:
    """Temporary files of writes that a ``kill -9`` interrupted (the targets are intact)."""
    for folder in (run.root, run.checkpoints, run.model, run.plots):
        for path in remove_stale_temp_files(folder):
            logger.info("Removed %s, left by an interrupted write", path)
