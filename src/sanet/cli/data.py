"""``sanet prepare`` and ``sanet check-data``: flags → :func:`sanet.prepare` /
:func:`sanet.check_data` → printed summaries and tables."""

from __future__ import annotations

import argparse
from pathlib import Path

from sanet.cli.common import add_data_options, call, parse_data_options, show


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register this area's subcommands on the `sanet` parser."""
    _add_prepare(sub)
    _add_check(sub)


# --------------------------------------------------------------------------- prepare


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="convert an official download into the layout sanet loads",
        description="Convert official dataset downloads (folders or archives) into the layouts "
        "of docs/datasets.md.",
    )
    kinds = p.add_subparsers(dest="prepare_kind", metavar="KIND", required=True)

    s = kinds.add_parser("synthetic", help="write the synthetic scenes in the folder layout")
    s.add_argument("--out", required=True, type=Path, help="output folder")
    s.add_argument("--num-train", type=int, default=512)
    s.add_argument("--num-val", type=int, default=64)
    s.add_argument("--size", type=int, default=128, help="image side in pixels")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--generator",
        choices=["scenes", "glyphs", "family"],
        default="scenes",
        help="scenes (the demo's), glyphs (other shapes and textures, for held-out checks) or "
        "family (one member of the scene family; needs --family)",
    )
    s.add_argument(
        "--family",
        type=int,
        metavar="SEED",
        help="write member SEED of the scene family (docs/datasets.md); its parameters go to "
        "family.json",
    )
    s.add_argument(
        "--format", dest="image_format", choices=["png", "jpg"], default="png", help="image format"
    )
    s.set_defaults(func=_run_prepare)

    v = kinds.add_parser(
        "voc-aug", help="SBD cls/*.mat + VOC2012 -> SegmentationClassAug + train_aug.txt"
    )
    v.add_argument("--sbd", required=True, help="benchmark.tgz or its benchmark_RELEASE folder")
    v.add_argument("--voc", required=True, help="VOCtrainval_11-May-2012.tar or VOC2012 folder")
    v.add_argument("--out", type=Path, help="output folder (default: the VOC2012 folder)")
    v.add_argument("--skip-checksum", action="store_true", help="do not verify archive MD5s")
    v.set_defaults(func=_run_prepare)

    c = kinds.add_parser(
        "pascal-context", help="trainval/*.mat (459 classes) -> 60-label PNGs + split lists"
    )
    c.add_argument("--context", required=True, help="trainval.tar.gz or its trainval folder")
    c.add_argument("--voc2010", required=True, help="VOCtrainval_03-May-2010.tar or VOC2010")
    c.add_argument("--labels59", help="the official 59_labels.txt (default: built-in list)")
    c.add_argument("--out", type=Path, help="output folder (default: the VOC2010 folder)")
    c.add_argument("--skip-checksum", action="store_true", help="do not verify archive MD5s")
    c.set_defaults(func=_run_prepare)


def _print_summary(title: str, summary: dict) -> None:
    from rich.console import Console

    Console(emoji=False).print(
        f"[bold]{title}[/bold] " + ", ".join(f"{k}={v}" for k, v in summary.items())
    )


def _run_prepare(args: argparse.Namespace) -> int:
    from sanet.api.data import PREPARE_OPTIONS, prepare

    kind = args.prepare_kind
    options = {key: getattr(args, key) for key in PREPARE_OPTIONS[kind]}
    result = prepare(kind, out=args.out, progress=True, **options)
    _print_summary(f"{kind}:", result.summary)
    if result.parameters:
        _print_summary("family member:", result.parameters)
    if kind == "synthetic":
        print(f"train with --data folder:{args.out}")
    return 0


# --------------------------------------------------------------------------- check-data


def _add_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check-data",
        help="scan a dataset for bad files and labels before training",
        description="Scan every image/mask pair: unreadable or truncated files, size mismatches, "
        "out-of-range labels, RGB masks, all-ignore masks, duplicates; over the split: fewer "
        "than 2 classes, 0/255 binary masks, one class only, absent classes, a large ignore "
        "share; class frequencies and suggested class weights. Exit code 1 when errors are "
        "found.",
    )
    p.add_argument("--data", required=True, help="KIND:PATH, e.g. voc:data/VOC2012 or synthetic")
    add_data_options(p)
    p.add_argument("--split", default="train")
    p.add_argument(
        "--out",
        type=Path,
        help="JSON report (default: check-data-KIND-SPLIT.json, replaced when it holds an "
        "earlier report)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--workers", type=int, default=None, help="decoding threads")
    p.add_argument("--show", type=int, default=20, help="issues listed on screen")
    p.set_defaults(func=_run_check)


def _run_check(args: argparse.Namespace) -> int:
    from sanet.api import check_data
    from sanet.api.reports import check_report

    options = parse_data_options(args.data_options)
    result = call(check_data, args, data_options=options, progress=True)
    show(*check_report(result.report, args.show), f"report: {result.path}", markup=True)
    return 1 if result.errors else 0
