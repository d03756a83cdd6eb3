"""Arguments and helpers shared by several command modules (eval, predict, figures, train)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from sanet.rundir import RunDir

logger = logging.getLogger(__name__)

# Windows per forward in `sanet eval/predict` on a GPU: wider batches than on a CPU (a 500×375
# image at the paper's six scales has 14 windows of 480×480, 28 with mirrors). A chosen default,
# not a measured optimum (no GPU was lent): `sanet bench --mode eval --window-batch N` measures.
CUDA_WINDOW_BATCH = 16


def add_overrides(p: argparse.ArgumentParser, help: str | None = None) -> None:
    """``--set KEY=VALUE ...`` (repeatable): config overrides with type checking."""
    p.add_argument(
        "--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
        help=help or "override config keys, e.g. --set train.lr=0.01 data.root=/data/VOC (repeatable)",
    )  # fmt: skip


def add_protocol_args(p: argparse.ArgumentParser) -> None:
    """``--checkpoint``, ``--device`` and the evaluation-protocol flags (eval, predict, figure5)."""
    p.add_argument("--checkpoint", required=True,
                   help="run dir, .pt, save_pretrained folder or an .onnx file (sanet export)")  # fmt: skip
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
    p.add_argument(
        "--window-batch", type=int,
        help="windows (mirrors included) per forward pass, across scales (default: 4 on CPU, "
        f"{CUDA_WINDOW_BATCH} on CUDA)",
    )  # fmt: skip
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none",
                   help="autocast forward passes (GPU speed; recorded in the protocol)")  # fmt: skip


def device_name(name: str | None) -> str:
    """``--device``, else ``cuda`` when there is one, else ``cpu``; a device this machine does
    not have is a one-line error before any work."""
    from sanet.devices import resolve_device

    return str(resolve_device(name))


def run_config(checkpoint: str) -> dict[str, Any]:
    """``config.yaml`` of a run directory (for its eval protocol), the part of it that
    ``sanet export`` embedded in an ``.onnx`` file, else ``{}``."""
    if str(checkpoint).lower().endswith(".onnx"):
        from sanet.inference import read_onnx_metadata

        return read_onnx_metadata(checkpoint).get("run_config") or {}
    path = RunDir(checkpoint).config
    if not path.is_file():
        return {}
    import yaml

    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        logger.warning("Ignoring unreadable %s (%s)", path, err)
        return {}


def parse_floats(text: str, what: str) -> tuple[float, ...]:
    """``"0.5,1,1.5"`` → ``(0.5, 1.0, 1.5)``; a clear error naming ``what`` otherwise."""
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{what} must be comma-separated numbers, got {text!r}.") from None


def protocol_from_args(args: argparse.Namespace) -> Any:
    """The evaluation protocol: flags, else the run's ``config.yaml``, else the paper's values."""
    from sanet.inference import PAPER_SCALES, EvalProtocol

    cfg = run_config(args.checkpoint)
    ev, data = cfg.get("eval") or {}, cfg.get("data") or {}
    crop = args.crop_size or ev.get("crop_size") or 480
    stride = args.stride or ev.get("stride") or 320
    window_batch = args.window_batch or (
        CUDA_WINDOW_BATCH if device_name(args.device).startswith("cuda") else 4
    )
    common = dict(crop_size=int(crop), stride=int(stride), window_batch=window_batch, amp=args.amp)
    if not args.ms_flip:
        if args.scales:
            raise ValueError("--scales applies to --ms-flip; add --ms-flip.")
        # single scale: native size, or the long side resized to --base-size (large photos)
        return EvalProtocol(base_size=args.base_size, **common)
    # A run's eval.scales count only when they are multi-scale: its default [1.0] is the
    # single-scale validation protocol used during training, not what --ms-flip asks for.
    run_scales = tuple(ev.get("scales") or ())
    scales = parse_floats(args.scales, "--scales") if args.scales else None
    scales = scales or (run_scales if len(run_scales) > 1 else PAPER_SCALES)
    base = args.base_size or data.get("base_size") or 520
    return EvalProtocol(scales=tuple(scales), flip=True, base_size=int(base), **common)


def progress() -> Any:
    """A progress bar counting images."""
    from sanet.progress import progress_bar

    return progress_bar(unit="img")


def open_dataset(spec: str, split: str) -> Any:
    """The dataset of ``--data KIND:PATH`` and ``--split``."""
    from sanet.data import build_dataset, parse_data_spec

    kind, root = parse_data_spec(spec)
    return build_dataset(kind, root, split=split)


def check_classes(model: Any, dataset: Any, checkpoint: str) -> None:
    """Refuse to evaluate a model on a dataset with another number of classes."""
    if model.num_classes != dataset.num_classes:
        raise ValueError(
            f"The checkpoint {checkpoint!r} predicts {model.num_classes} classes but the dataset "
            f"has {dataset.num_classes}. Evaluate it on the dataset it was trained for."
        )
