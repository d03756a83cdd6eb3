"""``sanet calibrate``, ``sanet audit-labels`` and ``sanet rank`` (docs/trust.md): flags →
:func:`sanet.calibrate` / :func:`sanet.audit_labels` / :func:`sanet.rank` → printed results."""

from __future__ import annotations

import argparse
from pathlib import Path

from sanet.cli.common import (
    add_data_options,
    add_overrides,
    add_overwrite,
    add_protocol_args,
    call,
    parse_data_options,
    protocol_from_args,
    report_failed,
    show,
)
from sanet.errors import UsageError

#: The protocol flags (their ``args`` names) that go with ``--checkpoint`` only.
PROTOCOL_FLAGS = ("ms_flip", "single_scale", "scales", "flip", "base_size", "crop_size", "stride")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``calibrate``, ``audit-labels`` and ``rank``."""
    add_calibrate_parser(sub)

    _add_audit_parser(sub)

    p = sub.add_parser("rank", help="order unlabelled images by what labelling them would teach")
    add_protocol_args(p)
    p.add_argument("inputs", nargs="+", metavar="IMAGE", help="image files, folders or globs")
    p.add_argument("--out", type=Path, required=True, help="the CSV file to write")
    add_overwrite(p, "the CSV file --out")
    p.set_defaults(func=cmd_rank)


def _add_audit_parser(sub: argparse._SubParsersAction) -> None:
    """``audit-labels``: flags named after :func:`sanet.audit_labels`'s parameters."""
    p = sub.add_parser("audit-labels", help="find masks that are probably wrong")
    p.add_argument("recipe", nargs="?", help="with --folds: the YAML recipe (or e.g. demo)")
    add_protocol_args(p, require_checkpoint=False)
    p.add_argument("--folds", type=int, help="train K models on K−1 folds; score out of fold")
    p.add_argument("--data", required=True, metavar="KIND:PATH", help="e.g. folder:data/mine")
    p.add_argument("--split", help="split to audit (val with --checkpoint, train with --folds)")
    add_data_options(p)
    p.add_argument("--out", type=Path, required=True, help="label_audit.json, suspects.png")
    p.add_argument("--top", type=int, default=8, help="images in suspects.png (8)")
    p.add_argument(
        "--out-of-fold",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="with --checkpoint: score out of fold (default: on the run's own training split)",
    )
    p.add_argument(
        "--min-miou",
        type=float,
        default=0.3,
        help="least mIoU of the model against the labels to audit with (0.3; 0: any model)",
    )
    p.add_argument(
        "--confidence",
        type=float,
        default=0.9,
        help="evidence where the model gives the label at most 1 − this probability (0.9)",
    )
    p.add_argument(
        "--min-region", type=float, default=0.002, help="least region, share of the image"
    )
    add_overrides(p, help="with --folds: recipe overrides for every fold's run")
    add_overwrite(p, "label_audit.json and suspects.png in --out")
    p.set_defaults(func=cmd_audit)


def add_calibrate_parser(sub: argparse._SubParsersAction) -> None:
    """``sanet calibrate``'s flags, named after :func:`sanet.calibrate`'s parameters."""
    p = sub.add_parser(
        "calibrate",
        help="fit a temperature (and with --risk an unsure threshold); store it with the model",
    )
    add_protocol_args(p)
    p.add_argument("--data", required=True, metavar="KIND:PATH", help="e.g. voc:data/VOC2012")
    add_data_options(p)
    p.add_argument("--split", default="val", help="the labelled split to calibrate on (val)")
    p.add_argument(
        "--risk",
        type=float,
        metavar="ALPHA",
        help="also choose the confidence threshold that keeps the expected share of sure-and-wrong "
        "pixels per image ≤ ALPHA (conformal risk control), e.g. 0.05",
    )
    p.add_argument(
        "--per-image",
        type=float,
        metavar="DELTA",
        help="with --risk ALPHA: choose the threshold so that at most a share DELTA of images have "
        "more than ALPHA of their pixels sure and wrong, with probability --confidence-level "
        "over the calibration images (learn then test), e.g. 0.1",
    )
    p.add_argument(
        "--confidence-level",
        type=float,
        default=0.9,
        metavar="P",
        help="the probability of the --per-image bound over the calibration draw (0.9)",
    )
    p.add_argument(
        "--per-class",
        action="store_true",
        help="with --risk: also a threshold per predicted class, each with its own guarantee",
    )
    p.add_argument("--out", type=Path, help="calibration.json, reliability.png (RUN/calibration)")
    p.add_argument(
        "--out-model",
        type=Path,
        metavar="DIR",
        help="store the calibration in a copy of the model written to this new folder",
    )
    p.add_argument("--limit", type=int, help="use only the first N images")
    p.add_argument(
        "--fit-images", type=int, default=200, help="images the temperature is fitted on (200)"
    )
    p.add_argument(
        "--replace",
        action="store_true",
        help="replace the calibration the model already carries (default: refuse)",
    )
    add_overwrite(p, "calibration.json and reliability.png in --out")
    p.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from sanet.api import calibrate
    from sanet.api.reports import calibration_lines

    options = parse_data_options(args.data_options)
    protocol = protocol_from_args(args, with_amp=False)  # --amp: calibrate's own
    result = call(calibrate, args, data_options=options, protocol=protocol, progress=True)
    show(*calibration_lines(result))
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from sanet.api import audit_labels
    from sanet.api.reports import audit_lines

    given = [f for f in (*PROTOCOL_FLAGS, "device") if getattr(args, f) not in (None, False)]
    if args.recipe is not None and args.checkpoint is None and given:
        raise UsageError(
            f"--{given[0].replace('_', '-')} goes with --checkpoint; the fold models are scored "
            "with the recipe's validation protocol on its train.device (set them with --set)."
        )
    protocol = protocol_from_args(args) if args.checkpoint is not None else None
    options = None if args.data_options is None else parse_data_options(args.data_options)
    result = call(audit_labels, args, data_options=options, protocol=protocol, progress=True)
    show(*audit_lines(result))
    return 0


def cmd_rank(args: argparse.Namespace) -> int:
    from sanet.api import rank

    result = call(rank, args, protocol=protocol_from_args(args), progress=True)
    print(f"Wrote {result.out}: {len(result.rows)} images, most worth labelling first")
    total = len(result.rows) + len(result.failed)
    return report_failed("rank", result.failed, total, "fix or convert these files and rerun")
