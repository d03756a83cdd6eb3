"""``sanet export`` and ``sanet serve``: thin wrappers over :mod:`sanet.serve`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from sanet.cli.common import add_protocol_args, device_name, protocol_from_args, run_config
from sanet.cli.int8 import add_export_args, check_export_args, export_int8_from_args
from sanet.errors import NotFoundError, UsageError
from sanet.rundir import RunDir


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``export`` and ``serve``."""
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
    s.add_argument("--timeout", type=float, default=60.0, help="seconds per request; 504 (60)")
    s.add_argument(
        "--upload-timeout", type=float, default=30.0, help="seconds to receive an upload; 408 (30)"
    )
    s.set_defaults(func=cmd_serve)


# ---------------------------------------------------------------------------------------------
# sanet export
# ---------------------------------------------------------------------------------------------


def _run_extras(checkpoint: str) -> dict[str, Any]:
    """What a run directory adds to the metadata: its eval settings and best validation."""
    cfg = run_config(checkpoint)
    extras: dict[str, Any] = {}
    if cfg:
        extras["run_config"] = {
            "eval": cfg.get("eval") or {},
            "data": {"base_size": (cfg.get("data") or {}).get("base_size")},
        }
    summary = RunDir(checkpoint).summary
    if summary.is_file():
        s = json.loads(summary.read_text())
        extras["validation"] = {k: s.get(k) for k in ("val_mIoU", "val_pixAcc", "protocol")}
    return extras


def cmd_export(args: argparse.Namespace) -> int:
    from sanet._files import ensure_new_file
    from sanet.exporting.export import (
        DEFAULT_OPSET,
        ParityTolerance,
        build_metadata,
        check_export_options,
        export_onnx,
    )
    from sanet.exporting.outputs import check_request
    from sanet.inference import EvalProtocol
    from sanet.models.registry import load_model

    if str(args.checkpoint).lower().endswith(".onnx"):
        raise UsageError(f"{args.checkpoint} is already an ONNX file; export a run or model/.")
    cfg = run_config(args.checkpoint)
    size = int(args.size or (cfg.get("data") or {}).get("crop_size") or 480)
    # every flag and --out before the model is loaded, exported and checked
    opset = DEFAULT_OPSET if args.opset is None else args.opset
    tolerance = ParityTolerance(atol=args.atol, rtol=args.rtol)
    check_export_options(args.out, size, opset, tolerance)
    outputs = check_export_args(args)
    ensure_new_file(args.out, "--out", args.overwrite, "model.onnx")
    model, meta = load_model(args.checkpoint, map_location="cpu")
    temperature = (meta.get("calibration") or {}).get("temperature")  # `sanet calibrate`'s
    check_request(outputs, model.num_classes, temperature)
    ev = cfg.get("eval") or {}
    protocol = EvalProtocol(
        crop_size=int(ev.get("crop_size") or 480), stride=int(ev.get("stride") or 320)
    )
    metadata = build_metadata(model, meta, protocol, opset, **_run_extras(args.checkpoint))
    if args.int8:
        written = export_int8_from_args(
            args, model, metadata, protocol, size, opset, outputs, temperature
        )
    else:
        written = export_onnx(
            model,
            args.out,
            metadata,
            example_size=(size, size),
            opset=opset,
            check=args.check,
            tolerance=tolerance,
            outputs=outputs,
            temperature=temperature,
        )
    mb = args.out.stat().st_size / 1e6
    if written["parity"]:
        rows = written["parity"]["sizes"]
        checked = ", ".join(f"{h}×{w}" for h, w in (r["size"] for r in rows))
        worst = max(r["max_abs_diff"] for r in rows)
        agree = min(r["argmax_agreement"] for r in rows)
        print(
            f"check: onnxruntime = PyTorch at {checked} (max |Δ logits| {worst:.2g}, "
            f"argmax agreement {agree:.2%})"
        )
    classes = len(metadata["class_names"])
    print(f"Wrote {args.out} ({mb:.1f} MB, opset {written['opset']}, {classes} classes)")
    return 0


# ---------------------------------------------------------------------------------------------
# sanet serve
# ---------------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    """Check everything that would make every request fail (dependencies, port, model) before
    "Serving on"; then serve until Ctrl-C."""
    from sanet.serve.startup import bind_socket, check_dependencies, default_allowed_hosts

    check_dependencies()
    from sanet.serve.app import create_app, serve, working_side

    if not Path(args.checkpoint).exists():
        raise NotFoundError(f"--checkpoint {args.checkpoint!r} does not exist.")
    limits = serve_limits(args)
    device = device_name(args.device)
    sock = bind_socket(args.host, args.port)  # before the model loads: a busy port fails fast
    try:
        predictor, limits, seconds = _load_checked(args, limits, device)
        _access_log_as_json_lines()
        names = [n for n in args.allowed_hosts.split(",") if n.strip()]
        app = create_app(predictor, limits, allowed_hosts=default_allowed_hosts(args.host) + names)
        app.state.gate.record(1, seconds)  # the first estimate for admission
        host = f"[{args.host}]" if ":" in args.host else args.host
        side = working_side(limits, predictor)
        print(
            f"Serving {args.checkpoint} ({predictor.backend}; images longer than "
            f"{side or 'any size'} px are predicted at that size) on "
            f"http://{host}:{sock.getsockname()[1]}/ (Ctrl-C stops)",
            flush=True,
        )
        serve(app, sock=sock)
    finally:
        sock.close()
    return 0


def serve_limits(args: argparse.Namespace) -> Any:
    from sanet.serve.limits import ServeLimits

    return ServeLimits(
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        max_pixels=int(args.max_megapixels * 1_000_000),
        max_side=args.max_side,
        max_concurrent=args.max_concurrent,
        max_queue=args.max_queue,
        timeout_s=args.timeout,
        upload_timeout_s=args.upload_timeout,
    )


def _load_checked(args: argparse.Namespace, limits: Any, device: str) -> tuple[Any, Any, float]:
    """The predictor, once it passed ``check_model`` (its load-time warnings are shown only
    then: a refused model is one line); the limits with the run's working size; the seconds of
    one forward window."""
    from sanet.inference import Predictor
    from sanet.serve.app import working_side
    from sanet.serve.startup import check_model

    protocol = protocol_from_args(args)
    if args.window_batch is None and not device.startswith("cuda"):
        # one window per forward on a CPU (batches barely help there): a request that timed out
        # or was abandoned stops after one window, not after a batch of them
        protocol = dataclasses.replace(protocol, window_batch=1)
    if args.max_side is None and protocol.base_size is None:  # the size the run trained at
        base_size = (run_config(args.checkpoint).get("data") or {}).get("base_size")
        limits = dataclasses.replace(limits, max_side=base_size or None)
    held = _Held()
    backend = logging.getLogger("sanet.inference")
    backend.addHandler(held)
    backend.propagate = False
    try:
        predictor = Predictor(args.checkpoint, device=device, protocol=protocol)
        seconds = check_model(predictor, working_side(limits, predictor))
    finally:
        backend.removeHandler(held)
        backend.propagate = True
    for record in held.records:
        logging.getLogger(record.name).handle(record)
    return predictor, limits, seconds


class _Held(logging.Handler):
    """Keeps log records to show later."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _access_log_as_json_lines() -> None:
    """Access records as bare JSON lines on stderr (one per request), for log collectors."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    access = logging.getLogger("sanet.access")
    access.addHandler(handler)
    access.propagate = False
