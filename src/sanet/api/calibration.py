"""``sanet.calibrate``: fit a model's temperature (and, given a risk level, its unsure threshold)
on a labelled split and store them with the model (``sanet calibrate``; docs/trust.md)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sanet._files import atomic_write_text, ensure_writable_dir, refuse_existing
from sanet.api.common import (
    ProtocolArg,
    check_classes,
    data_name,
    device_of,
    open_dataset,
    precision_of,
)
from sanet.data import SegmentationDataset
from sanet.errors import NotWritableError, OutputExistsError, UsageError, arg
from sanet.inference.runs import embedded_run_config, protocol_mode
from sanet.models import registry
from sanet.progress import progress_bar
from sanet.trust import calibration as fitting
from sanet.trust.plots import plot_reliability
from sanet.trust.risk import RiskSpec
from sanet.trust.store import (
    copy_model,
    describe,
    pretrained_folder,
    store_calibration,
    stored_calibration,
)

logger = logging.getLogger(__name__)

CALIBRATION_OUTPUTS = ("calibration.json", "reliability.png")  # in ``out``


@dataclass
class CalibrationResult:
    """What :func:`calibrate` fitted, measured and wrote.

    Attributes:
        temperature: ``T``; calibrated probabilities use ``softmax(logits / T)`` in every forward.
        ece_before: top-label ECE of the raw probabilities (15 bins, all labelled pixels).
        ece_after: the same of the calibrated probabilities.
        nll_before: mean ``−log p[label]`` over the labelled pixels, raw.
        nll_after: the same, calibrated.
        threshold: with ``risk``, the calibrated confidence below which a pixel is unsure (with
            ``per_class`` the global one: each class applies at least it, ``record["risk"]``).
        alpha: the risk level that threshold was chosen for (``None`` without ``risk``).
        record: the ``calibration.json`` content (per-class ECE, reliability bins, the fit,
            the protocol, the risk record with its per-image view, the reference ...).
        report: ``calibration.json``.
        plot: ``reliability.png``.
        stored: the model's ``config.json`` that now carries the calibration.
        mirror: the model's own calibration folder, when ``out`` is another one and that folder
            held the files of the calibration replaced: it was rewritten with the new files, so
            that it never disagrees with the model (else ``None``).
    """

    temperature: float
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    threshold: float | None
    alpha: float | None
    record: dict[str, Any] = field(repr=False)
    report: Path
    plot: Path
    stored: Path
    mirror: Path | None = None


def calibrate(
    checkpoint: str | Path,
    data: str | SegmentationDataset,
    *,
    split: str = "val",
    data_options: Mapping[str, Any] | None = None,
    risk: float | None = None,
    per_image: float | None = None,
    confidence_level: float = 0.9,
    per_class: bool = False,
    out: str | Path | None = None,
    out_model: str | Path | None = None,
    limit: int | None = None,
    fit_images: int = 200,
    protocol: ProtocolArg = None,
    device: str | None = None,
    amp: str = "none",
    replace: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> CalibrationResult:
    """Fit the temperature of ``checkpoint`` on ``split`` of ``data``, measure ECE and NLL before
    and after and, with ``risk``, choose the unsure threshold (docs/trust.md); store the record
    and the images' reference statistics in the model's ``config.json`` (weights untouched).
    Returns a :class:`CalibrationResult`.

    Args:
        checkpoint: a run directory (its ``model/``) or a ``save_pretrained`` folder.
        data: ``"KIND:ROOT"`` (e.g. ``"folder:data/mine"``) or a dataset.
        split: the labelled split to calibrate on; not one the model was trained on.
        data_options: dataset options, as a recipe's ``data.options``.
        risk: ``α``: the threshold keeps the expected share of sure-and-wrong labelled pixels
            per image ≤ ``α`` (conformal risk control; needs ``1/α − 1`` images).
        per_image: ``δ``: instead, with probability ``confidence_level`` over the calibration
            images, at most a share ``δ`` of images have more than ``α`` sure and wrong.
        confidence_level: ``1 − ε`` of ``per_image`` (0.9).
        per_class: also a threshold per predicted class (each ≥ the global one).
        out: ``calibration.json`` and ``reliability.png`` (default ``RUN/calibration``).
        out_model: store the calibration in a copy of the model written to this new folder.
        limit, fit_images: use the first ``limit`` images; fit ``T`` on ``fit_images`` of them.
        protocol: ``None``: the run's own; ``"paper"``, ``"single"`` or an ``EvalProtocol``.
        amp: the precision (``"auto"`` ...: :func:`~sanet.api.common.precision_of`).
        replace: replace the calibration the model carries (default: refuse, naming it).
        overwrite, progress: replace the files in ``out`` (default: refuse); progress bars.
    """
    source = pretrained_folder(checkpoint)  # a .pt or .onnx file is refused first
    (spec := RiskSpec(risk, per_image, confidence_level, per_class)).check(None)
    chosen, precision = precision_of(checkpoint, protocol, device := device_of(device), amp)
    fitting.fit_subset([], fit_images)  # a bad fit_images fails now
    target = _target(source, out_model, replace, risk)
    dataset, n = _images(data, split, data_options, limit, spec)
    report, plot, mirror = _outputs(target, out, overwrite, replace)
    model, _ = registry.load_model(source)
    check_classes(model, dataset, checkpoint)
    record = _fit(model, dataset, chosen, n, device, spec, fit_images, progress)
    record.update(data=data_name(data), split=split, checkpoint=str(checkpoint))
    record.update(protocol_mode=protocol_mode(chosen), precision=precision.to_dict())
    stored = _write(record, source, target, [report.parent, mirror])
    return _result(record, report, plot, stored, mirror)


def _write(record: dict[str, Any], source: Path, target: Path, folders: list) -> Path:
    """The report and figure in each of ``folders`` (``None``s skipped), then the record in the
    model folder ``target`` (a copy of ``source`` made first when they differ)."""
    if target != source:  # the copy carries the run's protocol (it lies outside the run)
        copy_model(source, target, run_config=embedded_run_config(source))
    for folder in folders:
        if folder is not None:
            report, plot = (folder / name for name in CALIBRATION_OUTPUTS)
            atomic_write_text(report, json.dumps(record, indent=1) + "\n")
            plot_reliability(record, plot)
    stored = store_calibration(target, record)
    logger.info("calibration T = %.4g stored in %s", record["temperature"], stored)
    return stored


def _target(source: Path, out_model: str | Path | None, replace: bool, risk: float | None) -> Path:
    """The model folder the calibration goes into: ``source``, or its copy ``out_model``.
    Refuses, before any work, to replace a stored calibration without ``replace`` and a model
    folder that cannot be written (offering ``out_model``)."""
    if out_model is not None:
        target = Path(out_model)
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise OutputExistsError(
                f"{arg('out_model')} {str(target)!r} already exists; nothing was written. Give a "
                "new folder: the calibrated copy of the model is written there."
            )
        ensure_writable_dir(target, arg("out_model"))
        return target
    stored = stored_calibration(source)
    if stored and not replace:
        dropped = (
            " and drop its risk threshold"
            if risk is None and (stored.get("risk") or {}).get("threshold") is not None
            else ""
        )
        raise OutputExistsError(
            f"The model in {str(source)!r} already carries a calibration ({describe(stored)}); "
            f"calibrating again would replace it{dropped}. Nothing was written. Pass "
            f"{arg('replace', True)} to replace it, or give {arg('out_model')} a new folder to "
            "store the new calibration in a copy of the model."
        )
    try:
        ensure_writable_dir(source, "the model folder")
    except NotWritableError as err:
        raise NotWritableError(
            f"The model folder {str(source)!r} is read-only, and calibrate stores the "
            f"calibration in its config.json. Give {arg('out_model')} a new folder you can "
            "write to: a calibrated copy of the model (its weights and the calibration) is "
            "written there."
        ) from err
    return source


def _images(
    data: str | SegmentationDataset,
    split: str,
    options: Mapping[str, Any] | None,
    limit: int | None,
    spec: RiskSpec,
) -> tuple[Any, int]:
    """The dataset and how many of its images to use; refuses none, and a risk request these
    images cannot meet."""
    dataset = open_dataset(data, split, options)
    if len(dataset) == 0:
        raise UsageError(f"{data_name(data)} split {split!r} has no images to calibrate on.")
    if limit is not None and limit < 1:
        raise UsageError(
            f"{arg('limit', limit)} leaves no image to calibrate on ({data_name(data)} split "
            f"{split!r} has {len(dataset)}). Give {arg('limit')} of at least 1, or leave it out "
            "to use every image."
        )
    n = len(dataset) if limit is None else min(limit, len(dataset))
    spec.check(n)
    return dataset, n


def _outputs(
    folder: Path, out: str | Path | None, overwrite: bool, replace: bool
) -> tuple[Path, Path, Path | None]:
    """``calibration.json`` and ``reliability.png`` in ``out`` (default: the model's own
    calibration folder, ``calibration/`` beside the model folder), and that own folder when
    ``out`` is another one and it holds calibration files (they would disagree with the model:
    they are rewritten too). Checked before any work."""
    home = folder.parent / "calibration"
    out = Path(out) if out is not None else home
    ensure_writable_dir(out, arg("out"))
    report, plot = (out / name for name in CALIBRATION_OUTPUTS)
    own = out.resolve() == home.resolve()
    refuse_existing([report, plot], arg("out"), overwrite or (replace and own))
    mirror = None
    if not own and (home / CALIBRATION_OUTPUTS[0]).exists():
        mirror = home
        ensure_writable_dir(home, "the model's calibration folder")
        files = [home / name for name in CALIBRATION_OUTPUTS]
        refuse_existing(files, "the model's calibration folder", overwrite or replace)
    return report, plot, mirror


def _fit(
    model: Any,
    dataset: Any,
    protocol: Any,
    n: int,
    device: str,
    spec: RiskSpec,
    fit_images: int,
    progress: bool,
) -> dict[str, Any]:
    """:func:`~sanet.trust.calibration.fit_calibration` on the first ``n`` images, with a bar
    for each pass."""
    with progress_bar(unit="img", enabled=progress) as bar:
        tasks = {
            "fit": bar.add_task(
                "fit temperature", total=len(fitting.fit_subset(range(n), fit_images))
            ),
            "measure": bar.add_task("measure", total=n),
        }
        return fitting.fit_calibration(
            model,
            dataset,
            dataset.class_names,
            protocol,
            indices=range(n),
            device=device,
            alpha=spec.alpha,
            per_image=spec.per_image,
            confidence_level=spec.confidence_level,
            per_class=spec.per_class,
            fit_images=fit_images,
            on_image=lambda stage: bar.advance(tasks[stage]),
        )


def _result(
    record: dict[str, Any], report: Path, plot: Path, stored: Path, mirror: Path | None
) -> CalibrationResult:
    risk = record.get("risk") or {}
    return CalibrationResult(
        temperature=record["temperature"],
        ece_before=record["ece_before"],
        ece_after=record["ece_after"],
        nll_before=record["nll_before"],
        nll_after=record["nll_after"],
        threshold=risk.get("threshold"),
        alpha=risk.get("alpha"),
        record=record,
        report=report,
        plot=plot,
        stored=stored,
        mirror=mirror,
    )
