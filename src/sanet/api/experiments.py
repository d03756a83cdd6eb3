"""``sanet.compare`` (``sanet compare``): models × seeds under one recipe, the Table 3
comparison; and ``sanet.sweep`` (``sanet sweep``): Fig. 4's grid of loss weights α, β."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sanet.config import recipe_path, resolve_recipe
from sanet.errors import UsageError, arg
from sanet.experiments import compare as comparison
from sanet.experiments.sweep import train_grid
from sanet.training.progress import training_view

MODELS = ("sanet", "fcn", "sanet_se")  # Table 3: SA heads, the FCN baseline, SE heads
WEIGHTS = (0.2, 0.4, 0.6, 0.8, 1.0)  # Fig. 4's α and β


@dataclass
class CompareResult:
    """What :func:`compare` wrote (``out/compare.json``, ``out/compare.png``).

    Attributes:
        payload: the ``compare.json`` content: ``recipe``, ``overrides``, ``models``,
            ``seeds``, ``per_model`` (mean ± std of val mIoU over seeds, per-class IoU, time),
            ``paired`` (each model after the first against it: mean difference, 95 % CI,
            p-value), ``class_names`` and ``runs`` (one per model and seed).
        out: the comparison folder (``runs/<model>-seed<N>/`` inside).
        report: ``out/compare.json``.
        figure: ``out/compare.png``.
    """

    payload: dict[str, Any]
    out: Path
    report: Path
    figure: Path

    @property
    def per_model(self) -> dict[str, Any]:
        return self.payload["per_model"]

    @property
    def paired(self) -> dict[str, Any]:
        return self.payload["paired"]


def compare(
    recipe: str | Path,
    models: Sequence[str] = MODELS,
    seeds: int = 3,
    *,
    out: str | Path,
    overrides: Sequence[str] = (),
    epochs: int | None = None,
    max_steps: int | None = None,
    seed_start: int = 0,
    progress: bool = False,
) -> CompareResult:
    """Train every model with seeds ``seed_start`` ... ``seed_start + seeds - 1`` under one
    recipe and budget, and compare the val mIoU of their final weights (Table 3): mean ± std
    per model and paired differences to the first model.

    Finished runs are reused and interrupted ones resumed, so the same call again continues a
    comparison a signal stopped (:class:`~sanet.errors.ComparisonInterrupted`); a run folder
    trained with another recipe, or an ``out`` holding files a comparison did not write, is
    refused.

    Args:
        recipe: a YAML recipe or an embedded recipe by name (``"demo"``).
        models: the models to compare; differences are paired against the first.
        seeds: how many seeds (at least 1).
        out: the comparison folder.
        overrides: ``section.key=value`` settings applied to every run.
        epochs: shortcut for the override ``train.epochs``.
        max_steps: shortcut for the override ``train.max_steps``.
        seed_start: the first seed.
        progress: show a progress bar per run and the validation tables.

    Returns:
        a :class:`CompareResult`.
    """
    if seeds < 1:
        raise UsageError(f"{arg('seeds')} must be at least 1, got {seeds}.")
    every = list(overrides)
    if epochs is not None:
        every.append(f"train.epochs={epochs}")
    if max_steps is not None:
        every.append(f"train.max_steps={max_steps}")
    out = Path(out)
    payload = comparison.compare(
        resolve_recipe(recipe),
        list(models),
        list(range(seed_start, seed_start + seeds)),
        out,
        every,
        training_view(progress),
    )
    return CompareResult(payload, out, out / "compare.json", out / "compare.png")


@dataclass
class SweepResult:
    """Fig. 4's grid (``out/sweep.json``, ``out/fig4.png``).

    Attributes:
        grid: the best val mIoU of each run: ``grid[i, j]`` for ``alphas[i]``, ``betas[j]``.
        alphas: the weights α of L_cat (rows).
        betas: the weights β of L_dense (columns).
        out: the sweep folder (one run per cell: ``alpha{α}_beta{β}/``).
        report: ``out/sweep.json``.
        figure: ``out/fig4.png``.
    """

    grid: np.ndarray
    alphas: list[float]
    betas: list[float]
    out: Path
    report: Path
    figure: Path

    @property
    def best(self) -> tuple[float, float, float]:
        """``(α, β, mIoU)`` of the best cell."""
        i, j = divmod(int(self.grid.argmax()), self.grid.shape[1])
        return self.alphas[i], self.betas[j], float(self.grid[i, j])


def sweep(
    config: str | Path | None = None,
    alphas: Sequence[float] = WEIGHTS,
    betas: Sequence[float] = WEIGHTS,
    *,
    out: str | Path,
    overrides: Sequence[str] = (),
    progress: bool = False,
) -> SweepResult:
    """Train one run per (α, β) pair of loss weights (Sec. 3: ``L = L_mask + α·L_cat +
    β·L_dense``) and draw their val mIoU as Fig. 4.

    Finished cells are kept in ``out/sweep.json`` after each run, so the same call again
    continues an interrupted sweep; an ``out`` holding files a sweep did not write is refused.

    Args:
        config: a YAML recipe or an embedded recipe by name (default: ``"demo"``).
        alphas: the weights α of L_cat.
        betas: the weights β of L_dense.
        out: the sweep folder.
        overrides: ``section.key=value`` settings applied to every run.
        progress: show a progress bar per run and the validation tables.

    Returns:
        a :class:`SweepResult`.
    """
    recipe = recipe_path("demo") if config is None else resolve_recipe(config)
    alphas, betas, out = [float(a) for a in alphas], [float(b) for b in betas], Path(out)
    grid = train_grid(recipe, alphas, betas, out, list(overrides), training_view(progress))
    return SweepResult(grid, alphas, betas, out, out / "sweep.json", out / "fig4.png")
