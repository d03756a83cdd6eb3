"""``sanet export``, ``sanet backends`` and ``sanet serve``: flags → :func:`sanet.api.export.
export` / :func:`sanet.api.backends.compare_backends` / :func:`sanet.api.serving.serve` →
printed results."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from sanet.cli.common import add_protocol_args, call, protocol_from_args, show
from sanet.cli.int8 import add_export_args
from sanet.errors import UsageError, arg


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``export``, ``backends`` and ``serve``."""
    _add_export(sub)
    _add_backends(sub)
    _add_serve(sub)


def _add_exports(p: argparse.ArgumentParser) -> None:
    """``--onnx`` and ``--int8``: the exported files a backend comparison or ``auto`` runs."""
    p.add_argument("--onnx", default=None, help="the fp32 export (sanet export) for onnxruntime")
    p.add_argument("--int8", default=None, help="the INT8 export (sanet export --int8)")
    p.add_argument(
        "--max-miou-drop",
        type=float,
        default=0.01,
        help="the gate: the largest mIoU drop against PyTorch float32 accepted (0.01)",
    )


def _add_backends(sub: argparse._SubParsersAction) -> None:
    from sanet.cli.common import add_data_options

    p = sub.add_parser(
        "backends",
        help="one model on PyTorch fp32/bf16 and onnxruntime fp32/INT8, side by side; saves the "
        "choice of serve --backend auto",
    )
    p.add_argument("--checkpoint", required=True, help="run dir, .pt or save_pretrained folder")
    _add_exports(p)
    p.add_argument(
        "--data",
        default=None,
        help="labelled images KIND:ROOT that gate every backend (>= 20), or a folder of "
        "unlabelled images (no gate: INT8 cannot be chosen); default: noise, speed only",
    )
    p.add_argument("--split", default="val", help="split of --data (val)")
    add_data_options(p)
    p.add_argument("--images", type=int, default=None, help="images used (24 of a dataset)")
    p.add_argument("--rounds", type=int, default=10, help="timed rounds, alternated (10)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of both runtimes")
    p.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda if any)")
    p.add_argument("--out", default=None, help="the record (default: backends.json by the model)")
    p.add_argument(
        "--save", action=argparse.BooleanOptionalAction, default=True, help="write the record"
    )
    p.add_argument("--overwrite", action="store_true", help="replace the record")
    p.set_defaults(func=cmd_backends)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="one self-describing ONNX file, checked against PyTorch")
    p.add_argument("--checkpoint", required=True, help="run dir, .pt or save_pretrained folder")
    p.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    p.add_argument(
        "--overwrite", action="store_true", help="replace --out if it exists (default: refuse)"
    )
    p.add_argument("--format", choices=["onnx"], default="onnx", help="only onnx for now")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 20; 18 or newer)")
    p.add_argument(
        "--size",
        type=int,
        default=None,
        help="export and check size (square; default: the run's data.crop_size, else 480)",
    )
    p.add_argument(
        "--check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compare onnxruntime with PyTorch at the export size and two odd sizes "
        "(default on; --no-check skips it)",
    )
    p.add_argument("--atol", type=float, default=1e-4, help="check: absolute logit tolerance")
    p.add_argument(
        "--rtol", type=float, default=1e-4, help="check: tolerance relative to max |logit|"
    )
    add_export_args(p)  # --outputs, --int8 and its calibration and gate flags
    p.set_defaults(func=cmd_export)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("serve", help="web page and HTTP API for a checkpoint or an .onnx file")
    add_protocol_args(s)
    s.add_argument("--host", default="127.0.0.1", help="interface (default loopback only)")
    s.add_argument("--port", type=int, default=8000, help="TCP port (8000; 0: any free port)")
    s.add_argument(
        "--allowed-hosts",
        default="",
        metavar="NAMES",
        help="comma-separated host names the server answers to besides IP addresses and "
        "localhost (e.g. the name a reverse proxy forwards; '*': any)",
    )
    s.add_argument(
        "--max-side",
        type=int,
        default=None,
        help="predict larger images at this long side, their mask resized back to the input's "
        "size (default: the run's data.base_size, else --crop-size; with a --base-size, "
        "base size × the largest scale; 0: every image at its own size)",
    )
    s.add_argument("--max-upload-mb", type=float, default=10.0, help="413 above (10)")
    s.add_argument("--max-megapixels", type=float, default=40.0, help="413 above (40)")
    s.add_argument("--max-concurrent", type=int, default=1, help="inferences at once (1)")
    s.add_argument("--max-queue", type=int, default=8, help="requests waiting; 503 beyond (8)")
    # dest: the ServeLimits field, so that its messages name the flag
    s.add_argument(
        "--timeout",
        dest="timeout_s",
        type=float,
        default=60.0,
        help="seconds per request; 504 (60)",
    )
    s.add_argument(
        "--upload-timeout",
        dest="upload_timeout_s",
        type=float,
        default=30.0,
        help="seconds to receive an upload; 408 (30)",
    )
    s.add_argument(
        "--drift-window",
        type=int,
        default=50,
        help="a calibrated model's last N answered requests are compared with its calibration "
        "images (50)",
    )
    s.add_argument(
        "--drift-false-alarm",
        type=float,
        default=0.05,
        help="at most this share of windows like the calibration images is flagged (0.05)",
    )
    _add_backend_choice(s)
    s.set_defaults(func=cmd_serve)


def _add_backend_choice(s: argparse.ArgumentParser) -> None:
    """``--backend`` and what ``auto`` chooses among and gates on."""
    from sanet.api.serve_backend import BACKEND_CHOICES

    s.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default=None,
        help="torch, onnxruntime (an .onnx --checkpoint, or --onnx/--int8), or auto: the "
        "fastest that passes the accuracy gate on --gate-data (else the record of `sanet "
        "backends`, else speed only and never INT8); default: the checkpoint's own",
    )
    _add_exports(s)
    s.add_argument("--gate-data", default=None, help="auto: labelled KIND:ROOT to gate on")
    s.add_argument("--gate-split", default="val", help="auto: split of --gate-data (val)")


def cmd_export(args: argparse.Namespace) -> int:
    from sanet.api import export
    from sanet.api.reports import export_lines

    show(*export_lines(call(export, args)))
    return 0


def cmd_backends(args: argparse.Namespace) -> int:
    from sanet.api.backends import compare_backends
    from sanet.api.reports import backend_lines
    from sanet.cli.common import parse_data_options

    given = args.data_options  # None: the run's own options for the run's dataset kind
    options = parse_data_options(given) if given is not None else None
    show(*backend_lines(call(compare_backends, args, data_options=options)))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Everything that would make every request fail (dependencies, port, model) is checked
    before "Serving on"; then serve until Ctrl-C."""
    from sanet.api.serving import serve

    def ready(served: Any, url: str) -> None:
        side = served.working_side
        size = f"images longer than {side} px predicted at that size" if side else "any size"
        print(
            f"Serving {args.checkpoint} on {url} (Ctrl-C stops): {served.description}; {size}",
            flush=True,
        )

    from sanet.serve.drift import check_settings

    hosts = [n for n in args.allowed_hosts.split(",") if n.strip()]
    limits = serve_limits(args)
    check_settings(args.drift_window, args.drift_false_alarm)  # before the model is read
    protocol = protocol_from_args(args)
    call(serve, args, protocol=protocol, limits=limits, allowed_hosts=hosts, on_ready=ready)
    return 0


def serve_limits(args: argparse.Namespace) -> Any:
    """The :class:`~sanet.serve.limits.ServeLimits` of the flags (MiB and megapixels)."""
    from sanet.serve.limits import ServeLimits

    _check_amount(args, "max_upload_mb", "MiB", 1024 * 1024, 10)
    _check_amount(args, "max_megapixels", "megapixels", 1_000_000, 40)
    return ServeLimits(
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        max_pixels=int(args.max_megapixels * 1_000_000),
        max_side=args.max_side,
        max_concurrent=args.max_concurrent,
        max_queue=args.max_queue,
        timeout_s=args.timeout_s,
        upload_timeout_s=args.upload_timeout_s,
    )


def _check_amount(args: argparse.Namespace, name: str, unit: str, scale: int, example: int) -> None:
    """Refuse an amount that is not a finite number worth at least one byte or pixel."""
    value = getattr(args, name)
    if not (math.isfinite(value) and value * scale >= 1):
        raise UsageError(
            f"{arg(name)} must be a positive number of {unit} (at least {1 / scale:.2g}), got "
            f"{value:g}. Try {arg(name, example)}."
        )
