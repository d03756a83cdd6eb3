"""``sanet.audit_labels(data, recipe=..., folds=K)`` (``sanet audit-labels RECIPE --folds K``):
audit the data a model is trained on, honestly.

A model scores its own training images too kindly (it has learnt their labels, wrong ones
included). Here the split is dealt into ``K`` folds (:func:`~sanet.data.splits.kfold_indices`);
fold ``f``'s model trains on the other ``K − 1`` folds (``data.folds = K``, ``data.fold = f``:
the run validates on fold ``f``) and scores only the images of fold ``f``, so every image is
scored by a model that never saw its label. The runs are ``sanet compare``'s
(:func:`~sanet.experiments.compare.ensure_run`): ``OUT/runs/fold<f>/``, finished ones reused,
interrupted ones resumed, a changed recipe refused.

A checkpoint audits its own training split out of fold too: :func:`own_training_recipe` tells
when the audited split is the one its run trained on (``sanet.audit_labels`` then trains
``AUTO_FOLDS`` fold models with the run's recipe), and :func:`run_data_options` gives the
run's dataset options (a ``label_map``) for data of the run's own kind.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from sanet.config import Config, load_config
from sanet.data import build_dataset, parse_data_spec
from sanet.data.splits import kfold_indices
from sanet.devices import resolve_device
from sanet.errors import UsageError, arg
from sanet.experiments.compare import ensure_run
from sanet.inference.runs import run_config
from sanet.models.registry import load_model
from sanet.rundir import RunDir
from sanet.training.runlog import TrainerCallbacks
from sanet.training.trainer import validation_protocol
from sanet.trust.audit import AuditSettings, Suspect, audit_split, check_labels

logger = logging.getLogger(__name__)

#: folds of the out-of-fold audit of a checkpoint's own training split
AUTO_FOLDS = 5


def _same_data(kind: str, root: str | None, data: dict[str, Any]) -> bool:
    """``KIND:ROOT`` names the dataset of a run's ``data`` section (same kind and folder)."""
    if kind != data.get("dataset"):
        return False
    mine, theirs = root or "", str(data.get("root") or "")
    if not mine or not theirs:
        return mine == theirs
    return Path(mine).expanduser().resolve() == Path(theirs).expanduser().resolve()


def own_training_recipe(data: Any, checkpoint: str | Path, split: str) -> Path | None:
    """The run's ``config.yaml`` when ``split`` of ``data`` is the split the run of
    ``checkpoint`` trained on (its ``data.train_split`` of the same dataset), else ``None`` (a
    model saved outside a run, an exported file, another dataset or split)."""
    cfg = run_config(checkpoint)
    section = cfg.get("data") or {}
    if not isinstance(data, str) or not section.get("dataset"):
        return None
    kind, root = parse_data_spec(data)
    if not _same_data(kind, root, section) or split != section.get("train_split", "train"):
        return None
    run = RunDir.containing(checkpoint)
    return run.config if run is not None else None


def run_data_options(data: Any, checkpoint: str | Path) -> dict[str, Any] | None:
    """The run's ``data.options`` (e.g. its ``label_map``) when ``data`` is of the run's
    dataset kind, else ``None`` (another kind's options mean nothing here)."""
    section = run_config(checkpoint).get("data") or {}
    if not isinstance(data, str) or parse_data_spec(data)[0] != section.get("dataset"):
        return None
    return dict(section.get("options") or {}) or None


def audit_recipe(
    data: Any,
    checkpoint: str | Path,
    split: str,
    out_of_fold: bool | None,
    protocol: Any,
    device: Any,
) -> Path | None:
    """The run's recipe when ``checkpoint`` is to be audited out of fold on ``split``, else
    ``None`` (score with the checkpoint itself): ``out_of_fold=None`` decides by
    :func:`own_training_recipe`, ``True`` insists (refused when the split is not the run's
    training split), ``False`` scores with the checkpoint (a warning on its training split).
    ``protocol`` and ``device`` (the checkpoint's scoring) are refused out of fold."""
    own = own_training_recipe(data, checkpoint, split)
    where = f"{(data if isinstance(data, str) else 'the dataset')} split {split!r}"
    if out_of_fold is False or (own is None and out_of_fold is None):
        if own is not None:
            logger.warning(
                "%s is what %s was trained on: a model that has learnt a wrong label agrees "
                "with it, so this audit misses errors an out-of-fold audit finds (%s).",
                where,
                checkpoint,
                arg("out_of_fold", True),
            )
        return None
    if own is None:
        raise UsageError(
            f"{arg('out_of_fold', True)} trains fold models with the recipe of the run "
            f"{str(checkpoint)!r} on the split it trained on, but {where} is not that split (or "
            f"the model has no run's config.yaml). To audit any split out of fold, give a "
            f"{arg('recipe')} with {arg('folds')}."
        )
    if protocol is not None or device is not None:
        given = arg("protocol") if protocol is not None else arg("device")
        raise UsageError(
            f"{where} is what {checkpoint} was trained on, so it is audited out of fold by "
            f"models trained with its recipe, scored with its validation protocol: {given} "
            f"does not apply. Pass {arg('out_of_fold', False)} to score with the checkpoint."
        )
    logger.info(
        "%s is what %s was trained on: auditing it out of fold with %d models trained by its "
        "recipe %s (%s scores with the checkpoint itself).",
        where,
        checkpoint,
        AUTO_FOLDS,
        own,
        arg("out_of_fold", False),
    )
    return own


def fold_config(
    recipe: str | Path,
    folds: int,
    fold: int,
    data: str,
    split: str,
    overrides: Sequence[str] = (),
    data_options: dict[str, Any] | None = None,
) -> Config:
    """The recipe trained on the other folds of ``split`` of ``data`` (``KIND:ROOT``).

    The recipe's ``data.options`` are kept when ``KIND`` is its own dataset kind and cleared
    otherwise (a synthetic recipe's ``num_images`` means nothing to a ``folder`` dataset);
    ``data_options`` replace them; ``overrides`` come after, the fold keys last.
    """
    kind, root = parse_data_spec(data)
    base = load_config(recipe)
    data_keys = [f"data.dataset={kind}", f"data.root={root or ''}"]
    if data_options is not None:
        flow = yaml.safe_dump(dict(data_options), default_flow_style=True, width=10**6).strip()
        data_keys.append(f"data.options={flow}")
    elif kind != base.data.dataset:
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
    data_options: dict[str, Any] | None = None,
    settings: AuditSettings | None = None,
    keep: int = 8,
    callbacks: TrainerCallbacks | None = None,
    on_fold: Callable[[int, int], None] | None = None,
    on_image: Callable[[], None] | None = None,
    gate: Callable[[str, dict[str, Any]], None] | None = None,
) -> tuple[list[dict[str, Any]], list[Suspect], dict[str, Any], Any]:
    """Train (or reuse) the ``folds`` fold models and score every image out of fold.

    The split's labels pass the checks of training before any fold trains.

    Args:
        data_options: the dataset options of every fold (default: :func:`fold_config`'s).
        on_fold: called with ``(fold, images in it)`` before a fold's images are scored.
        gate: called with ``(fold run directory, agreement)`` (:func:`audit_split`).

    Returns:
        ``(entries, suspects, info, dataset)``: one audit entry per image (:func:`audit_split`,
        with the ``fold`` whose model scored it), the ``keep`` highest-scoring images over all
        folds, ``{"folds", "runs" (each with its model's agreement), "protocol"}`` and the
        audited dataset (``entries[i]["index"]`` indexes it).
    """
    if folds < 2:
        raise UsageError(f"{arg('folds')} must be at least 2, got {folds}.")
    out = Path(out)
    configs = [
        fold_config(recipe, folds, f, data, split, overrides, data_options) for f in range(folds)
    ]
    d = configs[0].data
    full = build_dataset(d.dataset, d.root or None, split=split, **d.options)
    kfold_indices(len(full), folds, 0)  # too few images: refused before any training
    for message in check_labels(full):  # 0/255 masks: refused before any training
        logger.warning("%s", message)
    entries, suspects, runs = [], [], []
    for fold, cfg in enumerate(configs):
        run = RunDir(out / "runs" / f"fold{fold}")
        ensure_run(cfg, run, cfg.model.name, cfg.train.seed, callbacks)
        _, held = kfold_indices(len(full), folds, fold)
        if on_fold:
            on_fold(fold, len(held))
        found, best, agreement = _score_fold(cfg, run, full, held, (settings, keep, on_image, gate))
        entries += [{**entry, "fold": fold} for entry in found]
        suspects += best
        runs.append(
            {"fold": fold, "run_dir": str(run.root), "images": len(held), "agreement": agreement}
        )
        logger.info("audit: fold %d scored %d images", fold, len(held))
    suspects = sorted(suspects, key=lambda s: (-s.score, s.index))[:keep]
    info = {"folds": folds, "runs": runs, "protocol": validation_protocol(configs[0]).to_dict()}
    return entries, suspects, info, full


def _score_fold(cfg: Config, run: RunDir, full: Any, held: Sequence[int], scoring: tuple) -> tuple:
    """:func:`audit_split` of the ``held`` images with the fold model of ``run``."""
    settings, keep, on_image, gate = scoring
    model, _ = load_model(run.model)
    return audit_split(
        model,
        full,
        full.class_names,
        validation_protocol(cfg),
        indices=held,
        settings=settings,
        device=resolve_device(cfg.train.device),
        keep=keep,
        on_image=on_image,
        gate=(lambda found, where=str(run.root): gate(where, found)) if gate else None,
    )
