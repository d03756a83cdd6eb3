"""``sanet.api.tiled.predict_tiled``: one image of any size predicted tile by tile into GeoTIFF
in memory independent of its area (``sanet predict --tiled``; docs/large-images.md).

``sanet.predict_files`` sends its large inputs here too (above ``tile_above`` megapixels, or all
of them with ``tiled=True``). In memory, call :meth:`~sanet.inference.Predictor.predict_tiled`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sanet._files import ensure_writable_dir
from sanet.api.common import ProtocolArg, device_of, protocol_of
from sanet.errors import NotFoundError, UsageError, arg
from sanet.inference.geotiff import TiledTargets
from sanet.inference.predictor import Predictor
from sanet.inference.raster import open_raster, raster_size
from sanet.inference.tiled import Tiling
from sanet.inference.tiled_job import TiledOutput, preflight
from sanet.progress import progress_bar
from sanet.training.runtime import StopFlag

logger = logging.getLogger(__name__)

#: Images above this many megapixels are predicted tile by tile unless ``tiled=False``: the
#: whole-image protocol holds about 0.07 GB per megapixel with the demo model (issue 29).
TILE_ABOVE_MP = 64.0


def tiled_targets(image: Path, out: Path, confidence: bool, unsure: bool) -> TiledTargets:
    """``out/<stem>.tif`` (class ids), with ``<stem>_confidence.tif`` and ``<stem>_unsure.tif``
    beside it when asked; refuses to write over the input."""
    targets = TiledTargets.beside(out / f"{image.stem}.tif", confidence, unsure)
    if any(p.resolve() == image.resolve() for p in targets.layers().values()):
        raise UsageError(
            f"Refusing to overwrite the input {image}. Choose an {arg('out')} folder that does "
            "not hold the input images."
        )
    return targets


def wants_tiles(image: Path, tiled: bool | None, tile_above: float) -> str | None:
    """Why ``image`` is predicted tile by tile (a note), ``""`` when asked to, or ``None``."""
    if tiled is not None:
        return "" if tiled else None
    try:
        height, width = raster_size(image)
    except Exception:
        return None  # the whole-image reader names the problem
    if height * width <= tile_above * 1e6:
        return None
    return (
        f"{image.name} is {width}×{height} px ({height * width / 1e6:.0f} MP, above "
        f"{arg('tile_above', tile_above)} MP): predicted tile by tile into GeoTIFF"
    )


def run_tiled(
    predictor: Predictor, image: Path, targets: TiledTargets, bar: Any, **options: Any
) -> TiledOutput:
    """One tiled prediction with a progress task (blocks, ETA) and a clean stop on SIGINT or
    SIGTERM: the current block finishes, the state is saved, and
    :class:`~sanet.errors.Interrupted` says how to continue (``options``: those of
    :meth:`Predictor.predict_tiled`)."""
    task, started = bar.add_task(f"  {image.name}", total=None, unit="block"), []

    def on_block(done: int, total: int) -> None:
        if not started:  # the first call: where this run starts (a resumed one, at its block)
            started.append(done)
            bar.reset(task, total=total, completed=done)
        else:
            bar.update(task, completed=done)

    doing = f"finishing this block and keeping the partial files ({arg('resume', True)} continues)"
    try:
        with StopFlag(doing) as flag:
            return predictor.predict_tiled(
                image,
                targets.mask,
                confidence=targets.confidence is not None,
                unsure=targets.unsure is not None,
                should_stop=lambda: flag.signal,
                on_block=on_block,
                **options,
            )
    finally:
        bar.remove_task(task)


def predict_tiled(
    checkpoint: str | Path,
    image: str | Path,
    out: str | Path,
    *,
    confidence: bool = False,
    unsure: bool = False,
    protocol: ProtocolArg = None,
    device: str | None = None,
    bands: Sequence[int] | None = None,
    value_range: tuple[float, float] | None = None,
    tile_size: int = 512,
    strip_width: int = 2048,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> TiledOutput:
    """Predict one image of any size tile by tile into ``out/<stem>.tif``: class ids (uint8,
    the palette as colour table) keeping the input's CRS, transform and nodata; with
    ``confidence`` also ``<stem>_confidence.tif`` (255 × the calibrated largest probability),
    with ``unsure`` ``<stem>_unsure.tif`` (1 where the confidence is below the calibrated risk
    threshold). The same answer as the whole-image sliding window, in flat memory.

    Args:
        image: a GeoTIFF (BigTIFF, COG, any raster GDAL reads) or a PNG/JPEG.
        protocol: ``None``: the run's own (scales relative to the image's own resolution).
        bands: the 3 bands (1-based) used as red, green, blue of a multispectral raster.
        value_range: the values mapped onto 0..255 (16-bit default: 0..65535; float: needed).
        tile_size, strip_width: GeoTIFF tiles (block rows) and the width of the strips.
        resume: continue a stopped prediction from its last completed block (whole outputs
            are kept); overwrite: replace outputs and discard a partial prediction.
        progress: a progress bar with ETA.

    Returns:
        a :class:`~sanet.inference.tiled_job.TiledOutput`.

    Raises:
        sanet.errors.Interrupted: SIGINT or SIGTERM; the partial files are kept for ``resume``.
    """
    device = device_of(device)
    chosen = protocol_of(checkpoint, protocol, device)
    image, out = Path(image), Path(out)
    if not image.is_file():
        raise NotFoundError(f"Image {str(image)!r} does not exist.")
    Tiling(tile_size, strip_width)  # bad sizes fail now
    targets = tiled_targets(image, out, confidence, unsure)
    ensure_writable_dir(out, arg("out"))
    preflight(targets, resume=resume, overwrite=overwrite)
    open_raster(image, bands=bands, value_range=value_range).close()  # bad input fails now
    predictor = Predictor(checkpoint, device=device, protocol=chosen)
    if unsure:
        predictor.unsure_threshold()
    options = {"bands": bands, "value_range": value_range, "tile_size": tile_size}
    options |= {"strip_width": strip_width, "resume": resume, "overwrite": overwrite}
    with progress_bar(unit="block", enabled=progress) as bar:
        return run_tiled(predictor, image, targets, bar, **options)
