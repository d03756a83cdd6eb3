"""Arguments and helpers shared by several command modules (eval, predict, figures, train)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from sanet.conventions import AMP_CHOICES
from sanet.errors import UsageError

logger = logging.getLogger(__name__)


def add_overrides(p: argparse.ArgumentParser, help: str | None = None) -> None:
    """``--set KEY=VALUE ...`` (repeatable): config overrides with type checking."""
    p.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help=help
        or "override config keys, e.g. --set train.lr=0.01 data.root=/data/VOC (repeatable)",
    )


def add_protocol_args(p: argparse.ArgumentParser, *, require_checkpoint: bool = True) -> None:
    """``--checkpoint``, ``--device`` and the evaluation-protocol flags (eval, predict, figure5).

    Unset flags take the run's ``eval`` section (``--checkpoint`` a run directory or a file in
    one), else the defaults of :class:`~sanet.config.EvalConfig`; see :func:`protocol_from_args`.
    """
    p.add_argument(
        "--checkpoint",
        required=require_checkpoint,
        help="run dir, .pt, save_pretrained folder or an .onnx file (sanet export)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if any)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--ms-flip",
        action="store_true",
        help="the paper's protocol: scales 0.5,...,1.75 of --base-size, with flips",
    )
    mode.add_argument(
        "--single-scale",
        action="store_true",
        help="scale 1.0 at the image's own size, no flip (training's validation)",
    )
    p.add_argument("--scales", help="comma-separated scales (default: the run's eval.scales)")
    p.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also predict mirror images (default: the run's eval.flip)",
    )
    p.add_argument(
        "--base-size",
        type=int,
        help="long side at scale 1.0 (default: the run's data.base_size, else 520, when the scales "
        "are not just 1.0; a single scale 1.0 keeps the image's own size unless this is given)",
    )
    p.add_argument("--crop-size", type=int, help="sliding-window size (the run's eval.crop_size)")
    p.add_argument("--stride", type=int, help="sliding-window stride (the run's eval.stride)")
    p.add_argument(
        "--window-batch",
        type=int,
        help="windows (mirrors included) per forward pass, across scales (default: 4 on CPU, "
        "16 on CUDA)",
    )
    p.add_argument(
        "--amp",
        choices=AMP_CHOICES,
        default="none",
        help="autocast forward passes (recorded in the protocol); auto: bf16 + channels-last "
        "on a CPU with bf16 units (AMX, AVX512_BF16) or a bf16 GPU, float32 elsewhere",
    )


def device_name(name: str | None) -> str:
    """``--device``, else ``cuda`` when there is one, else ``cpu``; a device this machine does
    not have is a one-line error before any work."""
    from sanet.devices import resolve_device

    return str(resolve_device(name))


def parse_floats(text: str, what: str) -> tuple[float, ...]:
    """``"0.5,1,1.5"`` → ``(0.5, 1.0, 1.5)``; a clear error naming ``what`` otherwise."""
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{what} must be comma-separated numbers, got {text!r}.") from None


def protocol_from_args(args: argparse.Namespace, *, with_amp: bool = True) -> Any:
    """The protocol flags as :func:`sanet.inference.runs.run_protocol` takes them: the run's own
    ``eval`` section (the checkpoint's), with each flag given replacing its setting.
    ``with_amp=False``: ``--amp`` is left to the verb (its ``amp=``, which logs and records the
    choice)."""
    from sanet.inference.runs import run_protocol

    if args.single_scale and args.scales:
        raise UsageError("--scales contradicts --single-scale (scale 1.0); pass one of them.")
    mode = "paper" if args.ms_flip else "single" if args.single_scale else "run"
    return run_protocol(
        args.checkpoint,
        mode=mode,
        scales=parse_floats(args.scales, "--scales") if args.scales else None,
        flip=args.flip,
        base_size=args.base_size,
        crop_size=args.crop_size,
        stride=args.stride,
        window_batch=args.window_batch,
        amp=args.amp if with_amp else "none",
        device=device_name(args.device),
    )


def add_overwrite(p: argparse.ArgumentParser, what: str) -> None:
    """``--overwrite``: outputs are never replaced silently (docs/reliability.md)."""
    p.add_argument("--overwrite", action="store_true", help=f"replace {what} (default: refuse)")


def add_data_options(p: argparse.ArgumentParser) -> None:
    """``--data-options YAML``: dataset options for ``--data``, as ``data.options`` of a recipe."""
    p.add_argument(
        "--data-options",
        default=None,
        metavar="YAML",
        help="dataset options as in a recipe's data.options, e.g. '{label_map: {255: 1}}' for "
        "binary masks saved as 0/255 (docs/datasets.md)",
    )


def parse_data_options(text: str | None) -> dict[str, Any]:
    """The mapping of ``--data-options`` (``{}`` when not given)."""
    import yaml

    if text is None:
        return {}
    try:
        options = yaml.safe_load(text)
    except yaml.YAMLError:
        options = None
    if not isinstance(options, dict):
        raise UsageError(
            f"--data-options must be a YAML mapping, e.g. '{{label_map: {{255: 1}}}}'; got {text!r}."
        )
    return options


def report_failed(command: str, failed: list[str], total: int, fix: str) -> int:
    """Batch commands finish the good items, then list the bad ones here: exit 1 if any."""
    import sys

    if not failed:
        return 0
    print(
        f"sanet {command}: {len(failed)} of {total} inputs failed (the others are done); {fix}:",
        file=sys.stderr,
    )
    for line in failed:
        print(f"  {line}", file=sys.stderr)
    return 1


def call(verb: Any, args: argparse.Namespace, **given: Any) -> Any:
    """``verb(...)`` with every parameter that has a flag of the same name (``--out`` → ``out``:
    the flags are named after the parameters, which is also how library messages name them),
    and ``given`` for the rest (parsed values, ``progress=True``)."""
    import inspect

    names = inspect.signature(verb).parameters
    values = {n: getattr(args, n) for n in names if hasattr(args, n) and n not in given}
    return verb(**values, **given)


def show(*items: Any, markup: bool = False) -> None:
    """Print a report's pieces in order: lines as they are (``rich`` markup in them only with
    ``markup``), tables through ``rich``."""
    from rich.console import Console

    console = Console(emoji=False)  # "voc:train:" must not become an emoji
    for item in items:
        if isinstance(item, str) and not markup:
            print(item)
        else:
            console.print(item)
