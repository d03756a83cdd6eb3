"""``sanet export --int8`` and ``--outputs``: the flags, their checks and the int8 export.

Kept apart from ``cli/deploy.py`` (which registers ``export``) so that the int8 path reads in
one place: which images calibrate, which evaluate, and the one line a refusal prints.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from sanet.errors import UsageError

logger = logging.getLogger(__name__)

DEFAULT_CALIB_IMAGES, DEFAULT_EVAL_IMAGES = 32, 100
_INT8_ONLY = ("calib_data", "eval_data", "calib_images", "eval_images", "max_miou_drop")


def add_export_args(p: argparse.ArgumentParser) -> None:
    """``--outputs`` and the ``--int8`` flags of ``sanet export``."""
    p.add_argument(
        "--outputs",
        default="logits",
        metavar="LIST",
        help="graph outputs, comma-separated: logits (default), mask (uint8 arg-max), "
        "confidence (uint8, 255 × calibrated top probability; needs `sanet calibrate`)",
    )
    q = p.add_argument_group("int8 (onnxruntime static quantization, gated on mIoU)")
    q.add_argument("--int8", action="store_true", help="write a QDQ int8 file (needs --calib-data)")
    q.add_argument("--calib-data", metavar="KIND:ROOT", help="images to calibrate on")
    q.add_argument("--calib-split", default="train", help="calibration split (train)")
    q.add_argument(
        "--calib-images",
        type=int,
        default=None,
        metavar="N",
        help=f"calibration images, spread over the split ({DEFAULT_CALIB_IMAGES})",
    )
    q.add_argument(
        "--eval-data", metavar="KIND:ROOT", help="images the gate evaluates (default --calib-data)"
    )
    q.add_argument("--eval-split", default="val", help="evaluation split (val)")
    q.add_argument(
        "--eval-images",
        type=int,
        default=None,
        metavar="N",
        help=f"evaluation images, spread over the split ({DEFAULT_EVAL_IMAGES})",
    )
    q.add_argument(
        "--max-miou-drop",
        type=float,
        default=None,
        metavar="D",
        help="refuse to write when fp32 mIoU − int8 mIoU > D (0.01)",
    )


def check_export_args(args: argparse.Namespace) -> tuple[str, ...]:
    """Refuse contradictory or impossible flags before any work; returns the outputs."""
    from sanet.exporting.outputs import parse_outputs

    outputs = parse_outputs(args.outputs)
    if not args.int8:
        given = [f"--{n.replace('_', '-')}" for n in _INT8_ONLY if getattr(args, n) is not None]
        if given:
            raise UsageError(f"{', '.join(given)} only apply with --int8; add --int8.")
        return outputs
    if not args.calib_data:
        raise UsageError(
            "--int8 needs --calib-data KIND:ROOT: images to calibrate on, prepared as "
            "inference prepares them (e.g. --calib-data voc:data/VOC2012)."
        )
    for flag in ("calib_images", "eval_images"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be at least 1, got {value}.")
    drop = args.max_miou_drop
    if drop is not None and not -1.0 <= drop <= 1.0:  # `not` also refuses NaN
        raise UsageError(
            f"--max-miou-drop must be an mIoU difference between -1 and 1, got {drop} "
            "(e.g. 0.01: one point)."
        )
    eval_data = args.eval_data or args.calib_data
    if (eval_data, args.eval_split) == (args.calib_data, args.calib_split):
        raise UsageError(
            f"The gate would evaluate on the calibration images ({args.calib_data} split "
            f"{args.calib_split!r}); expected unseen images. Choose another --eval-split or "
            "--calib-split."
        )
    return outputs


def open_split(spec: str, split: str, flag: str, checkpoint: str) -> Any:
    """The dataset of ``spec`` and ``split``; a run's ``data.options`` apply when ``spec`` is
    the run's dataset kind (the demo's synthetic scenes at their size and seed)."""
    from sanet.cli.common import run_config
    from sanet.data import build_dataset, parse_data_spec

    try:
        kind, root = parse_data_spec(spec)
    except ValueError as err:
        raise UsageError(str(err).replace("--data", flag, 1)) from None
    data = run_config(checkpoint).get("data") or {}
    options = dict(data.get("options") or {}) if data.get("dataset") == kind else {}
    if options:
        logger.info("%s: the run's data.options %s", flag, options)
    dataset = build_dataset(kind, root, split=split, **options)
    if len(dataset) == 0:
        raise UsageError(f"{flag} {spec} split {split!r} has no images.")
    return dataset


def spread(total: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``range(total)`` (all of them when fewer)."""
    if count >= total:
        return list(range(total))
    return sorted({round(i * (total - 1) / max(count - 1, 1)) for i in range(count)})


def export_int8_from_args(
    args: argparse.Namespace,
    model: Any,
    metadata: dict[str, Any],
    protocol: Any,
    size: int,
    opset: int,
    outputs: tuple[str, ...],
    temperature: float | None,
) -> dict[str, Any]:
    """Read the calibration and evaluation images and run :func:`~sanet.exporting.quantize.
    export_int8`; prints what the gate measured."""
    from sanet.cli.common import check_classes
    from sanet.exporting.export import ODD_SIZES
    from sanet.exporting.quantize import DEFAULT_MAX_DROP, Int8Data, export_int8

    calib = open_split(args.calib_data, args.calib_split, "--calib-data", args.checkpoint)
    eval_spec = args.eval_data or args.calib_data
    evals = open_split(eval_spec, args.eval_split, "--eval-data", args.checkpoint)
    for dataset in (calib, evals):
        check_classes(model, dataset, args.checkpoint)
    calib_idx = spread(len(calib), args.calib_images or DEFAULT_CALIB_IMAGES)
    eval_idx = spread(len(evals), args.eval_images or DEFAULT_EVAL_IMAGES)
    max_drop = DEFAULT_MAX_DROP if args.max_miou_drop is None else args.max_miou_drop
    data = Int8Data(
        calibration=[calib[i][0] for i in calib_idx],
        evaluation=[evals[i] for i in eval_idx],
        calibration_source={"data": args.calib_data, "split": args.calib_split},
        evaluation_source={"data": eval_spec, "split": args.eval_split},
        max_drop=max_drop,
    )
    example = (int(size), int(size))
    written = export_int8(
        model,
        args.out,
        metadata,
        data,
        protocol,
        example_size=example,
        opset=opset,
        parity_sizes=[example, *(s for s in ODD_SIZES if s != example)],
        check=args.check,
        outputs=outputs,
        temperature=temperature,
    )
    q = written["quantization"]
    m, s, cpu = q["miou"], q["speedup"], q["cpu"]
    flags = [f for f in ("avx512_vnni", "avx_vnni", "amx") if cpu.get(f)] or ["no VNNI"]
    print(
        f"int8 (quantized from the fp32 graph checked below): mIoU {m['fp32']:.4f} (fp32) → "
        f"{m['int8']:.4f} (int8), drop {m['drop']:.4f} ≤ "
        f"{m['max_drop']:g} on {m['data'].rstrip(':')} {m['split']} ({m['images']} images); "
        f"{s['ratio']:.2f}× the fp32 speed at {s['size'][0]}×{s['size'][1]}, {s['threads']} "
        f"threads ({cpu['name']}: {', '.join(flags)}; {q['activations']} activations, "
        f"reduce_range {q['reduce_range']})"
    )
    return written
