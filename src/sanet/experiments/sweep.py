"""Fig. 4's grid: one training run per (α, β) pair of loss weights, resumable cell by cell
(:func:`train_grid` trains the runs, :func:`sweep_loss_weights` collects and draws the grid)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from sanet._files import atomic_write_text, ensure_writable_dir, is_temp_file, refuse_foreign_files
from sanet.config import load_config
from sanet.errors import UsageError, arg, speaks_cli
from sanet.rundir import RunDir
from sanet.training.runlog import TrainerCallbacks
from sanet.training.trainer import Trainer
from sanet.viz.figures import plot_sweep_heatmap

logger = logging.getLogger(__name__)


def sweep_loss_weights(
    alphas: Sequence[float],
    betas: Sequence[float],
    train_fn: Callable[[float, float, Path], float],
    out_dir: str | Path,
) -> np.ndarray:
    """Fig. 4: train one run per (α, β) cell and collect validation mIoU into a grid.

    Args:
        train_fn: ``train_fn(alpha, beta, run_dir) -> mIoU`` (trains and evaluates one run).
        out_dir: runs go to ``out_dir/alpha{α}_beta{β}``; results to ``out_dir/sweep.json``
            after every cell, so an interrupted sweep resumes where it stopped; the heatmap to
            ``out_dir/fig4.png``.

    Returns:
        ``(len(alphas), len(betas))`` mIoU grid.
    """
    out_dir = Path(out_dir)
    results_path = out_dir / "sweep.json"
    done: dict[str, float] = {}
    if results_path.is_file():
        done = {r["run"]: r["mIoU"] for r in json.loads(results_path.read_text())["runs"]}
    grid = np.full((len(alphas), len(betas)), np.nan)
    runs = []
    for i, a in enumerate(alphas):
        for j, b in enumerate(betas):
            name = f"alpha{a:g}_beta{b:g}"
            if name not in done:
                logger.info("sweep: training %s (%d/%d)", name, len(runs) + 1, grid.size)
                done[name] = float(train_fn(float(a), float(b), out_dir / name))
            grid[i, j] = done[name]
            runs.append({"run": name, "alpha": a, "beta": b, "mIoU": done[name]})
            payload = {"alphas": list(alphas), "betas": list(betas), "runs": runs}
            atomic_write_text(results_path, json.dumps(payload, indent=2) + "\n")
    plot_sweep_heatmap(alphas, betas, grid, out_dir / "fig4.png")
    return grid


def sweep_foreign_files(out_dir: str | Path) -> list[Path]:
    """What ``out_dir`` holds that a sweep did not write: anything but ``alpha*_beta*/`` run
    folders, a ``sweep.json`` of a sweep, the ``fig4.png`` beside it and temporary files."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    ours = set()
    try:
        payload = json.loads((out_dir / "sweep.json").read_text())
    except (OSError, ValueError):
        payload = None
    if isinstance(payload, dict) and payload.keys() >= {"alphas", "betas", "runs"}:
        ours = {out_dir / "sweep.json", out_dir / "fig4.png"}
    return sorted(
        p
        for p in out_dir.iterdir()
        if p not in ours
        and not is_temp_file(p)
        and not (p.is_dir() and re.fullmatch(r"alpha[^_]+_beta.+", p.name))
    )


def train_grid(
    recipe: str | Path,
    alphas: Sequence[float],
    betas: Sequence[float],
    out_dir: str | Path,
    overrides: Sequence[str] = (),
    callbacks: TrainerCallbacks | None = None,
) -> np.ndarray:
    """Fig. 4 from a recipe: one run of ``recipe`` (with ``overrides``) per (α, β) cell in
    ``out_dir/alpha{α}_beta{β}`` (``loss.alpha``, ``loss.beta`` set last), its best val mIoU
    collected by :func:`sweep_loss_weights`. Everything is checked before the first run: the
    recipe, the weights and ``out_dir`` (writable, holding nothing a sweep did not write).
    Finished cells are kept and an interrupted one resumes from its ``last.pt``.

    Returns:
        ``(len(alphas), len(betas))`` mIoU grid.
    """
    if not alphas or not betas:
        raise UsageError(
            f"{arg('alphas')} and {arg('betas')} need at least one value each, e.g. 0.2, 0.4."
        )
    load_config(recipe, list(overrides))  # a bad recipe fails before the first run
    out_dir = Path(out_dir)
    ensure_writable_dir(out_dir, arg("out"))
    command = "sanet sweep" if speaks_cli() else "sanet.sweep"
    found, writes = sweep_foreign_files(out_dir), "alpha*_beta*/, sweep.json, fig4.png"
    refuse_foreign_files(out_dir, found, arg("out"), command, writes)

    def train_one(alpha: float, beta: float, run_dir: Path) -> float:
        cfg = load_config(recipe, [*overrides, f"loss.alpha={alpha}", f"loss.beta={beta}"])
        resume = RunDir(run_dir).has_checkpoint()  # an interrupted cell resumes
        return float(Trainer(cfg, run_dir, resume=resume, callbacks=callbacks).fit()["best_mIoU"])

    return sweep_loss_weights(alphas, betas, train_one, out_dir)
