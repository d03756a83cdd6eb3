"""Fig. 4's grid: one training run per (α, β) pair of loss weights, resumable cell by cell."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from sanet._files import atomic_write_text, is_temp_file
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
