"""One meaning of a run: the config a checkpoint belongs to, and the protocol it is predicted,
evaluated, calibrated, exported and served with.

:func:`run_protocol` is the only place that turns a checkpoint into an :class:`EvalProtocol`:
the run's ``eval`` section (``config.yaml`` beside the weights, or the copy ``sanet export``
embedded in an ``.onnx`` file), then explicit overrides. ``Predictor``, ``sanet.evaluate``,
``sanet.calibrate``, ``sanet.export`` and the server all call it, so a run means the same
everywhere (docs/python.md).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import torch

from sanet.conventions import BASE_SIZE, EVAL_CROP_SIZE, EVAL_STRIDE, PAPER_SCALES
from sanet.devices import Precision, choose_precision
from sanet.errors import UsageError, arg
from sanet.inference.onnx_backend import read_onnx_metadata
from sanet.inference.protocol import EvalProtocol
from sanet.rundir import RunDir

logger = logging.getLogger(__name__)

#: Windows per forward pass: wider batches on a GPU than on a CPU (a 500×375 image at the
#: paper's six scales has 14 windows of 480×480, 28 with mirrors). Chosen defaults, not measured
#: optima: ``sanet bench --mode eval --window-batch N`` measures.
WINDOW_BATCH = {"cpu": 4, "cuda": 16}

Mode = Literal["run", "paper", "single"]


def run_config(checkpoint: str | Path | None) -> dict[str, Any]:
    """``config.yaml`` of the run ``checkpoint`` is or lies in, the part of it that ``sanet
    export`` embedded in an ``.onnx`` file or a calibrated copy of the model carries, else ``{}``
    (a model saved outside a run)."""
    if checkpoint is None:
        return {}
    if str(checkpoint).lower().endswith(".onnx"):
        return read_onnx_metadata(checkpoint).get("run_config") or {}
    run = RunDir.containing(checkpoint)
    if run is None:
        return _carried_run_config(Path(checkpoint))
    import yaml

    try:
        return yaml.safe_load(run.config.read_text()) or {}
    except yaml.YAMLError as err:
        logger.warning("Ignoring unreadable %s (%s)", run.config, err)
        return {}


def _carried_run_config(folder: Path) -> dict[str, Any]:
    """What a model folder outside a run carries of its run's config (``metadata.run_config``
    of its ``config.json``, written by ``calibrate --out-model``'s copy), else ``{}``."""
    from sanet.errors import NotFoundError
    from sanet.models.segmentation import read_pretrained_config

    if not folder.is_dir():
        return {}
    try:
        carried = (read_pretrained_config(folder).get("metadata") or {}).get("run_config")
    except (NotFoundError, UsageError):
        return {}  # not a saved model, or a damaged one: the model's own loading names it
    return carried if isinstance(carried, dict) else {}


def embedded_run_config(checkpoint: str | Path) -> dict[str, Any]:
    """What an exported file keeps of its run's config: the ``eval`` section and the base size
    (enough for :func:`run_protocol` to mean the same for the file as for the run)."""
    cfg = run_config(checkpoint)
    if not cfg:
        return {}
    return {
        "eval": cfg.get("eval") or {},
        "data": {"base_size": (cfg.get("data") or {}).get("base_size")},
    }


def run_protocol(
    checkpoint: str | Path | None = None,
    *,
    mode: Mode = "run",
    scales: tuple[float, ...] | None = None,
    flip: bool | None = None,
    base_size: int | None = None,
    crop_size: int | None = None,
    stride: int | None = None,
    window_batch: int | None = None,
    amp: str = "none",
    device: str | torch.device = "cpu",
    channels_last: bool = False,
) -> EvalProtocol:
    """The protocol of ``checkpoint``'s run, with explicit overrides.

    Each setting comes from its argument, else from the run's ``eval`` section, else from the
    defaults (single scale, windows of 480 every 320 px). ``mode="paper"`` takes the paper's
    scales 0.5–1.75 with flips, ``mode="single"`` scale 1.0 at the image's own size without
    flips (what validation during training measures). Scales other than a lone 1.0 are
    fractions of the base size (``base_size``, else the run's ``data.base_size``, else 520), as
    in the paper; a base size of 0 in a recipe scales each image's own size.

    Args:
        checkpoint: a run directory or a file in one, a ``save_pretrained`` folder, an ``.onnx``
            file, or ``None`` (no run: the defaults).
        window_batch: windows per forward pass (default: 4 on a CPU, 16 on a GPU).
        amp: ``"none"`` (float32), ``"bf16"``, ``"fp16"``, or ``"auto"``: this machine's
            choice (:func:`inference_precision`).
        device: where the forward passes run (it picks the window batch and ``"auto"``'s amp).
        channels_last: windows and model in ``torch.channels_last`` (``"auto"`` may turn it on).
    """
    cfg = run_config(checkpoint)
    ev = cfg.get("eval") or {}
    chosen_scales, chosen_flip = _scales_and_flip(ev, mode, scales, flip)
    base = base_size
    if base is None and tuple(chosen_scales) != (1.0,):
        base = (cfg.get("data") or {}).get("base_size", BASE_SIZE)
    kind = torch.device(device).type
    precision = inference_precision(checkpoint, amp, device, channels_last)
    return EvalProtocol(
        scales=tuple(float(s) for s in chosen_scales),
        flip=chosen_flip,
        base_size=base or None,  # 0: a recipe trained at each image's own size
        crop_size=int(crop_size or ev.get("crop_size") or EVAL_CROP_SIZE),
        stride=int(stride or ev.get("stride") or EVAL_STRIDE),
        window_batch=window_batch or WINDOW_BATCH.get(kind, WINDOW_BATCH["cpu"]),
        amp=precision.amp,
        channels_last=precision.channels_last,
    )


def _scales_and_flip(
    ev: dict[str, Any], mode: Mode, scales: tuple[float, ...] | None, flip: bool | None
) -> tuple[tuple[float, ...], bool]:
    """The scales and flip of :func:`run_protocol`: the run's ``eval`` section ``ev``, the
    ``mode``'s, then the explicit ``scales`` and ``flip``."""
    chosen_scales = tuple(ev.get("scales") or (1.0,))
    chosen_flip = bool(ev.get("flip", False))
    if mode == "paper":
        chosen_scales, chosen_flip = PAPER_SCALES, True
    elif mode == "single":
        if scales is not None:
            raise UsageError(
                f"{arg('scales')} contradicts the single-scale mode (scale 1.0); give one of them."
            )
        chosen_scales, chosen_flip = (1.0,), False
    elif mode != "run":
        raise UsageError(f"mode must be 'run', 'paper' or 'single', got {mode!r}.")
    if scales is not None:
        chosen_scales = tuple(scales)
    if flip is not None:
        chosen_flip = flip
    return chosen_scales, chosen_flip


def inference_precision(
    checkpoint: str | Path | None,
    amp: str = "none",
    device: str | torch.device = "cpu",
    channels_last: bool = False,
    log: bool = True,
) -> Precision:
    """What ``amp`` means for predicting with ``checkpoint`` on ``device``
    (:func:`~sanet.devices.choose_precision`); logged when ``"auto"`` chose (and ``log``). An
    ``.onnx`` file
    runs in its own precision on onnxruntime: ``"auto"`` is float32 there (autocast would not
    reach it)."""
    if amp == "auto" and str(checkpoint or "").lower().endswith(".onnx"):
        return Precision("none", False, amp, "an .onnx file runs in its own precision")
    precision = choose_precision(amp, device, channels_last=channels_last)
    if amp == "auto" and log:
        logger.info("Precision: %s", precision.describe())
    return precision


def protocol_mode(protocol: EvalProtocol) -> str:
    """``single-scale`` or ``multi-scale``, with ``+flip`` when mirrors are averaged."""
    mode = "single-scale" if tuple(protocol.scales) == (1.0,) else "multi-scale"
    return mode + ("+flip" if protocol.flip else "")
