"""``sanet eval`` and ``sanet predict``.

Thin wrappers: they parse arguments, call :mod:`sanet.inference`, :mod:`sanet.metrics` and
:mod:`sanet.viz`, show progress and print results.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sanet.cli.common import (
    add_data_options,
    add_overwrite,
    add_protocol_args,
    check_classes,
    device_name,
    open_dataset,
    progress,
    protocol_from_args,
    protocol_mode,
    refuse_existing,
)
from sanet.errors import NotFoundError, UsageError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
EVAL_OUTPUTS = ("metrics.json", "iou_per_class.png", "confusion_matrix.png")  # in eval's --out


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register this area's subcommands on the `sanet` parser."""
    p = sub.add_parser("eval", help="pixAcc / mIoU / per-class IoU on a dataset split")
    add_protocol_args(p)
    p.add_argument("--data", required=True, metavar="KIND:PATH", help="e.g. voc:data/VOC2012")
    add_data_options(p)
    p.add_argument("--split", default="val")
    p.add_argument("--out", type=Path, help="write metrics.json and plots here")
    p.add_argument("--limit", type=int, help="evaluate only the first N images")
    p.add_argument(
        "--save-predictions", action="store_true", help="also write OUT/predictions/*.png masks"
    )
    add_overwrite(p, "files in --out from an earlier eval")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="index-PNG masks (and overlays) for images")
    add_protocol_args(p)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or globs")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--overlay", action="store_true", help="also write overlays with a legend")
    p.add_argument(
        "--unsure",
        action="store_true",
        help="255 on pixels below the calibrated risk threshold (sanet calibrate --risk)",
    )
    p.add_argument(
        "--confidence",
        action="store_true",
        help="also write <stem>_confidence.png: 255 × the calibrated largest probability",
    )
    add_overwrite(p, "masks and overlays in --out that exist")
    p.set_defaults(func=cmd_predict)


# ---------------------------------------------------------------------------------------------
# sanet eval
# ---------------------------------------------------------------------------------------------


def cmd_eval(args: argparse.Namespace) -> int:
    from sanet._files import ensure_writable_dir
    from sanet.errors import DataError
    from sanet.inference.predictor import evaluate, open_model

    protocol = protocol_from_args(args)
    device = device_name(args.device)
    if args.save_predictions and args.out is None:
        raise UsageError("--save-predictions writes into --out DIR; add --out.")
    if args.out is not None:  # a bad --out fails now, not after the evaluation
        ensure_writable_dir(
            args.out / "predictions" if args.save_predictions else args.out, "--out"
        )
        outputs = [args.out / name for name in EVAL_OUTPUTS]
        if args.save_predictions and (args.out / "predictions").is_dir():
            outputs += sorted((args.out / "predictions").iterdir())
        refuse_existing(outputs, "--out", args.overwrite)
    dataset = open_dataset(args.data, args.split, args.data_options)
    n = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    if n == 0:
        raise UsageError(f"{args.data} split {args.split!r} has no images to evaluate.")
    model, meta = open_model(args.checkpoint, device)  # an .onnx file runs on onnxruntime
    check_classes(model, dataset, args.checkpoint)
    start = time.perf_counter()
    failed: list[str] = []  # unreadable pairs: left out of the metrics, listed at the end
    done: list[int] = []  # dataset index of each evaluated image
    with progress() as bar:
        task = bar.add_task(f"eval {args.split}", total=n)

        def readable_pairs() -> Iterator[Any]:
            for i in range(n):
                try:
                    pair = dataset[i]
                except (DataError, FileNotFoundError) as err:
                    failed.append(str(err))
                    bar.advance(task)
                    continue
                done.append(i)
                yield pair

        def on_image(j: int, pred: Any) -> None:
            if args.save_predictions:
                _save_prediction(dataset, done[j], pred, args.out / "predictions")
            bar.advance(task)

        pairs = readable_pairs()
        cm = evaluate(model, pairs, dataset.num_classes, protocol, device, on_image=on_image)
    if done:
        _show_and_write(
            args, cm, dataset, protocol, done, failed, time.perf_counter() - start, meta
        )
    fix = "the metrics leave them out; fix them (`sanet check-data` lists every problem) and rerun"
    return report_failed("eval", failed, n, fix)


def _show_and_write(
    args: argparse.Namespace,
    cm: Any,
    dataset: Any,
    protocol: Any,
    done: list[int],
    failed: list[str],
    seconds: float,
    meta: dict,
) -> None:
    """Print the per-class table and the totals; write ``--out`` (metrics.json and plots)."""
    from rich.console import Console

    from sanet.metrics import per_class_table

    result, names, n = cm.compute(), list(dataset.class_names), len(done)
    console = Console()
    console.print(per_class_table(result, names, confusion=cm.matrix_cpu()))
    console.print(result["convention"], style="dim")
    console.print(
        f"pixAcc {result['pixAcc']:.4f}  mIoU {result['mIoU']:.4f}  ({n} image{'s' if n != 1 else ''})"
    )
    if args.out is not None:
        report = eval_report(result, names, protocol, cm, args, n, seconds, meta)
        report["failed"] = failed
        write_eval_outputs(args.out, report, result, names, cm)
        console.print(f"Wrote {args.out / 'metrics.json'} and plots.")


def _save_prediction(dataset: Any, index: int, pred: Any, folder: Path) -> None:
    """``folder/<image stem>.png`` (index PNG, dataset palette); generated images use the index."""
    from sanet.viz.visualize import mask_to_pil, save_png

    image_path = Path(dataset.files(index)[0]) if hasattr(dataset, "files") else None
    stem = image_path.stem if image_path is not None and image_path.is_file() else f"{index:05d}"
    save_png(mask_to_pil(pred, getattr(dataset, "palette", None)), folder / f"{stem}.png")


def eval_report(
    result: dict[str, Any],
    names: list[str],
    protocol: Any,
    cm: Any,
    args: argparse.Namespace,
    n: int,
    seconds: float,
    meta: dict[str, Any],
) -> dict[str, Any]:
    """The ``metrics.json`` content (SPEC §4): numbers, class names and the protocol used."""
    return {
        "pixAcc": result["pixAcc"],
        "mIoU": result["mIoU"],
        "IoU": dict(zip(names, result["IoU"], strict=True)),
        "class_names": names,
        "convention": result["convention"],
        "protocol": {"mode": protocol_mode(protocol)} | protocol.to_dict(),
        "checkpoint": str(args.checkpoint),
        "data": args.data,
        "split": args.split,
        "num_images": n,
        "labelled_pixels": result["labelled_pixels"],
        "seconds": round(seconds, 3),
        "images_per_second": round(n / seconds, 4) if seconds > 0 else None,
        "confusion_matrix": cm.matrix_cpu().tolist(),
        "model_metadata": meta,
    }


def write_eval_outputs(
    out: Path, report: dict[str, Any], result: dict[str, Any], names: list[str], cm: Any
) -> None:
    """``OUT/metrics.json``, ``OUT/iou_per_class.png`` and ``OUT/confusion_matrix.png``."""
    from sanet._files import atomic_write_text
    from sanet.viz.visualize import plot_confusion_matrix, plot_per_class_iou

    out.mkdir(parents=True, exist_ok=True)
    metrics, iou, confusion = (out / name for name in EVAL_OUTPUTS)
    atomic_write_text(metrics, json.dumps(report, indent=2, default=str) + "\n")
    plot_per_class_iou(result["IoU"], names, iou)
    plot_confusion_matrix(cm.matrix_cpu(), names, confusion)


# ---------------------------------------------------------------------------------------------
# sanet predict
# ---------------------------------------------------------------------------------------------


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, folders (their images, not recursive) and globs → a sorted, de-duplicated list."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.is_file():
            found.append(path)
        elif glob.has_magic(item):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True))
            found += [p for p in matches if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
        else:
            raise NotFoundError(f"Input {item!r} is not a file, a folder or a glob pattern.")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise NotFoundError(
            f"No images found in {inputs}; expected files with extensions "
            f"{', '.join(IMAGE_EXTENSIONS)}."
        )
    return unique


def output_plan(
    images: list[Path], out: Path, overlay: bool
) -> list[tuple[Path, Path, Path | None]]:
    """``(input, mask PNG, overlay PNG or None)`` per image: ``OUT/<stem>.png`` and
    ``OUT/overlays/<stem>.png``. Refuses name clashes and overwriting any input."""
    out = out.resolve()
    plan, seen = [], {}
    for image in images:
        if image.stem in seen:
            raise UsageError(
                f"{seen[image.stem]} and {image} would both be written as {image.stem}.png. "
                "Predict them into separate --out folders."
            )
        seen[image.stem] = image
        plan.append(
            (
                image,
                out / f"{image.stem}.png",
                out / "overlays" / f"{image.stem}.png" if overlay else None,
            )
        )
    inputs = set(images)
    for _, mask_path, overlay_path in plan:
        for target in (mask_path, overlay_path):
            if target is not None and target in inputs:
                raise UsageError(
                    f"Refusing to overwrite the input {target}. Choose an --out folder that does "
                    "not hold the input images."
                )
    return plan


def cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np
    from rich.console import Console

    from sanet._files import ensure_writable_dir
    from sanet.conventions import IGNORE_INDEX
    from sanet.errors import DataError
    from sanet.inference.confidence import ASSUMPTION
    from sanet.inference.predictor import Predictor, load_rgb
    from sanet.viz.visualize import confidence_image, mask_to_pil, overlay_with_legend, save_png

    protocol = protocol_from_args(args)
    device = device_name(args.device)
    plan = output_plan(expand_inputs(args.inputs), args.out, args.overlay)
    confidence_paths = confidence_plan(plan) if args.confidence else {}
    ensure_writable_dir(args.out / "overlays" if args.overlay else args.out, "--out")
    targets = [t for _, *paths in plan for t in paths if t] + list(confidence_paths.values())
    refuse_existing(targets, "--out", args.overwrite)
    predictor = Predictor(args.checkpoint, device=device, protocol=protocol)
    threshold = predictor.unsure_threshold() if args.unsure else None  # refused before any work
    failed: list[str] = []  # a bad image is reported at the end; the good ones are all written
    with progress() as bar:
        task = bar.add_task("predict", total=len(plan))
        windows = WindowProgress(bar, predictor.model, protocol)
        for image_path, mask_path, overlay_path in plan:
            try:
                rgb = load_rgb(image_path)
            except (DataError, FileNotFoundError) as err:
                failed.append(f"{image_path}: {getattr(err, 'problem', None) or err}")
                bar.advance(task)
                continue
            with windows.image(image_path, *rgb.shape[:2]):
                if args.unsure or args.confidence:
                    mask, confidence = predictor.predict_with_confidence(rgb)
                else:
                    mask = predictor.predict(rgb)
            if threshold is not None:
                mask = np.where(confidence < threshold, IGNORE_INDEX, mask)
            save_png(mask_to_pil(mask, predictor.palette), mask_path)
            if args.confidence:
                save_png(confidence_image(confidence), confidence_paths[mask_path])
            if overlay_path is not None:
                pic = overlay_with_legend(rgb, mask, predictor.class_names, predictor.palette)
                save_png(pic, overlay_path)
            bar.advance(task)
    done = len(plan) - len(failed)
    Console().print(
        f"Wrote {done} mask{'s' if done != 1 else ''} to {args.out}"
        + (" (+ overlays)" if args.overlay else "")
        + (" (+ confidence maps)" if args.confidence else "")
    )
    if threshold is not None:
        Console().print(
            f"255 = unsure: calibrated confidence below {threshold:.6g}, chosen so that the expected "
            f"share of sure-and-wrong pixels per image is ≤ {predictor.calibration.alpha}; the "
            f"guarantee {ASSUMPTION}."
        )
    return report_failed("predict", failed, len(plan), "fix or convert these files and rerun")


def confidence_plan(plan: list[tuple[Path, Path, Path | None]]) -> dict[Path, Path]:
    """``OUT/<stem>_confidence.png`` per mask path; refuses a name another output or an input
    already has (an image called ``a_confidence.png`` beside ``a.png``)."""
    taken = {p for row in plan for p in row if p is not None}
    paths = {mask: mask.with_name(f"{mask.stem}_confidence.png") for _, mask, _ in plan}
    for path in paths.values():
        if path in taken:
            raise UsageError(
                f"{path} is an input or another output as well as a confidence map. Rename the "
                "image, or predict it into another --out folder."
            )
    return paths


def report_failed(command: str, failed: list[str], total: int, fix: str) -> int:
    """Batch commands finish the good items, then list the bad ones here: exit 1 if any."""
    if not failed:
        return 0
    print(
        f"sanet {command}: {len(failed)} of {total} inputs failed (the others are done); {fix}:",
        file=sys.stderr,
    )
    for line in failed:
        print(f"  {line}", file=sys.stderr)
    return 1


class WindowProgress:
    """Progress inside an image that takes many forward passes (windows done / total), and a
    hint about ``--base-size`` the first time an image is huge at native size."""

    MIN_WINDOWS = 8  # fewer: the image bar alone moves often enough

    def __init__(self, bar: Any, model: Any, protocol: Any) -> None:
        self.bar, self.model, self.protocol, self.hinted = bar, model, protocol, False

    @contextlib.contextmanager
    def image(self, path: Path, height: int, width: int) -> Iterator[None]:
        from sanet.inference.protocol import window_count

        total = window_count(height, width, self.protocol)
        if total < self.MIN_WINDOWS:
            yield
            return
        self._hint(path, height, width, total)
        task = self.bar.add_task(f"  {path.name}", total=total, unit="win")

        def count(module: Any, inputs: tuple, output: Any) -> None:
            self.bar.advance(task, inputs[0].shape[0])  # windows (and mirrors) in this batch

        handle = self.model.register_forward_hook(count)
        try:
            yield
        finally:
            handle.remove()
            self.bar.remove_task(task)

    def _hint(self, path: Path, height: int, width: int, total: int) -> None:
        from sanet.inference.protocol import window_count

        if self.hinted or self.protocol.base_size is not None or max(height, width) <= 2048:
            return
        self.hinted = True
        small = window_count(height, width, dataclasses.replace(self.protocol, base_size=1024))
        self.bar.console.print(
            f"[yellow]hint[/yellow] {path.name} is {width}×{height} px: at native size it takes "
            f"{total} forward windows. --base-size 1024 predicts at a long side of 1024 px "
            f"({small} windows), the mask is resized back to {width}×{height}."
        )
