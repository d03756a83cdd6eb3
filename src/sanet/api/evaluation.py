"""``sanet.evaluate``: pixAcc, mIoU and per-class IoU of a checkpoint on a dataset split under the
run's protocol (``sanet eval``)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sanet._files import atomic_write_text
from sanet.api.common import (
    ProtocolArg,
    check_classes,
    data_name,
    device_of,
    open_dataset,
    precision_of,
)
from sanet.api.eval_state import (
    EVAL_OUTPUTS,
    STATE_NAME,
    EvalState,
    StateKeeper,
    check_out,
    resume_state,
)
from sanet.api.large_eval import is_large, stream_pair
from sanet.api.tiled import TILE_ABOVE_MP
from sanet.conventions import IGNORE_INDEX
from sanet.data import SegmentationDataset
from sanet.errors import DataError, Interrupted, UsageError, arg, speaks_cli
from sanet.inference.predictor import evaluate_pairs, open_model
from sanet.inference.runs import protocol_mode
from sanet.inference.tiled_job import model_fingerprint
from sanet.metrics import ConfusionMatrix
from sanet.progress import progress_bar
from sanet.training.runtime import StopFlag
from sanet.viz.visualize import mask_to_pil, plot_confusion_matrix, plot_per_class_iou, save_png


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
    amp: str = "none",
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
        amp: the precision (``"auto"`` ...: :func:`~sanet.api.common.precision_of`).
        out: write ``metrics.json``, ``iou_per_class.png`` and ``confusion_matrix.png`` here
            (refused when they exist, unless ``overwrite``); a stopped evaluation keeps its
            state there, and the same call continues it (``sanet.api.eval_state``).
        limit: evaluate only the first ``limit`` images.
        save_predictions: also write ``out/predictions/<image>.png`` (index PNGs).
        overwrite: replace eval's outputs in ``out``, or start an unfinished evaluation over.
        progress: show a progress bar.
        tile_above: images above this many megapixels are streamed block by block in flat
            memory (docs/large-images.md; not saved by ``save_predictions``); ``None``: never.

    Returns:
        an :class:`EvalResult`; unreadable images are left out and listed in ``failed``.

    Raises:
        sanet.errors.Interrupted: SIGINT or SIGTERM, after the image in progress.
    """
    chosen, precision = precision_of(checkpoint, protocol, device := device_of(device), amp)
    out, found = _out_checked(out, save_predictions, overwrite)  # fails now
    dataset = open_dataset(data, split, data_options)
    n = len(dataset) if limit is None else min(max(limit, 0), len(dataset))
    if n == 0:
        raise UsageError(f"{data_name(data)} split {split!r} has no images to evaluate.")
    model, meta = open_model(checkpoint, device)  # an .onnx file runs on onnxruntime
    check_classes(model, dataset, checkpoint)
    what = (checkpoint, data, split, data_options, n, chosen, save_predictions, tile_above)
    settings = _settings(model, *what)
    keeper = StateKeeper(out, resume_state(found, settings, out) if out else EvalState(settings))
    before, start = len(keeper.state.done), time.perf_counter()
    saved = out / "predictions" if save_predictions else None
    cm = _confusion(model, dataset, n, chosen, device, split, progress, saved, tile_above, keeper)
    names = {"checkpoint": str(checkpoint), "data": data_name(data), "split": split}
    names |= {"precision": precision.to_dict()}  # what ran, what was asked, why
    return _finish(cm, dataset, chosen, meta, keeper, before, start, names)


def _out_checked(
    out: str | Path | None, save_predictions: bool, overwrite: bool
) -> tuple[Path | None, Any]:
    """``out`` as a path and what eval finds in it, refused now when it cannot be used."""
    out = Path(out) if out is not None else None
    if save_predictions and out is None:
        raise UsageError(f"{arg('save_predictions', True)} writes into {arg('out')}; add it.")
    return out, None if out is None else check_out(out, save_predictions, overwrite)


def _finish(
    cm: ConfusionMatrix,
    dataset: Any,
    protocol: Any,
    meta: dict[str, Any],
    keeper: StateKeeper,
    before: int,
    start: float,
    names: dict[str, str],
) -> EvalResult:
    """The report of the images ``keeper`` counted (``before`` of them by an earlier call),
    written to its ``out`` (and the state removed: the evaluation is finished)."""
    done, failed, out = keeper.state.done, keeper.state.failed, keeper.out
    if not done:
        keeper.finish()  # nothing readable: nothing to continue
        return EvalResult({}, None, failed)
    seconds = time.perf_counter() - start
    report = _report(cm, dataset, protocol, len(done), len(done) - before, seconds, meta)
    report |= names | {"failed": failed}
    if out is not None:
        _write_outputs(out, report, cm)
        keeper.finish()
    return EvalResult(report, out, failed)


def _settings(
    model: Any,
    checkpoint: str | Path,
    data: str | SegmentationDataset,
    split: str,
    data_options: Mapping[str, Any] | None,
    n: int,
    protocol: Any,
    save_predictions: bool,
    tile_above: float | None,
) -> dict[str, Any]:
    """What an unfinished evaluation must share with the call that continues it."""
    path = Path(checkpoint)
    return {
        "checkpoint": str(path.resolve()) if path.exists() else str(checkpoint),
        "model": model_fingerprint(model),
        "data": data_name(data),
        "split": split,
        "data_options": dict(data_options or {}),
        "images": n,
        "protocol": {"mode": protocol_mode(protocol)} | protocol.to_dict(),
        "save_predictions": save_predictions,
        "tile_above": tile_above,
    }


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
    keeper: StateKeeper,
) -> ConfusionMatrix:
    """The confusion matrix of the first ``n`` samples, those ``keeper`` has counted already
    included; images above ``tile_above`` megapixels are streamed block by block; with
    ``saved`` each prediction of a small image goes there as an index PNG. Every image counted
    goes to ``keeper``; a signal stops after the image in progress."""
    cm = ConfusionMatrix(dataset.num_classes, ignore_index=IGNORE_INDEX, device=device)
    if keeper.state.matrix is not None:
        cm.matrix += torch.tensor(keeper.state.matrix, dtype=torch.int64, device=device)
    tried = keeper.state.tried
    todo = [i for i in range(n) if i not in tried]
    doing = "finishing this image, then saving the evaluation's state"
    with progress_bar(unit="img", enabled=progress) as bar, StopFlag(doing) as stop:
        task = bar.add_task(f"eval {split}", total=n, completed=n - len(todo))
        large: list[int] = []
        pairs = _Pairs(dataset, todo, keeper, stop, lambda: bar.advance(task), large, tile_above)

        def on_image(j: int, pred: Any) -> None:
            if saved is not None:
                _save_prediction(dataset, pairs.current, pred, saved)
            keeper.counted(pairs.current, cm.matrix)
            bar.advance(task)

        try:
            evaluate_pairs(model, pairs, cm.num_classes, protocol, device, on_image, cm=cm)
            _stream(model, dataset, large, cm, protocol, device, keeper, stop, bar, task)
        except BaseException:
            keeper.save()  # the images counted so far: the same call continues from there
            raise
        if stop.signal and len(keeper.state.tried) < n:
            keeper.save()
            raise _stopped(stop.signal, keeper, n)
    return cm


def _stopped(signal: str, keeper: StateKeeper, n: int) -> Interrupted:
    done = f"stopped by {signal} after {len(keeper.state.tried)} of {n} images"
    if keeper.out is None:
        return Interrupted(f"{done}; {arg('out')} would have kept its state.", signal)
    again = (
        "run the same command" if speaks_cli() else "call evaluate again with the same arguments"
    )
    return Interrupted(
        f"{done}; its state is kept in {keeper.out / STATE_NAME}: {again} to continue it (with "
        f"{arg('overwrite', True)}: to start over).",
        signal,
    )


class _Pairs:
    """The readable pairs of ``todo`` (dataset indices), in order; an unreadable one goes to
    ``keeper`` as failed (and ``skipped()``); an image above ``tile_above`` megapixels goes to
    ``large`` (streamed later, never read whole); ``current`` is the index of the pair last
    yielded. Stops when ``stop`` caught a signal."""

    def __init__(
        self,
        dataset: Any,
        todo: list[int],
        keeper: StateKeeper,
        stop: StopFlag,
        skipped: Callable[[], None],
        large: list[int],
        tile_above: float | None,
    ) -> None:
        self.dataset, self.todo, self.keeper, self.stop = dataset, todo, keeper, stop
        self.skipped, self.large, self.tile_above = skipped, large, tile_above
        self.current = -1

    def __iter__(self) -> Iterator[Any]:
        for i in self.todo:
            if self.stop.signal:
                return
            if is_large(self.dataset, i, self.tile_above):
                self.large.append(i)
                continue
            try:
                pair = self.dataset[i]
            except (DataError, FileNotFoundError) as err:
                self.keeper.counted(i, None, failed=str(err))
                self.skipped()
                continue
            self.current = i
            yield pair


def _stream(
    model: Any,
    dataset: Any,
    large: list[int],
    cm: ConfusionMatrix,
    protocol: Any,
    device: Any,
    keeper: StateKeeper,
    stop: StopFlag,
    bar: Any,
    task: Any,
) -> None:
    """Add the large samples to ``cm`` one by one, block by block (:func:`stream_pair`)."""
    for i in large:
        if stop.signal:
            return
        try:
            stream_pair(model, dataset, i, cm, protocol, device)
            keeper.counted(i, cm.matrix)
        except (DataError, FileNotFoundError) as err:
            keeper.counted(i, None, failed=str(err))
        bar.advance(task)


def _save_prediction(dataset: Any, index: int, pred: Any, folder: Path) -> None:
    """``folder/<image stem>.png`` (index PNG, dataset palette); generated images use the index."""
    image_path = Path(dataset.files(index)[0]) if hasattr(dataset, "files") else None
    stem = image_path.stem if image_path is not None and image_path.is_file() else f"{index:05d}"
    save_png(mask_to_pil(pred, getattr(dataset, "palette", None)), folder / f"{stem}.png")


def _report(
    cm: Any, dataset: Any, protocol: Any, n: int, new: int, seconds: float, meta: dict[str, Any]
) -> dict[str, Any]:
    """The ``metrics.json`` content: numbers, class names and the protocol used (``n`` images,
    ``new`` of them in this call: the others were counted by the evaluation it continued)."""
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
        "continued_from": n - new,
        "seconds": round(seconds, 3),
        "images_per_second": round(new / seconds, 4) if seconds > 0 else None,
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
