"""``sanet eval`` and ``sanet predict``: flags → :func:`sanet.evaluate` /
:func:`sanet.predict_files` → printed results."""

from __future__ import annotations

import argparse
from pathlib import Path

from sanet.cli.common import (
    add_data_options,
    add_overwrite,
    add_protocol_args,
    parse_data_options,
    protocol_from_args,
    report_failed,
)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``eval`` and ``predict``."""
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


def cmd_eval(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console

    from sanet.api import evaluate
    from sanet.metrics import per_class_table

    result = evaluate(
        args.checkpoint,
        args.data,
        split=args.split,
        data_options=parse_data_options(args.data_options),
        protocol=protocol_from_args(args),
        device=args.device,
        out=args.out,
        limit=args.limit,
        save_predictions=args.save_predictions,
        overwrite=args.overwrite,
        progress=True,
    )
    m, console = result.metrics, Console()
    if m:
        shown = {"IoU": list(m["IoU"].values()), "pixAcc": m["pixAcc"], "mIoU": m["mIoU"]}
        confusion = torch.tensor(m["confusion_matrix"])
        console.print(per_class_table(shown, m["class_names"], confusion=confusion))
        console.print(m["convention"], style="dim")
        n = m["num_images"]
        console.print(
            f"pixAcc {m['pixAcc']:.4f}  mIoU {m['mIoU']:.4f}  ({n} image{'s' * (n != 1)})"
        )
        if result.out is not None:
            console.print(f"Wrote {result.out / 'metrics.json'} and plots.")
    fix = "the metrics leave them out; fix them (`sanet check-data` lists every problem) and rerun"
    total = len(result.failed) + (m.get("num_images", 0) if m else 0)
    return report_failed("eval", result.failed, total, fix)


def cmd_predict(args: argparse.Namespace) -> int:
    from rich.console import Console

    from sanet.api import predict_files

    result = predict_files(
        args.checkpoint,
        args.inputs,
        args.out,
        overlay=args.overlay,
        unsure=args.unsure,
        confidence=args.confidence,
        protocol=protocol_from_args(args),
        device=args.device,
        overwrite=args.overwrite,
        progress=True,
    )
    done, console = len(result.masks), Console()
    console.print(
        f"Wrote {done} mask{'s' if done != 1 else ''} to {args.out}"
        + (" (+ overlays)" if args.overlay else "")
        + (" (+ confidence maps)" if args.confidence else "")
    )
    if result.threshold is not None:
        console.print(
            f"255 = unsure: calibrated confidence below {result.threshold:.6g}; {result.guarantee}."
        )
    total = done + len(result.failed)
    return report_failed("predict", result.failed, total, "fix or convert these files and rerun")
