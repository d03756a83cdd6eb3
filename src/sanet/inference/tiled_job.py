"""A resumable tiled prediction (docs/large-images.md): the image streamed block by block
(``tiled.py``) into its GeoTIFF layers (``geotiff.py``), with a small JSON state beside them.

After each block the partial files are closed and synced and the state
(``.NAME.resume.json``: the image, the settings, blocks done) is written atomically, so a run
stopped anyhow (a signal, a full disk, a crash) continues with ``resume=True`` from the last
completed block and writes the same pixels (a block computed again meets the same windows in
the same batches). A resume refuses another image or other settings.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sanet._files import atomic_write_text, ensure_writable_file, refuse_existing
from sanet.conventions import IGNORE_INDEX
from sanet.errors import Interrupted, NotWritableError, OutputExistsError, UsageError, arg
from sanet.inference.confidence import Calibration, protocol_settings
from sanet.inference.geotiff import (
    TiledTargets,
    block_layers,
    create_layers,
    discard_partial,
    finish_layers,
    write_block,
)
from sanet.inference.protocol import EvalProtocol
from sanet.inference.raster import RasterSource, open_raster, require_rasterio
from sanet.inference.tiled import Tiling, stream_blocks

logger = logging.getLogger(__name__)

STATE_FORMAT = 1
GDAL_CACHE_BYTES = 64 * 2**20  # GDAL's block cache (its default is 5 % of the RAM)


@dataclass
class TiledOutput:
    """What one tiled prediction wrote.

    Attributes:
        mask, confidence, unsure: the layers' files (``None``: not asked).
        height, width: the image's size.
        blocks: blocks in the image; ``resumed_from``: blocks already done when it started
            (0: a fresh run); ``complete``: True when the outputs existed whole (``resume``).
        seconds: time spent here; notes: one line per rule applied (bands, scales, ...).
    """

    mask: Path
    confidence: Path | None = None
    unsure: Path | None = None
    height: int = 0
    width: int = 0
    blocks: int = 0
    resumed_from: int = 0
    complete: bool = False
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def model_fingerprint(model: nn.Module) -> str | None:
    """A short hash of the weights (shapes and leading values): a resumed run must use the
    same model."""
    params = list(model.parameters()) if hasattr(model, "parameters") else []
    if not params:
        return None
    h = hashlib.sha256()
    for p in params:
        flat = p.detach().reshape(-1)[:64].float().cpu().numpy()
        h.update(str(tuple(p.shape)).encode() + flat.tobytes())
    return h.hexdigest()[:16]


def tiled_meta(
    model: nn.Module,
    protocol: EvalProtocol,
    metadata: dict[str, Any],
    calibration: Calibration | None,
    *,
    calibrated: bool,
    bands: Sequence[int] | None,
    value_range: tuple[float, float] | None,
) -> dict[str, Any]:
    """What :func:`write_tiled` needs to know of a predictor: the number of classes, the
    palette, each layer's tags, and the settings a resumed prediction must share."""
    names, palette = metadata.get("class_names"), metadata.get("palette")
    settings = protocol_settings(protocol) | {
        "amp": protocol.amp,
        "model": model_fingerprint(model),
        "temperature": calibration.temperature if calibrated and calibration else 1.0,
        "threshold": calibration.threshold if calibration is not None else None,
        "bands": list(bands) if bands is not None else None,
        "value_range": list(value_range) if value_range is not None else None,
    }
    tags = {
        "mask": {"class_names": names},
        "confidence": {"temperature": settings["temperature"]},
        "unsure": {
            "threshold": settings["threshold"],
            "alpha": calibration.alpha if calibration else None,
        },
    }
    num_classes = int(getattr(model, "num_classes", 0) or len(names or []))
    return {"num_classes": num_classes, "palette": palette, "settings": settings, "tags": tags}


def _is_disk_full(err: BaseException) -> bool:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err).lower()
    return "no space left" in text or "disk full" in text or "quota exceeded" in text


def read_state(targets: TiledTargets) -> dict[str, Any] | None:
    """The resume state of ``targets``, or ``None`` when no partial prediction is there."""
    try:
        return json.loads(targets.state.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"done": 0, "unreadable": True}


def _save_state(targets: TiledTargets, state: dict[str, Any]) -> None:
    atomic_write_text(targets.state, json.dumps(state, indent=1) + "\n")


def preflight(targets: TiledTargets, *, resume: bool, overwrite: bool) -> dict[str, Any] | None:
    """Refuse, before any work, to replace outputs (unless ``overwrite``; with ``resume``
    whole outputs are kept) or to discard a partial prediction silently; returns its state."""
    found, layers = read_state(targets), list(targets.layers().values())
    if overwrite:
        return found
    if found is None:
        existing = [p for p in layers if p.exists()]
        if not (resume and existing and len(existing) == len(layers)):
            refuse_existing(existing, arg("out"), overwrite)
        return None
    if not resume:
        done = f"{found.get('done', 0)} of {found.get('blocks', '?')} blocks"
        raise OutputExistsError(
            f"{targets.mask.parent} holds a partial prediction of {targets.mask.name} ({done}); "
            f"nothing was written. Pass {arg('resume', True)} to continue it, or "
            f"{arg('overwrite', True)} to start over."
        )
    return found


def _start(
    targets: TiledTargets, state: dict[str, Any], resume: bool, overwrite: bool
) -> int | None:
    """The block to start at: 0, where a partial prediction of the same image and settings
    stopped (``resume``), or ``None`` when ``resume`` finds the outputs whole."""
    found = preflight(targets, resume=resume, overwrite=overwrite)
    if overwrite:
        discard_partial(targets)
        return 0
    if found is None:
        return None if resume and targets.mask.exists() else 0
    differs = [k for k in ("image", "settings") if found.get(k) != state[k]]
    layers = targets.layers().values()
    missing = [p for p in layers if not (TiledTargets.partial(p).is_file() or p.is_file())]
    if differs or missing or found.get("unreadable"):
        what = f"its {' and '.join(differs)} differ" if differs else "its files are incomplete"
        raise UsageError(
            f"The partial prediction of {targets.mask.name} ({found.get('done', 0)} of "
            f"{found.get('blocks', '?')} blocks) cannot be continued: {what}. Pass "
            f"{arg('overwrite', True)} to start over."
        )
    return int(found["done"])


def _disk_full(targets: TiledTargets, doing: str) -> NotWritableError:
    return NotWritableError(
        f"Disk full while {doing} of {targets.mask.name}; the partial files are kept in "
        f"{targets.mask.parent}: free some space and run the same call with "
        f"{arg('resume', True)} to continue."
    )


def write_tiled(
    model: nn.Module,
    source: RasterSource,
    targets: TiledTargets,
    protocol: EvalProtocol,
    *,
    meta: dict[str, Any],
    tiling: Tiling | None = None,
    temperature: float = 1.0,
    unsure: Callable[[np.ndarray], np.ndarray] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    device: torch.device | str = "cpu",
    should_stop: Callable[[], Any] | None = None,
    on_block: Callable[[int, int], None] | None = None,
) -> TiledOutput:
    """Predict ``source`` block by block into ``targets`` (see the module docstring).

    Args:
        meta: ``num_classes``, ``palette``, the ``settings`` a resume must match, and ``tags``
            per layer.
        temperature: the calibration's (the confidence layer); class ids use temperature 1.
        unsure: the predictor's ``unsure_pixels`` (the one place its threshold is applied).
        should_stop: asked after each block; a truthy answer (a signal's name, or True) stops
            with :class:`~sanet.errors.Interrupted` after saving the state.
        on_block: called with ``(blocks done, blocks in all)`` when the work starts and after
            each block.
    """
    began = time.perf_counter()
    tiling = tiling or Tiling()
    start, state, out = _prepare(source, targets, meta, tiling, resume, overwrite)
    if start is None:
        return out
    rasterio = require_rasterio()
    if on_block is not None:
        on_block(start, state["blocks"])
    temperatures = [1.0] if temperature == 1.0 else [1.0, temperature]
    try:
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES):
            if start == 0:
                create_layers(targets, source, tiling, meta)
                _save_state(targets, state | {"done": 0})
            kw = {"tiling": tiling, "temperatures": temperatures, "start": start, "device": device}
            blocks = stream_blocks(model, source, protocol, **kw)
            _loop(targets, blocks, state, unsure, should_stop, on_block)
    except BaseException as err:
        if (read_state(targets) or {}).get("done", 0) == 0:
            discard_partial(targets)  # nothing done: nothing left behind
        if _is_disk_full(err) and not isinstance(err, NotWritableError):
            raise _disk_full(targets, "writing the outputs") from err
        raise
    finish_layers(targets)
    out.seconds = time.perf_counter() - began
    return out


def _prepare(
    source: RasterSource,
    targets: TiledTargets,
    meta: dict[str, Any],
    tiling: Tiling,
    resume: bool,
    overwrite: bool,
) -> tuple[int | None, dict[str, Any], TiledOutput]:
    """The block to start at (``None``: the outputs are whole already), the state to save, and
    the result to fill."""
    if meta["num_classes"] > IGNORE_INDEX:
        raise UsageError(
            f"GeoTIFF class ids are uint8: at most 255 classes, got {meta['num_classes']}."
        )
    total = len(tiling.blocks(source.height, source.width))
    state = {"format": STATE_FORMAT, "image": source.identity(), "blocks": total}
    state["settings"] = meta["settings"] | {"tile": tiling.tile, "strip": tiling.strip}
    out = TiledOutput(
        targets.mask, targets.confidence, targets.unsure, source.height, source.width, total
    )
    start = _start(targets, state, resume, overwrite)
    out.resumed_from = total if start is None else start
    if start is None or start == total:
        finish_layers(targets)  # (a run stopped between its last block and the renames)
        out.complete = True
        return None, state, out
    return start, state, out


def predict_raster(
    predictor: Any,
    image: Any,
    out: str | Path,
    *,
    confidence: bool,
    unsure: bool,
    bands: Sequence[int] | None,
    value_range: tuple[float, float] | None,
    tiling: Tiling,
    resume: bool,
    overwrite: bool,
    should_stop: Callable[[], Any] | None,
    on_block: Callable[[int, int], None] | None,
) -> TiledOutput:
    """The work of :meth:`~sanet.inference.Predictor.predict_tiled` (``predictor``: its model,
    protocol, calibration, device and ``unsure_pixels``)."""
    if unsure:
        predictor.unsure_threshold()  # refused before any work
    out = ensure_writable_file(out, arg("out"), "IMAGE.tif")
    calibrated, protocol = confidence or unsure, predictor.protocol
    with open_raster(image, bands=bands, value_range=value_range) as source:
        notes = [source.note] if source.note else []
        if protocol.base_size is not None:
            notes.append(
                f"Tiled prediction: scales {list(protocol.scales)} are relative to the image's "
                f"own resolution (the base size {protocol.base_size} is not used)"
            )
        for note in notes:
            logger.info(note)
        meta = tiled_meta(
            predictor.model,
            protocol,
            predictor.metadata,
            predictor.calibration,
            calibrated=calibrated,
            bands=bands,
            value_range=value_range,
        )
        result = write_tiled(
            predictor.model,
            source,
            TiledTargets.beside(out, confidence, unsure),
            protocol,
            meta=meta,
            tiling=tiling,
            temperature=predictor.temperature if calibrated else 1.0,
            unsure=predictor.unsure_pixels if unsure else None,
            resume=resume,
            overwrite=overwrite,
            device=predictor.device,
            should_stop=should_stop,
            on_block=on_block,
        )
    result.notes = notes
    return result


def _loop(
    targets: TiledTargets,
    blocks: Any,
    state: dict[str, Any],
    unsure: Any,
    should_stop: Callable[[], Any] | None,
    on_block: Callable[[int, int], None] | None,
) -> None:
    """Write every block, saving the state after each; stop cleanly when asked."""
    total = state["blocks"]
    for block in blocks:
        layers = block_layers(block, unsure, targets.confidence is not None)
        try:
            write_block(targets, block, layers)
            _save_state(targets, state | {"done": block.index + 1})
        except Exception as err:
            if not _is_disk_full(err):
                raise
            raise _disk_full(targets, f"writing block {block.index + 1} of {total}") from err
        if on_block is not None:
            on_block(block.index + 1, total)
        stop = should_stop() if should_stop is not None else None
        if stop and block.index + 1 < total:
            signal = stop if isinstance(stop, str) else "SIGINT"
            raise Interrupted(
                f"Stopped by {signal} after block {block.index + 1} of {total} of "
                f"{targets.mask.name}; the partial files are kept. Run the same call with "
                f"{arg('resume', True)} to continue.",
                signal,
            )
