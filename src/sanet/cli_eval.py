"""`sanet eval`, `sanet predict`, `sanet explain` and `sanet figure5` (see cli.py).

Thin wrappers: they parse arguments, call :mod:`sanet.inference`, :mod:`sanet.metrics`,
:mod:`sanet.visualize` and :mod:`sanet.figures`, show progress and print results.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register this area's subcommands on the `sanet` parser."""
    p = sub.add_parser("eval", help="pixAcc / mIoU / per-class IoU on a dataset split")
    _common(p)
    p.add_argument("--data", required=True, metavar="KIND:PATH", help="e.g. voc:data/VOC2012")
    p.add_argument("--split", default="val")
    p.add_argument("--out", type=Path, help="write metrics.json and plots here")
    p.add_argument("--limit", type=int, help="evaluate only the first N images")
    p.add_argument(
        "--save-predictions", action="store_true", help="also write OUT/predictions/*.png masks"
    )
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="index-PNG masks (and overlays) for images")
    _common(p)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or globs")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--overlay", action="store_true", help="also write overlays with a legend")
    p.set_defaults(func=cmd_predict)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="run dir, .pt or save_pretrained folder")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if any)")
    p.add_argument("--ms-flip", action="store_true", help="the paper's multi-scale + flip")
    p.add_argument("--scales", help="comma-separated scales for --ms-flip (0.5,...,1.75)")
    p.add_argument(
        "--base-size", type=int,
        help="long side at scale 1: --ms-flip default 520 (or the run's data.base_size); "
        "without --ms-flip, resize to it instead of predicting at native size",
    )  # fmt: skip
    p.add_argument("--crop-size", type=int, help="sliding-window size (480)")
    p.add_argument("--stride", type=int, help="sliding-window stride (320)")
    p.add_argument("--window-batch", type=int, default=4, help="windows per forward pass")
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none",
                   help="autocast forward passes (GPU speed; recorded in the protocol)")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------


def _device(name: str | None) -> str:
    import torch

    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def _run_config(checkpoint: str) -> dict[str, Any]:
    """``config.yaml`` of a run directory (for its eval protocol), else ``{}``."""
    path = Path(checkpoint) / "config.yaml"
    if not path.is_file():
        return {}
    import yaml

    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        logger.warning("Ignoring unreadable %s (%s)", path, err)
        return {}


def _parse_floats(text: str, what: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{what} must be comma-separated numbers, got {text!r}.") from None


def protocol_from_args(args: argparse.Namespace) -> Any:
    """The evaluation protocol: flags, else the run's ``config.yaml``, else the paper's values."""
    from sanet.inference import PAPER_SCALES, EvalProtocol

    cfg = _run_config(args.checkpoint)
    ev, data = cfg.get("eval") or {}, cfg.get("data") or {}
    crop = args.crop_size or ev.get("crop_size") or 480
    stride = args.stride or ev.get("stride") or 320
    common = dict(
        crop_size=int(crop), stride=int(stride), window_batch=args.window_batch, amp=args.amp
    )
    if not args.ms_flip:
        if args.scales:
            raise ValueError("--scales applies to --ms-flip; add --ms-flip.")
        # single scale: native size, or the long side resized to --base-size (large photos)
        return EvalProtocol(base_size=args.base_size, **common)
    # A run's eval.scales count only when they are multi-scale: its default [1.0] is the
    # single-scale validation protocol used during training, not what --ms-flip asks for.
    run_scales = tuple(ev.get("scales") or ())
    scales = _parse_floats(args.scales, "--scales") if args.scales else None
    scales = scales or (run_scales if len(run_scales) > 1 else PAPER_SCALES)
    base = args.base_size or data.get("base_size") or 520
    return EvalProtocol(scales=tuple(scales), flip=True, base_size=int(base), **common)


def _progress() -> Any:
    from sanet.progress import progress_bar

    return progress_bar(unit="img")


def _dataset(spec: str, split: str) -> Any:
    from sanet.data import build_dataset, parse_data_spec

    kind, root = parse_data_spec(spec)
    return build_dataset(kind, root, split=split)


def _check_classes(model: Any, dataset: Any, checkpoint: str) -> None:
    if model.num_classes != dataset.num_classes:
        raise ValueError(
            f"The checkpoint {checkpoint!r} predicts {model.num_classes} classes but the dataset "
            f"has {dataset.num_classes}. Evaluate it on the dataset it was trained for."
        )


# ---------------------------------------------------------------------------------------------
# sanet eval
# ---------------------------------------------------------------------------------------------


def cmd_eval(args: argparse.Namespace) -> int:
    from rich.console import Console

    from sanet.checkpoint import load_model
    from sanet.inference import evaluate
    from sanet.metrics import per_class_table

    protocol = protocol_from_args(args)
    device = _device(args.device)
    dataset = _dataset(args.data, args.split)
    model, meta = load_model(args.checkpoint, map_location="cpu")
    _check_classes(model, dataset, args.checkpoint)
    n = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    if n == 0:
        raise ValueError(f"{args.data} split {args.split!r} has no images to evaluate.")
    if args.save_predictions and args.out is None:
        raise ValueError("--save-predictions writes into --out DIR; add --out.")
    start = time.perf_counter()
    with _progress() as bar:
        task = bar.add_task(f"eval {args.split}", total=n)

        def on_image(i: int, pred: Any) -> None:
            if args.save_predictions:
                _save_prediction(dataset, i, pred, args.out / "predictions")
            bar.advance(task)

        pairs = (dataset[i] for i in range(n))
        cm = evaluate(model, pairs, dataset.num_classes, protocol, device, on_image=on_image)
    seconds = time.perf_counter() - start
    result = cm.compute()
    names = list(dataset.class_names)
    console = Console()
    console.print(per_class_table(result, names, confusion=cm.matrix_cpu()))
    console.print(result["convention"], style="dim")
    console.print(
        f"pixAcc {result['pixAcc']:.4f}  mIoU {result['mIoU']:.4f}  ({n} image{'s' if n != 1 else ''})"
    )
    if args.out is not None:
        report = eval_report(result, names, protocol, cm, args, n, seconds, meta)
        write_eval_outputs(args.out, report, result, names, cm)
        console.print(f"Wrote {args.out / 'metrics.json'} and plots.")
    return 0


def _save_prediction(dataset: Any, index: int, pred: Any, folder: Path) -> None:
    """``folder/<image stem>.png`` (index PNG, dataset palette); generated images use the index."""
    from sanet.visualize import mask_to_pil, save_png

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
        "protocol": {"mode": "multi-scale+flip" if args.ms_flip else "single-scale"}
        | protocol.to_dict(),
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
    from sanet.checkpoint import atomic_write_text
    from sanet.visualize import plot_confusion_matrix, plot_per_class_iou

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps(report, indent=2, default=str) + "\n")
    plot_per_class_iou(result["IoU"], names, out / "iou_per_class.png")
    plot_confusion_matrix(cm.matrix_cpu(), names, out / "confusion_matrix.png")


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
            raise FileNotFoundError(f"Input {item!r} is not a file, a folder or a glob pattern.")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise FileNotFoundError(
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
            raise ValueError(
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
                raise ValueError(
                    f"Refusing to overwrite the input {target}. Choose an --out folder that does "
                    "not hold the input images."
                )
    return plan


def cmd_predict(args: argparse.Namespace) -> int:
    from rich.console import Console

    from sanet.inference import Predictor, load_rgb
    from sanet.visualize import mask_to_pil, overlay_with_legend, save_png

    protocol = protocol_from_args(args)
    plan = output_plan(expand_inputs(args.inputs), args.out, args.overlay)
    predictor = Predictor(args.checkpoint, device=_device(args.device), protocol=protocol)
    with _progress() as bar:
        task = bar.add_task("predict", total=len(plan))
        for image_path, mask_path, overlay_path in plan:
            rgb = load_rgb(image_path)
            mask = predictor.predict(rgb)
            save_png(mask_to_pil(mask, predictor.palette), mask_path)
            if overlay_path is not None:
                pic = overlay_with_legend(rgb, mask, predictor.class_names, predictor.palette)
                save_png(pic, overlay_path)
            bar.advance(task)
    Console().print(
        f"Wrote {len(plan)} mask{'s' if len(plan) != 1 else ''} to {args.out}"
        + (" (+ overlays)" if args.overlay else "")
    )
    return 0
