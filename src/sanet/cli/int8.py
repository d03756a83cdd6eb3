"""The ``--outputs`` and ``--int8`` flags of ``sanet export`` (registered by ``cli/deploy.py``;
:func:`sanet.api.export.export` checks them)."""

from __future__ import annotations

import argparse

from sanet.api.export import DEFAULT_CALIB_IMAGES, DEFAULT_EVAL_IMAGES


def add_export_args(p: argparse.ArgumentParser) -> None:
    """``--outputs`` and the ``--int8`` flags of ``sanet export``."""
    p.add_argument(
        "--outputs",
        default="logits",
        metavar="LIST",
        help="graph outputs, comma-separated: logits (default), mask (uint8 arg-max), "
        "confidence (uint8, 255 × calibrated top probability; needs `sanet calibrate`)",
    )
    q = p.add_argument_group("int8 (onnxruntime static quantization, gated on mIoU)")
    q.add_argument("--int8", action="store_true", help="write a QDQ int8 file (needs --calib-data)")
    q.add_argument("--calib-data", metavar="KIND:ROOT", help="images to calibrate on")
    q.add_argument("--calib-split", default="train", help="calibration split (train)")
    q.add_argument(
        "--calib-images",
        type=int,
        default=None,
        metavar="N",
        help=f"calibration images, spread over the split ({DEFAULT_CALIB_IMAGES})",
    )
    q.add_argument(
        "--eval-data", metavar="KIND:ROOT", help="images the gate evaluates (default --calib-data)"
    )
    q.add_argument("--eval-split", default="val", help="evaluation split (val)")
    q.add_argument(
        "--eval-images",
        type=int,
        default=None,
        metavar="N",
        help=f"evaluation images, spread over the split ({DEFAULT_EVAL_IMAGES})",
    )
    q.add_argument(
        "--max-miou-drop",
        type=float,
        default=None,
        metavar="D",
        help="refuse to write when fp32 mIoU − int8 mIoU > D (0.01)",
    )
