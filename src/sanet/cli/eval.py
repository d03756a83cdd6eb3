"""``sanet eval`` and ``sanet predict``: flags → :func:`sanet.evaluate` /
:func:`sanet.predict_files` → printed results."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sanet.cli.common import (
    add_data_options,
    add_overwrite,
    add_protocol_args,
    call,
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
    p.add_argument(
        "--tile-above",
        type=float,
        default=64.0,
        metavar="MP",
        help="stream images above this many megapixels block by block (default 64)",
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
        help="255 on pixels below the calibrated risk threshold (sanet calibrate --risk); tiled: "
        "<stem>_unsure.tif, 1 = unsure",
    )
    p.add_argument(
        "--confidence",
        action="store_true",
        help="also write <stem>_confidence.png (tiled: .tif): 255 × the calibrated largest "
        "probability",
    )
    add_tiled_args(p)
    add_overwrite(p, "masks and overlays in --out that exist")
    p.set_defaults(func=cmd_predict)


def add_tiled_args(p: argparse.ArgumentParser) -> None:
    """Prediction of large images tile by tile into GeoTIFF (docs/large-images.md)."""
    p.add_argument(
        "--tiled",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="predict tile by tile into GeoTIFF OUT/<stem>.tif, in flat memory (default: images "
        "above --tile-above megapixels)",
    )
    p.add_argument(
        "--tile-above", type=float, default=64.0, metavar="MP", help="see --tiled (default 64)"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue a stopped tiled prediction from its last completed block",
    )
    p.add_argument(
        "--bands", type=_ints, metavar="R,G,B", help="bands of a multispectral raster, e.g. 4,3,2"
    )
    p.add_argument(
        "--value-range",
        type=_floats,
        metavar="LOW,HIGH",
        help="values shown as black and white (16-bit default 0,65535; float rasters need it)",
    )
    p.add_argument("--tile-size", type=int, default=512, help="GeoTIFF tile size (default 512)")
    p.add_argument("--strip-width", type=int, default=2048, help="strip width (default 2048)")


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated band numbers, got {text!r}"
        ) from None


def _floats(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH (two numbers), got {text!r}") from None
    return low, high


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
        protocol=protocol_from_args(args, with_amp=False),
        device=args.device,
        amp=args.amp,
        out=args.out,
        limit=args.limit,
        save_predictions=args.save_predictions,
        overwrite=args.overwrite,
        progress=True,
        tile_above=args.tile_above,
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

    console = Console()
    protocol = protocol_from_args(args, with_amp=False)  # --amp: predict_files' own
    result = call(predict_files, args, protocol=protocol, progress=True)
    _print_predicted(console, args, result)
    total = len(result.masks) + len(result.failed)
    return report_failed("predict", result.failed, total, "fix or convert these files and rerun")


def _print_predicted(console: Any, args: argparse.Namespace, result: Any) -> None:
    done = len(result.masks)
    console.print(
        f"Wrote {done} mask{'s' if done != 1 else ''} to {args.out}"
        + (" (+ overlays)" if args.overlay and len(result.tiled) < done else "")
        + (" (+ confidence maps)" if args.confidence else "")
    )
    for t in result.tiled:
        how = "already complete" if t.complete else f"{t.seconds:.1f} s"
        if t.resumed_from and not t.complete:
            how += f", resumed at block {t.resumed_from + 1} of {t.blocks}"
        console.print(f"  {t.mask} ({t.width}×{t.height} px, GeoTIFF, {how})")
    if result.threshold is not None:
        where = "1 in <stem>_unsure.tif" if result.tiled else "255"
        console.print(
            f"{where} = unsure: calibrated confidence below {result.threshold:.6g}; "
            f"{result.guarantee}."
        )
