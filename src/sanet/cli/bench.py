"""``sanet bench``: speed of our models against torchvision's, in one process (SPEC §4).

A thin wrapper over :mod:`sanet.experiments.bench`: parses flags, prints a table, writes
``--json`` and ``--profile`` files. The JSON layout is documented in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from sanet.cli.common import device_name
from sanet.errors import UsageError

# Defaults per device type: the paper-sized setting on a GPU, a small one a CPU finishes.
_DEFAULTS = {
    "cuda": dict(
        models=["tv:fcn_resnet101", "sanet:resnet101s"], size=512, batch=16, steps=20, warmup=5
    ),
    "cpu": dict(
        models=["tv:fcn_resnet50", "sanet:resnet50s"], size=256, batch=4, steps=3, warmup=1
    ),
}
_MODES = {"infer": ["infer"], "train": ["train"], "both": ["infer", "train"], "eval": ["eval"]}


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
        choices=list(_MODES),
        default="both",
        help="infer, train, both (default) or eval (one image, multi-scale + flip)",
    )
    p.add_argument("--size", type=int, help="square input side (default 256 CPU, 512 CUDA)")
    p.add_argument("--batch", type=int, help="images per step (default 4 CPU, 16 CUDA)")
    p.add_argument("--classes", type=int, default=59, help="output classes (59: PASCAL Context)")
    p.add_argument("--steps", type=int, help="timed steps (default 3 CPU, 20 CUDA)")
    p.add_argument("--warmup", type=int, help="untimed steps after the first (1 CPU, 5 CUDA)")
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
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
    p.add_argument("--image", default="500x375", metavar="WxH", help="--mode eval image size")
    p.add_argument(
        "--protocol",
        choices=["ms-flip", "single"],
        default="ms-flip",
        help="--mode eval: the paper's multi-scale + flip, or single scale",
    )
    p.add_argument("--window-batch", type=int, default=4, help="--mode eval windows per forward")
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
        "--resize",
        action="store_true",
        help="instead: time F.interpolate against the matrix form for this run's logit upsampling",
    )
    p.set_defaults(func=cmd_bench)


def settings_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~sanet.experiments.bench.BenchSettings` of the flags and the device defaults."""
    from sanet.experiments.bench import BenchSettings

    device = device_name(args.device)
    defaults = _DEFAULTS["cuda" if device.startswith("cuda") else "cpu"]
    try:
        width, height = (int(v) for v in args.image.lower().split("x"))
    except ValueError:
        raise UsageError(f"--image must be WxH, e.g. 500x375, got {args.image!r}.") from None
    pick = lambda name: defaults[name] if getattr(args, name) is None else getattr(args, name)  # noqa: E731
    return BenchSettings(
        device=device,
        size=pick("size"),
        batch=pick("batch"),
        classes=args.classes,
        steps=pick("steps"),
        warmup=pick("warmup"),
        amp=args.amp,
        channels_last=args.channels_last,
        compile=args.compile,
        image=(height, width),
        protocol=args.protocol,
        window_batch=args.window_batch,
        threads=args.threads,
    )


def cmd_bench(args: argparse.Namespace) -> int:
    from rich.console import Console

    from sanet._files import ensure_new_file
    from sanet.experiments.bench import GPU_COMMAND, apply_threads, resize_timings, run_bench
    from sanet.experiments.measure import environment
    from sanet.models.resize import set_bilinear_method
    from sanet.version import __version__

    settings = settings_from_args(args)  # every flag is checked before any model is built
    for flag, path, example in (
        ("--json", args.json, "bench.json"),
        ("--profile", args.profile, "bench_profile.txt"),
    ):
        if path is not None:
            ensure_new_file(path, flag, args.overwrite, example)
    apply_threads(settings)  # before `environment` records the thread count
    device_type = settings.device.split(":")[0]
    set_bilinear_method(device_type, args.upsample)
    console = Console()
    if not console.is_terminal:  # a log file or a pipe: room for the whole table
        console = Console(width=150)
    env = {"sanet": __version__, **environment(settings.device)}
    console.print(_describe(env, settings, args.mode, args.models or []), style="dim")
    if args.resize:
        rows = resize_timings(settings)
        console.print(resize_table(rows, settings))
    else:
        specs = args.models or _DEFAULTS["cuda" if device_type == "cuda" else "cpu"]["models"]
        rows = run_bench(specs, settings, _MODES[args.mode], profile=args.profile is not None)
        if args.profile is not None:
            _write_profile(args.profile, rows, settings)
            console.print(f"Wrote the profiler tables to {args.profile}")
        console.print(bench_table(rows))
    env["load_average_1min_end"] = environment(settings.device)["load_average_1min"]
    report = {
        "command": shlex.join(["sanet", *sys.argv[1:]]) if sys.argv[0] else "sanet bench",
        "environment": env,
        "settings": settings.to_dict() | {"upsample": args.upsample},
        "rows": rows,
    }
    if args.json is not None:
        from sanet._files import atomic_write_text

        atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
        console.print(f"Wrote {args.json}")
    if device_type != "cuda":
        console.print(f"GPU figures (docs/benchmarks.md): {GPU_COMMAND}", style="dim")
    return 0


def _classes(classes: int, models: list[str]) -> str:
    """The header's class count: exported files keep their own K (--classes builds models)."""
    files = sum(m.startswith("onnx:") for m in models)
    if models and files == len(models):
        return "classes: each file's own"
    return f"{classes} classes" + (" (onnx: files: their own)" if files else "")


def _describe(env: dict[str, Any], settings: Any, mode: str, models: list[str]) -> str:
    if mode == "eval":
        h, w = settings.image
        what = f"one {w}×{h} image, {settings.protocol}, {settings.window_batch} windows/forward"
    else:
        what = f"{settings.size}×{settings.size}, batch {settings.batch}"
    how = ", ".join(
        [
            _classes(settings.classes, models),
            f"amp {settings.amp}",
            "channels_last" if settings.channels_last else "contiguous",
            f"compile {settings.compile}" if settings.compile else "eager",
        ]
    )
    return (
        f"{env['device_name']} ({env['device']}), torch {env['torch']}, {env['threads']} threads, "
        f"load {env['load_average_1min']}; {what}; {how}; {settings.steps} timed calls after "
        f"{settings.warmup} + 1 untimed"
    )


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def bench_table(rows: list[dict]) -> Any:
    """The rich table of :func:`~sanet.experiments.bench.run_bench` rows."""
    from rich.table import Table

    table = Table(title="sanet bench (ratios: to the first model of each mode)")
    for name in (
        "model",
        "mode",
        "GFLOPs/img",
        "img/s",
        "ms/batch",
        "first call s",
        "TFLOP/s",
        "peak GB",
        "× first",
        "× first per FLOP",
    ):
        table.add_column(name, justify="left" if name in ("model", "mode") else "right")
    for r in rows:
        table.add_row(
            r["model"],
            r["mode"],
            _fmt(r["gflops_per_image"], 1),
            _fmt(r["images_per_s"]),
            _fmt(r["latency_ms"], 1),
            _fmt(r["first_step_s"], 1),
            _fmt(r["tflops"], 3),
            _fmt(r["peak_memory_gb"]),
            _fmt(r["ratio"]),
            _fmt(r["ratio_per_flop"]),
        )
    return table


def resize_table(rows: list[dict], settings: Any) -> Any:
    """The rich table of :func:`~sanet.experiments.bench.resize_timings` rows."""
    from rich.table import Table

    small = -(-settings.size // 8)
    table = Table(
        title=f"bilinear ({settings.batch}, {settings.classes}, {small}, {small}) → "
        f"{settings.size}×{settings.size}, amp {settings.amp}"
    )
    for name in ("method", "pass", "ms"):
        table.add_column(name, justify="right" if name == "ms" else "left")
    for r in rows:
        table.add_row(r["method"], r["pass"], _fmt(r["ms"], 1))
    return table


def _write_profile(path: Path, rows: list[dict], settings: Any) -> None:
    from sanet._files import atomic_write_text

    parts = [
        f"## {r['model']} {r['mode']} ({settings.device}, batch {r['batch']})\n\n{r.pop('profile')}"
        for r in rows
    ]
    atomic_write_text(path, "\n\n".join(parts) + "\n")
