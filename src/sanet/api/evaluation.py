"""``sanet.evaluate``: pixAcc, mIoU and per-class IoU of a checkpoint on a dataset split under the
run's protocol (``sanet eval``)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
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
from sanet.api.large_eval import is_large, stream_large
from sanet.api.tiled import TILE_ABOVE_MP
from sanet.data import SegmentationDataset
from sanet.errors import DataError, UsageError, arg
from sanet.inference.predictor import evaluate_pairs, open_model
from sanet.inference.runs import protocol_mode
from sanet.progress import progress_bar
from sanet.viz.visualize import mask_to_pil, plot_confusion_matrix, plot_per_class_iou, save_png

EVAL_OUTPUTS = ("metrics.json", "iou_per_class.png", "confusion_matrix.png")  # in ``out``


@dataclass
class EvalResult:
    """What :func:`evaluate` measured.

    Attributes:
        metrics: the ``metrics.json`` content: ``pixAcc``, ``mIoU``, per-class ``IoU`` by name,
            the protocol used, the confusion matrix, timing.
        out: the folder ``metrics.json`` and the plots were written to (``None``: not written).
        failed: the images that could not be read (left out of the metrics), with the reason.
    """

    metrics: dict[str, Any]
    out: Path | None = None
    failed: list[str] = field(default_factory=list)

    @property
    def miou(self) -> float:
        return float(self.metrics["mIoU"])

    @property
    def pixacc(self) -> float:
        return float(self.metrics["pixAcc"])


def evaluate(
    checkpoint: str | Path,
    data: str | SegmentationDataset,
    *,
    split: str = "val",
    data_options: Mapping[str, Any] | None = None,
    protocol: ProtocolArg = None,
    device: str | None = None,
    out: str | Path | None = None,
    limit: int | None = None,
    save_predictions: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    tile_above: float | None = TILE_ABOVE_MP,
) -> EvalResult:
    """Evaluate ``checkpoint`` on ``split`` of ``data`` (pixAcc, mIoU, per-class IoU).

    Args:
        checkpoint: a run directory, a ``.pt`` checkpoint, a ``save_pretrained`` folder or an
            ``.onnx`` file (onnxruntime).
        data: ``"KIND:ROOT"`` (e.g. ``"voc:data/VOC2012"``, ``"synthetic"``) or a dataset.
        data_options: dataset options, as a recipe's ``data.options`` (e.g. a ``label_map``).
        protocol: ``None``: the run's own (its ``eval`` section); ``"paper"``, ``"single"``, or
            an :class:`~sanet.inference.EvalProtocol`.
        out: write ``metrics.json``, ``iou_per_class.png`` and ``confusion_matrix.png`` here
            (refused when they exist, unless ``overwrite``).
        limit: evaluate only the first ``limit`` images.
        save_predictions: also write ``out/predictions/<image>.png`` (index PNGs).
        progress: show a progress bar.
        tile_above: images above this many megapixels are streamed block by block in flat
            memory (docs/large-images.md; not saved by ``save_predictions``); ``None``: never.

    Returns:
        an :class:`EvalResult`; unreadable images are left out and listed in ``failed``.
    """
    device = device_of(device)
    chosen = protocol_of(checkpoint, protocol, device)
    out = Path(out) if out is not None else None
    if save_predictions and out is None:
        raise UsageError(f"{arg('save_predictions', True)} writes into {arg('out')}; add it.")
    if out is not None:  # a bad out fails now, not after the evaluation
        _check_outputs(out, save_predictions, overwrite)
    dataset = open_dataset(data, split, data_options)
    n = len(dataset) if limit is None else min(max(limit, 0), len(dataset))
    if n == 0:
        raise UsageError(f"{data_name(data)} split {split!r} has no images to evaluate.")
    model, meta = open_model(checkpoint, device)  # an .onnx file runs on onnxruntime
    check_classes(model, dataset, checkpoint)
    start, saved = time.perf_counter(), out / "predictions" if save_predictions else None
    cm, done, failed = _confusion(
        model, dataset, n, chosen, device, split, progress, saved, tile_above
    )
    if not done:
        return EvalResult({}, None, failed)
    report = _report(cm, dataset, chosen, len(done), time.perf_counter() - start, meta)
    report |= {"checkpoint": str(checkpoint), "data": data_name(data), "split": split}
    report["failed"] = failed
    if out is not None:
        _write_outputs(out, report, cm)
    return EvalResult(report, out, failed)


def _confusion(
    model: Any,
    dataset: Any,
    n: int,
    protocol: Any,
    device: str,
    split: str,
    progress: bool,
    saved: Path | None,
    tile_above: float | None,
) -> tuple[Any, list[int], list[str]]:
    """The confusion matrix of the first ``n`` samples (images above ``tile_above`` megapixels
    streamed block by block), the indices evaluated and the unreadable samples; with ``saved``
    each prediction of a small image goes there as an index PNG."""
    failed: list[str] = []
    done: list[int] = []
    large: list[int] = []
    with progress_bar(unit="img", enabled=progress) as bar:
        task = bar.add_task(f"eval {split}", total=n)
        skip = lambda: bar.advance(task)  # noqa: E731
        pairs = _readable_pairs(dataset, n, failed, done, skip, large, tile_above)

        def on_image(j: int, pred: Any) -> None:
            if saved is not None:
                _save_prediction(dataset, done[j], pred, saved)
            bar.advance(task)

        cm = evaluate_pairs(model, pairs, dataset.num_classes, protocol, device, on_image=on_image)
        stream_large(model, dataset, large, cm, protocol, device, done, failed, bar, task)
    return cm, done, failed


def _check_outputs(out: Path, save_predictions: bool, overwrite: bool) -> None:
    ensure_writable_dir(out / "predictions" if save_predictions else out, arg("out"))
    outputs = [out / name for name in EVAL_OUTPUTS]
    if save_predictions and (out / "predictions").is_dir():
        outputs += sorted((out / "predictions").iterdir())
    refuse_existing(outputs, arg("out"), overwrite)


def _readable_pairs(
    dataset: Any,
    n: int,
    failed: list[str],
    done: list[int],
    skipped: Any,
    large: list[int],
    tile_above: float | None,
) -> Iterator[Any]:
    """The first ``n`` pairs that can be read; the others go to ``failed`` (and ``skipped()``),
    the dataset index of each pair yielded to ``done``, that of each image above
    ``tile_above`` megapixels to ``large`` (streamed later, never read whole)."""
    for i in range(n):
        if is_large(dataset, i, tile_above):
            large.append(i)
            continue
        try:
            pair = dataset[i]
        except (DataError, FileNotFoundError) as err:
            failed.append(str(err))
            skipped()
            continue
        done.append(i)
        yield pair


def _save_prediction(dataset: Any, index: int, pred: Any, folder: Path) -> None:
    """``folder/<image stem>.png`` (index PNG, dataset palette); generated images use the index."""
    image_path = Path(dataset.files(index)[0]) if hasattr(dataset, "files") else None
    stem = image_path.stem if image_path is not None and image_path.is_file() else f"{index:05d}"
    save_png(mask_to_pil(pred, getattr(dataset, "palette", None)), folder / f"{stem}.png")


def _report(
    cm: Any, dataset: Any, protocol: Any, n: int, seconds: float, meta: dict[str, Any]
) -> dict[str, Any]:
    """The ``metrics.json`` content: numbers, class names and the protocol used."""
    result, names = cm.compute(), list(dataset.class_names)
    return {
        "pixAcc": result["pixAcc"],
        "mIoU": result["mIoU"],
        "IoU": dict(zip(names, result["IoU"], strict=True)),
        "class_names": names,
        "convention": result["convention"],
        "protocol": {"mode": protocol_mode(protocol)} | protocol.to_dict(),
        "num_images": n,
        "labelled_pixels": result["labelled_pixels"],
        "seconds": round(seconds, 3),
        "images_per_second": round(n / seconds, 4) if seconds > 0 else None,
        "confusion_matrix": cm.matrix_cpu().tolist(),
        "model_metadata": meta,
    }


def _write_outputs(out: Path, report: dict[str, Any], cm: Any) -> None:
    """``out/metrics.json``, ``out/iou_per_class.png`` and ``out/confusion_matrix.png``."""
    out.mkdir(parents=True, exist_ok=True)
    metrics, iou, confusion = (out / name for name in EVAL_OUTPUTS)
    atomic_write_text(metrics, json.dumps(report, indent=2, default=str) + "\n")
    names = report["class_names"]
    plot_per_class_iou(list(report["IoU"].values()), names, iou)
    plot_confusion_matrix(cm.matrix_cpu(), names, confusion)
