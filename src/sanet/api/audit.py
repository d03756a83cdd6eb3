"""``sanet.audit_labels``: where a dataset's labels are probably wrong, scored by a trained model
or out of fold by models trained on the other folds (``sanet audit-labels``); and
``sanet.rank``: which unlabelled images are worth annotating next (``sanet rank``).
Definitions: docs/trust.md."""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sanet._files import atomic_write_text, ensure_new_file, ensure_writable_dir, refuse_existing
from sanet.api.common import (
    ProtocolArg,
    check_classes,
    data_name,
    device_of,
    expand_inputs,
    open_dataset,
    protocol_of,
)
from sanet.config import resolve_recipe
from sanet.data import SegmentationDataset
from sanet.errors import DataError, UsageError, arg
from sanet.experiments.folds import AUTO_FOLDS, audit_recipe, kfold_audit, run_data_options
from sanet.inference import predictor as inference_predictor
from sanet.inference.confidence import read_calibration
from sanet.progress import progress_bar
from sanet.training.progress import training_view
from sanet.trust.audit import (
    MIN_MIOU,
    AuditSettings,
    agreement_gate,
    audit_split,
    check_labels,
    rank_scores,
    sort_report,
)
from sanet.trust.plots import plot_audit

logger = logging.getLogger(__name__)

AUDIT_OUTPUTS = ("label_audit.json", "suspects.png")  # in ``out``
RANK_FIELDS = ("rank", "image", "score", "mean_entropy", "flip_disagreement")  # the CSV's columns


@dataclass
class AuditResult:
    """What :func:`audit_labels` found and wrote.

    Attributes:
        audit: the ``label_audit.json`` content: ``images`` (most suspicious first, each with
            its ``score`` and ``regions``), the data, split, settings, protocol and temperature,
            the model's ``agreement`` with the labels (with folds: the folds, their runs and
            each fold model's agreement).
        report: ``label_audit.json``.
        suspects: ``suspects.png`` (the ``top`` images).
    """

    audit: dict[str, Any] = field(repr=False)
    report: Path
    suspects: Path

    @property
    def images(self) -> list[dict[str, Any]]:
        """One entry per image, most suspicious first."""
        return self.audit["images"]


def audit_labels(
    data: str | SegmentationDataset,
    *,
    checkpoint: str | Path | None = None,
    recipe: str | Path | None = None,
    folds: int | None = None,
    split: str | None = None,
    out: str | Path,
    data_options: Mapping[str, Any] | None = None,
    out_of_fold: bool | None = None,
    top: int = 8,
    confidence: float = 0.9,
    min_region: float = 0.002,
    min_miou: float = MIN_MIOU,
    overrides: Sequence[str] = (),
    protocol: ProtocolArg = None,
    device: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> AuditResult:
    """Score every image of a split against its label (docs/trust.md, "Label audit"), with
    ``checkpoint`` (``split`` default ``"val"``; out of fold with ``AUTO_FOLDS`` models of its
    run's recipe on the split the run trained on) or out of fold with ``recipe`` and ``folds``
    (``split`` default ``"train"``; runs in ``out/runs/fold<f>/``, reused or resumed). 0/255
    masks without a ``label_map`` and a model agreeing with the labels below ``min_miou`` are
    refused, with the fix.

    Args:
        data: ``"KIND:ROOT"`` (e.g. ``"folder:data/mine"``), or with ``checkpoint`` a dataset.
        checkpoint: a run directory, ``.pt``, ``save_pretrained`` folder or ``.onnx`` file.
        recipe, folds: a YAML recipe (or an embedded one by name) and ``K`` (at least 2).
        out: where ``label_audit.json`` and ``suspects.png`` (its ``top`` images) go.
        data_options: dataset options, as a recipe's ``data.options`` (e.g. ``{"label_map":
            {255: 1}}``). Default: the run's own when ``data`` is of its dataset kind.
        out_of_fold: with ``checkpoint``: ``None`` out of fold on the run's training split
            only; ``True`` insists, ``False`` scores with the checkpoint.
        confidence: evidence where the model gives the label at most ``1 − confidence``.
        min_region: least region, as a share of the image (and at least 16 px).
        min_miou: the least mIoU of the model against the audited labels (0: audit anyway).
        overrides: with ``recipe``: ``section.key=value`` overrides for every fold's run.
        protocol: with ``checkpoint``: ``None`` (the run's own), ``"paper"``, ``"single"`` or
            an ``EvalProtocol`` (fold models: the recipe's validation protocol).
        overwrite: replace ``label_audit.json`` and ``suspects.png`` (default: refuse).

    Returns: an :class:`AuditResult`.
    """
    _check_arguments(checkpoint, recipe, folds, overrides, protocol, device, top, out_of_fold)
    settings = AuditSettings(confidence, min_region, min_miou)
    out = ensure_writable_dir(out, arg("out"))
    refuse_existing([out / name for name in AUDIT_OUTPUTS], arg("out"), overwrite)
    model = (checkpoint, recipe, folds, overrides, protocol, device, out_of_fold)
    scored = _score(data, model, split, out, data_options, settings, top, progress)
    entries, suspects, dataset, info = scored
    ranked = sort_report(entries)
    audit = {"images": ranked, "data": data_name(data), "split": info.pop("split"), **info}
    audit["settings"] = settings.record()
    report, picture = (out / name for name in AUDIT_OUTPUTS)
    atomic_write_text(report, json.dumps(audit, indent=1) + "\n")
    plot_audit(dataset, suspects, ranked, picture)
    return AuditResult(audit, report, picture)


def _score(
    data: Any,
    model: tuple,
    split: str | None,
    out: Path,
    data_options: Mapping[str, Any] | None,
    settings: AuditSettings,
    top: int,
    progress: bool,
) -> tuple:
    """Score with the checkpoint, or out of fold: with a recipe, or with the checkpoint's run's
    recipe on the split the run trained on (``audit_recipe``)."""
    checkpoint, recipe, folds, overrides, protocol, device, out_of_fold = model
    options = None if data_options is None else dict(data_options)
    own = None
    if checkpoint is not None:
        split = split or "val"
        own = audit_recipe(data, checkpoint, split, out_of_fold, protocol, device)
    if checkpoint is not None and own is None:
        args = (data, checkpoint, split, options, protocol, device, settings, top)
        return _audit_checkpoint(*args, progress)
    folds, recipe = (AUTO_FOLDS, own) if own is not None else (folds, recipe)
    args = (data, recipe, folds, split or "train", out, overrides, options, settings, top)
    entries, suspects, dataset, info = _audit_folds(*args, progress)
    info |= {"checkpoint": str(checkpoint)} if own is not None else {}
    return entries, suspects, dataset, info


def _check_arguments(
    checkpoint: Any,
    recipe: Any,
    folds: Any,
    overrides: Sequence[str],
    protocol: Any,
    device: Any,
    top: int,
    out_of_fold: bool | None,
) -> None:
    """One of the two modes, with only its own arguments; ``top`` not negative."""
    if (checkpoint is None) == (recipe is None):
        raise UsageError(
            f"The label audit needs either {arg('checkpoint')} (score with a trained model) or "
            f"a {arg('recipe')} with {arg('folds')} (train K models, score out of fold), not "
            "both or neither."
        )
    if recipe is not None and folds is None:
        raise UsageError(
            f"A recipe ({recipe}) needs {arg('folds')}, the number of folds (e.g. "
            f"{arg('folds', 5)})."
        )
    if checkpoint is not None and (folds is not None or overrides):
        raise UsageError(
            f"{arg('folds')} and {arg('overrides')} go with a {arg('recipe')}; with "
            f"{arg('checkpoint')} drop them."
        )
    if recipe is not None and (protocol is not None or device is not None):
        given = arg("protocol") if protocol is not None else arg("device")
        raise UsageError(
            f"{given} goes with {arg('checkpoint')}; the fold models are scored with the "
            f"recipe's validation protocol on its train.device (set them with {arg('overrides')})."
        )
    if recipe is not None and out_of_fold is not None:
        raise UsageError(
            f"{arg('out_of_fold')} goes with {arg('checkpoint')}; a {arg('recipe')} with "
            f"{arg('folds')} always scores out of fold."
        )
    if top < 0:
        raise UsageError(f"{arg('top')} must be 0 or more, got {top}.")


def _audit_checkpoint(
    data: str | SegmentationDataset,
    checkpoint: str | Path,
    split: str,
    options: dict[str, Any] | None,
    protocol: ProtocolArg,
    device: str | None,
    settings: AuditSettings,
    top: int,
    progress: bool,
) -> tuple:
    """Score ``split`` with the model of ``checkpoint`` (calibrated, when it is)."""
    device = device_of(device)
    chosen = protocol_of(checkpoint, protocol, device)
    if options is None:
        options = run_data_options(data, checkpoint)
    dataset = open_dataset(data, split, options)
    if len(dataset) == 0:
        raise UsageError(f"{data_name(data)} split {split!r} has no images to audit.")
    for message in check_labels(dataset):
        logger.warning("%s", message)
    model, meta = inference_predictor.open_model(checkpoint, device)
    check_classes(model, dataset, checkpoint)
    calibration = read_calibration(meta)
    temperature = calibration.temperature if calibration else 1.0
    where = f"{data_name(data)} split {split!r}"
    with progress_bar(unit="img", enabled=progress) as bar:
        task = bar.add_task(f"audit {split}", total=len(dataset))
        entries, suspects, agreement = audit_split(
            model,
            dataset,
            dataset.class_names,
            chosen,
            temperature=temperature,
            settings=settings,
            device=device,
            keep=top,
            on_image=lambda: bar.advance(task),
            gate=agreement_gate(repr(str(checkpoint)), where, settings.min_miou),
        )
    info = {"split": split, "checkpoint": str(checkpoint), "temperature": temperature}
    info |= {"data_options": options, "agreement": agreement}
    return entries, suspects, dataset, info | {"protocol": chosen.to_dict()}


def _audit_folds(
    data: str | SegmentationDataset,
    recipe: str | Path,
    folds: int,
    split: str,
    out: Path,
    overrides: Sequence[str],
    options: dict[str, Any] | None,
    settings: AuditSettings,
    top: int,
    progress: bool,
) -> tuple:
    """Train (or reuse) the fold models and score every image out of fold."""
    if not isinstance(data, str):
        raise UsageError(
            f"With a {arg('recipe')}, {arg('data')} is a 'KIND:ROOT' string (each fold's run "
            "builds its own dataset from it), not a dataset object."
        )
    path = resolve_recipe(recipe)  # a file, or an embedded recipe by name (e.g. "demo")
    bars = _FoldBars(progress)
    where = f"{data_name(data)} split {split!r}"
    try:
        entries, suspects, info, dataset = kfold_audit(
            path,
            folds,
            data,
            out,
            split=split,
            overrides=list(overrides),
            data_options=options,
            settings=settings,
            keep=top,
            callbacks=training_view(progress),
            on_fold=bars.fold,
            on_image=bars.image,
            gate=lambda run, found: agreement_gate(f"of {run}", where, settings.min_miou)(found),
        )
    finally:
        bars.stop()
    return entries, suspects, dataset, info | {"split": split, "recipe": str(path)}


class _FoldBars:
    """One progress bar per fold's scoring, stopped before the next fold trains (the training
    shows its own progress through the callbacks)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.bar, self.task, self.left = enabled, None, None, 0

    def fold(self, fold: int, images: int) -> None:
        self.bar = progress_bar(unit="img", enabled=self.enabled)
        self.bar.start()
        self.task, self.left = self.bar.add_task(f"audit fold {fold}", total=images), images

    def image(self) -> None:
        self.bar.advance(self.task)
        self.left -= 1
        if self.left == 0:
            self.stop()

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


# ---------------------------------------------------------------------------------------------
# rank
# ---------------------------------------------------------------------------------------------


@dataclass
class RankResult:
    """What :func:`rank` scored and wrote.

    Attributes:
        rows: one per image scored, most worth labelling first: ``rank`` (1, 2, ...),
            ``image``, ``score``, ``mean_entropy``, ``flip_disagreement`` (docs/trust.md).
        out: the CSV file (the same rows, numbers with 6 decimals).
        failed: the inputs that could not be read, with the reason (the others are ranked).
    """

    rows: list[dict[str, Any]]
    out: Path
    failed: list[str] = field(default_factory=list)


def rank(
    checkpoint: str | Path,
    inputs: str | Path | list[str | Path],
    *,
    out: str | Path,
    protocol: ProtocolArg = None,
    device: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> RankResult:
    """Order unlabelled images by what labelling them would teach the model: the mean entropy
    of its (calibrated) probabilities and how much it disagrees with itself on the mirror image
    (docs/trust.md, "rank"). The CSV ``out`` is written atomically.

    Args:
        checkpoint: a run directory, ``.pt``, ``save_pretrained`` folder or ``.onnx`` file.
        inputs: image files, folders (their images) or glob patterns.
        out: the CSV file to write (refused when it exists, unless ``overwrite``).
        protocol: ``None``: the run's own; ``"paper"``, ``"single"`` or an ``EvalProtocol``
            (its flips are replaced by the mirror image scored separately).
        progress: show a progress bar.

    Returns:
        a :class:`RankResult`; unreadable inputs are left out and listed in ``failed``.
    """
    device = device_of(device)
    chosen = protocol_of(checkpoint, protocol, device)
    images = expand_inputs(inputs)
    out = ensure_new_file(out, arg("out"), overwrite, example="rank.csv")
    predictor = inference_predictor.Predictor(checkpoint, device=device, protocol=chosen)
    rows, failed = [], []
    with progress_bar(unit="img", enabled=progress) as bar:
        task = bar.add_task("rank", total=len(images))
        for path in images:
            scores = _scores(predictor, path, chosen, failed)
            if scores is not None:
                rows.append({"image": str(path), **scores})
            bar.advance(task)
    rows.sort(key=lambda r: -r["score"])
    rows = [{"rank": k, **row} for k, row in enumerate(rows, 1)]
    atomic_write_text(out, _csv(rows))
    return RankResult(rows, out, failed)


def _scores(
    predictor: Any, path: Path, protocol: Any, failed: list[str]
) -> dict[str, float] | None:
    """``rank_scores`` of one image file, or ``None`` (and the reason in ``failed``)."""
    try:
        rgb = inference_predictor.load_rgb(path)
    except (DataError, FileNotFoundError) as err:
        failed.append(f"{path}: {getattr(err, 'problem', None) or err}")
        return None
    model, temperature = predictor.model, predictor.temperature
    return rank_scores(model, rgb, protocol, temperature=temperature, device=predictor.device)


def _csv(rows: list[dict[str, Any]]) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(RANK_FIELDS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {f: f"{row[f]:.6f}" if isinstance(row[f], float) else row[f] for f in RANK_FIELDS}
        )
    return text.getvalue()
