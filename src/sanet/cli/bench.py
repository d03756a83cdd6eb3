"""``sanet bench``: flags → :func:`sanet.api.bench.bench` → the table (docs/benchmarks.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sanet.cli.common import call
from sanet.conventions import AMP_CHOICES

#: The GPU figures of docs/benchmarks.md (the compiled rows add ``--compile [MODE]``).
GPU_COMMAND = (
    "sanet bench --device cuda --models tv:fcn_resnet101 fcn:resnet101s sanet:resnet101s "
    "--size 512 --batch 16 --classes 59 --amp bf16 --channels-last --mode both --json bench.json"
)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``bench``."""
    p = sub.add_parser(
        "bench",
        help="images/s, FLOP/s and memory of our models and torchvision's, side by side",
        description="Measure peers in one process with the same settings; ratios are to the "
        "first --models entry. Random weights: speed does not depend on them.",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if any)")
    p.add_argument(
        "--models",
        nargs="+",
        metavar="KIND:BACKBONE|tv:NAME|onnx:PATH",
        help="peers, the first is the reference, e.g. tv:fcn_resnet101 sanet:resnet101s, or "
        "exported files such as onnx:fp32.onnx and onnx:int8.onnx with --mode infer "
        "(default: tv:fcn_resnet50 sanet:resnet50s on CPU, the R101 pair on CUDA)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads of torch and onnxruntime (default: torch's current setting)",
    )
    p.add_argument(
        "--mode",
        choices=["infer", "train", "both", "eval"],
        default="both",
        help="infer, train, both (default) or eval (one image, multi-scale + flip)",
    )
    _add_shape_args(p)
    _add_eval_args(p)
    _add_output_args(p)
    p.set_defaults(func=cmd_bench)


def _add_shape_args(p: argparse.ArgumentParser) -> None:
    """Input, steps and how the models run."""
    p.add_argument("--size", type=int, help="square input side (default 256 CPU, 512 CUDA)")
    p.add_argument("--batch", type=int, help="images per step (default 4 CPU, 16 CUDA)")
    p.add_argument("--classes", type=int, default=59, help="output classes (59: PASCAL Context)")
    p.add_argument("--steps", type=int, help="timed steps (default 3 CPU, 20 CUDA)")
    p.add_argument("--warmup", type=int, help="untimed steps after the first (1 CPU, 5 CUDA)")
    p.add_argument(
        "--amp",
        choices=AMP_CHOICES,
        default="none",
        help="autocast (default none: float32); auto: bf16 + channels-last on a CPU with bf16 "
        "units (AMX, AVX512_BF16) or a bf16 GPU, float32 elsewhere",
    )
    p.add_argument("--channels-last", action="store_true", help="channels_last model and input")
    p.add_argument(
        "--compile",
        nargs="?",
        const="default",
        metavar="MODE",
        help="torch.compile every peer (MODE: default, max-autotune-no-cudagraphs, ...)",
    )
    p.add_argument(
        "--upsample",
        choices=["auto", "matmul", "interpolate"],
        default="auto",
        help="how our models resize bilinearly (auto: the device's faster exact one)",
    )


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    """``--mode eval``'s image and protocol."""
    p.add_argument("--image", default="500x375", metavar="WxH", help="--mode eval image size")
    p.add_argument(
        "--protocol",
        choices=["ms-flip", "single"],
        default="ms-flip",
        help="--mode eval: the paper's multi-scale + flip, or single scale",
    )
    p.add_argument("--window-batch", type=int, default=4, help="--mode eval windows per forward")


def _add_output_args(p: argparse.ArgumentParser) -> None:
    """The files written, and the resize timing instead of models."""
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    p.add_argument(
        "--profile",
        nargs="?",
        const=Path("bench_profile.txt"),
        type=Path,
        metavar="PATH",
        help="write torch.profiler's top-kernel table of each peer and mode (default file "
        "bench_profile.txt)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace --json/--profile files that exist"
    )
    p.add_argument(
        "--no-roof",
        dest="roof",
        action="store_false",
        help="skip the roof (a 2048³ matrix product in the amp dtype) and each row's share of it",
    )
    p.add_argument(
        "--resize",
        action="store_true",
        help="instead: time F.interpolate against the matrix form for this run's logit upsampling",
    )


def cmd_bench(args: argparse.Namespace) -> int:
    from rich.console import Console

    from sanet.api import bench
    from sanet.api.reports import bench_header, bench_table, resize_table

    result = call(bench, args)
    console = Console()  # in a log file or a pipe: room for the whole table
    console = console if console.is_terminal else Console(width=150)
    settings = result.settings
    console.print(bench_header(result, args.models or []), style="dim")
    if result.profile is not None:
        console.print(f"Wrote the profiler tables to {result.profile}")
    console.print(resize_table(result.rows, settings) if args.resize else bench_table(result.rows))
    if result.json is not None:
        console.print(f"Wrote {result.json}")
    if not settings.device.startswith("cuda"):
        console.print(f"GPU figures (docs/benchmarks.md): {GPU_COMMAND}", style="dim")
    return 0
