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
    protocol_of,
)
from sanet.data import SegmentationDataset
from sanet.errors import UsageError, arg
from sanet.inference.runs import protocol_mode
from sanet.models import registry
from sanet.progress import progress_bar
from sanet.trust import calibration as fitting
from sanet.trust.plots import plot_reliability
from sanet.trust.store import pretrained_folder, store_calibration

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
        threshold: with ``risk``, the calibrated confidence below which a pixel is unsure.
        alpha: the risk level that threshold was chosen for (``None`` without ``risk``).
        record: the ``calibration.json`` content (per-class ECE, reliability bins, the fit,
            the protocol, the risk record ...).
        report: ``calibration.json``.
        plot: ``reliability.png``.
        stored: the model's ``config.json`` that now carries the calibration.
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


def calibrate(
    checkpoint: str | Path,
    data: str | SegmentationDataset,
    *,
    split: str = "val",
    data_options: Mapping[str, Any] | None = None,
    risk: float | None = None,
    out: str | Path | None = None,
    limit: int | None = None,
    fit_images: int = 200,
    protocol: ProtocolArg = None,
    device: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> CalibrationResult:
    """Fit the temperature of ``checkpoint`` on ``split`` of ``data`` (NLL, at most
    ``fit_images`` images), measure ECE and NLL before and after on every image and, with
    ``risk``, choose the unsure threshold (conformal risk control; docs/trust.md). The record
    is stored in the model's ``config.json`` (the weights are not touched), where ``Predictor``
    and ``sanet.export`` find it.

    Args:
        checkpoint: a run directory (its ``model/``) or a ``save_pretrained`` folder; a ``.pt``
            or ``.onnx`` file is refused (calibrate the run, then export).
        data: ``"KIND:ROOT"`` (e.g. ``"folder:data/mine"``) or a dataset.
        split: the labelled split to calibrate on; not one the model was trained on.
        data_options: dataset options, as a recipe's ``data.options``.
        risk: ``α``: also choose the confidence threshold that keeps the expected share of
            sure-and-wrong labelled pixels per image at most ``α`` (e.g. 0.05); it needs at
            least ``1/α − 1`` images.
        out: where ``calibration.json`` and ``reliability.png`` go (default: ``calibration/``
            beside the model folder, i.e. ``RUN/calibration``).
        limit: use only the first ``limit`` images.
        fit_images: at most this many images (evenly spaced) fit the temperature.
        protocol: ``None``: the run's own (its ``eval`` section); ``"paper"``, ``"single"`` or
            an :class:`~sanet.inference.EvalProtocol`. The calibration holds for this protocol.
        overwrite: replace ``calibration.json`` and ``reliability.png`` (default: refuse).
        progress: show progress bars.

    Returns:
        a :class:`CalibrationResult`.
    """
    folder = pretrained_folder(checkpoint)  # a .pt or .onnx file is refused first
    device = device_of(device)
    chosen = protocol_of(checkpoint, protocol, device)
    fitting.fit_subset([], fit_images)  # a bad fit_images fails now
    dataset, n = _images(data, split, data_options, limit, risk)
    report, plot = _outputs(folder, out, overwrite)
    model, _ = registry.load_model(folder)
    check_classes(model, dataset, checkpoint)
    record = _fit(model, dataset, chosen, n, device, risk, fit_images, progress)
    record.update(data=data_name(data), split=split, checkpoint=str(checkpoint))
    record["protocol_mode"] = protocol_mode(chosen)
    atomic_write_text(report, json.dumps(record, indent=1) + "\n")
    plot_reliability(record, plot)
    stored = store_calibration(folder, record)
    logger.info("calibration T = %.4g stored in %s", record["temperature"], stored)
    return _result(record, report, plot, stored)


def _images(
    data: str | SegmentationDataset,
    split: str,
    options: Mapping[str, Any] | None,
    limit: int | None,
    risk: float | None,
) -> tuple[Any, int]:
    """The dataset and how many of its images to use; refuses none, and a risk level these
    images cannot reach."""
    dataset = open_dataset(data, split, options)
    n = len(dataset) if limit is None else min(max(limit, 0), len(dataset))
    if n == 0:
        raise UsageError(f"{data_name(data)} split {split!r} has no images to calibrate on.")
    if risk is not None:
        fitting.check_risk_alpha(risk, n)
    return dataset, n


def _outputs(folder: Path, out: str | Path | None, overwrite: bool) -> tuple[Path, Path]:
    """``calibration.json`` and ``reliability.png`` in ``out`` (default ``calibration/`` beside
    the model folder), checked before any work, as is the model folder the record goes into."""
    out = Path(out) if out is not None else folder.parent / "calibration"
    ensure_writable_dir(out, arg("out"))
    report, plot = (out / name for name in CALIBRATION_OUTPUTS)
    refuse_existing([report, plot], arg("out"), overwrite)
    ensure_writable_dir(folder, "the model folder")  # the calibration is stored there
    return report, plot


def _fit(
    model: Any,
    dataset: Any,
    protocol: Any,
    n: int,
    device: str,
    risk: float | None,
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
            alpha=risk,
            fit_images=fit_images,
            on_image=lambda stage: bar.advance(tasks[stage]),
        )


def _result(record: dict[str, Any], report: Path, plot: Path, stored: Path) -> CalibrationResult:
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
    )
