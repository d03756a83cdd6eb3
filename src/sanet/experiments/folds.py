"""``sanet.audit_labels(data, recipe=..., folds=K)`` (``sanet audit-labels RECIPE --folds K``):
audit the data a model is trained on, honestly.

A model scores its own training images too kindly (it has learnt their labels, wrong ones
included). Here the split is dealt into ``K`` folds (:func:`~sanet.data.splits.kfold_indices`);
fold ``f``'s model trains on the other ``K − 1`` folds (``data.folds = K``, ``data.fold = f``:
the run validates on fold ``f``) and scores only the images of fold ``f``, so every image is
scored by a model that never saw its label. The runs are ``sanet compare``'s
(:func:`~sanet.experiments.compare.ensure_run`): ``OUT/runs/fold<f>/``, finished ones reused,
interrupted ones resumed, a changed recipe refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sanet.config import Config, load_config
from sanet.data import build_dataset, parse_data_spec
from sanet.data.splits import kfold_indices
from sanet.devices import resolve_device
from sanet.errors import UsageError, arg
from sanet.experiments.compare import ensure_run
from sanet.models.registry import load_model
from sanet.rundir import RunDir
from sanet.training.runlog import TrainerCallbacks
from sanet.training.trainer import validation_protocol
from sanet.trust.audit import AuditSettings, Suspect, audit_split

logger = logging.getLogger(__name__)


def fold_config(
    recipe: str | Path,
    folds: int,
    fold: int,
    data: str,
    split: str,
    overrides: Sequence[str] = (),
) -> Config:
    """The recipe trained on the other folds of ``split`` of ``data`` (``KIND:ROOT``).

    The recipe's ``data.options`` are kept when ``KIND`` is its own dataset kind and cleared
    otherwise (a synthetic recipe's ``num_images`` means nothing to a ``folder`` dataset);
    ``overrides`` come after, the fold keys last.
    """
    kind, root = parse_data_spec(data)
    base = load_config(recipe)
    data_keys = [f"data.dataset={kind}", f"data.root={root or ''}"]
    if kind != base.data.dataset:
        data_keys.append("data.options={}")
    fold_keys = [f"data.train_split={split}", f"data.folds={folds}", f"data.fold={fold}"]
    return load_config(recipe, [*data_keys, *overrides, *fold_keys])


def kfold_audit(
    recipe: str | Path,
    folds: int,
    data: str,
    out: str | Path,
    *,
    split: str = "train",
    overrides: Sequence[str] = (),
    settings: AuditSettings | None = None,
    keep: int = 8,
    callbacks: TrainerCallbacks | None = None,
    on_fold: Callable[[int, int], None] | None = None,
    on_image: Callable[[], None] | None = None,
) -> tuple[list[dict[str, Any]], list[Suspect], dict[str, Any], Any]:
    """Train (or reuse) the ``folds`` fold models and score every image out of fold.

    Args:
        on_fold: called with ``(fold, images in it)`` before a fold's images are scored.

    Returns:
        ``(entries, suspects, info, dataset)``: one audit entry per image (:func:`audit_split`,
        with the ``fold`` whose model scored it),
        the ``keep`` highest-scoring images over all folds, ``{"folds", "runs", "protocol"}``
        and the audited dataset (``entries[i]["index"]`` indexes it).
    """
    if folds < 2:
        raise UsageError(f"{arg('folds')} must be at least 2, got {folds}.")
    out = Path(out)
    configs = [fold_config(recipe, folds, f, data, split, overrides) for f in range(folds)]
    d = configs[0].data
    full = build_dataset(d.dataset, d.root or None, split=split, **d.options)
    kfold_indices(len(full), folds, 0)  # too few images: refused before any training
    entries: list[dict[str, Any]] = []
    suspects: list[Suspect] = []
    runs = []
    for fold, cfg in enumerate(configs):
        run = RunDir(out / "runs" / f"fold{fold}")
        ensure_run(cfg, run, cfg.model.name, cfg.train.seed, callbacks)
        model, _ = load_model(run.model)
        _, held = kfold_indices(len(full), folds, fold)
        if on_fold:
            on_fold(fold, len(held))
        found, best = audit_split(
            model,
            full,
            full.class_names,
            validation_protocol(cfg),
            indices=held,
            settings=settings,
            device=resolve_device(cfg.train.device),
            keep=keep,
            on_image=on_image,
        )
        entries += [{**entry, "fold": fold} for entry in found]
        suspects += best
        runs.append({"fold": fold, "run_dir": str(run.root), "images": len(held)})
        logger.info("audit: fold %d scored %d images", fold, len(held))
    suspects = sorted(suspects, key=lambda s: (-s.score, s.index))[:keep]
    info = {"folds": folds, "runs": runs, "protocol": validation_protocol(configs[0]).to_dict()}
    return entries, suspects, info, full
