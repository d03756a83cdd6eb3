"""``sanet.predict_files``: index-PNG masks (and overlays, confidence maps, unsure pixels) for
image files, written into a folder (``sanet predict``); images above ``tile_above`` megapixels
(or all, with ``tiled=True``) go tile by tile into GeoTIFF (``api/tiled.py``). In memory, predict
with :class:`~sanet.inference.Predictor`."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sanet._files import ensure_writable_dir, refuse_existing
from sanet.api.common import ProtocolArg, device_of, expand_inputs, precision_of
from sanet.api.tiled import TILE_ABOVE_MP, run_tiled, tiled_targets, wants_tiles
from sanet.errors import DataError, UsageError, arg
from sanet.inference.geotiff import TiledTargets
from sanet.inference.predictor import Predictor, load_rgb
from sanet.inference.protocol import window_count
from sanet.inference.raster import open_raster
from sanet.inference.tiled import Tiling
from sanet.inference.tiled_job import TiledOutput, preflight
from sanet.progress import progress_bar
from sanet.viz.visualize import confidence_image, mask_to_pil, overlay_with_legend, save_png

logger = logging.getLogger(__name__)


@dataclass
class PredictResult:
    """What :func:`predict_files` wrote.

    Attributes:
        masks: the mask of each image predicted, in input order (a PNG, or the GeoTIFF of an
            image predicted tile by tile).
        failed: the inputs that could not be read, with the reason (the others are written).
        threshold: with ``unsure``, the calibrated confidence below which a pixel is unsure
            (255 in a PNG mask; 1 in the ``_unsure.tif`` layer of a tiled one).
        alpha: the risk level that threshold was chosen for.
        tiled: what each image predicted tile by tile wrote (sizes, blocks, resumed or not).
        notes: one line per rule applied (automatic tiling, bands, scales ...).
        guarantee: what that threshold promises and assumes (``Calibration.guarantee``); with
            a threshold per class (``sanet calibrate --per-class``) ``threshold`` is the least.
        precision: what the forward passes ran in, what was asked and why
            (:class:`~sanet.devices.Precision`).
    """

    masks: list[Path] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    threshold: float | None = None
    alpha: float | None = None
    tiled: list[TiledOutput] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    guarantee: str | None = None
    precision: dict[str, Any] | None = None


@dataclass(frozen=True)
class _Plan:
    image: Path
    mask: Path
    overlay: Path | None
    confidence: Path | None


def predict_files(
    checkpoint: str | Path,
    inputs: str | Path | list[str | Path],
    out: str | Path,
    *,
    overlay: bool = False,
    unsure: bool = False,
    confidence: bool = False,
    protocol: ProtocolArg = None,
    device: str | None = None,
    amp: str = "none",
    overwrite: bool = False,
    progress: bool = False,
    tiled: bool | None = None,
    tile_above: float = TILE_ABOVE_MP,
    resume: bool = False,
    bands: Sequence[int] | None = None,
    value_range: tuple[float, float] | None = None,
    tile_size: int = 512,
    strip_width: int = 2048,
) -> PredictResult:
    """Predict image files into ``out``: ``out/<stem>.png`` (index PNG with the classes'
    palette), with ``overlay`` also ``out/overlays/<stem>.png``, with ``confidence``
    ``out/<stem>_confidence.png`` (255 × the calibrated largest probability). An image
    predicted tile by tile gives GeoTIFF ``out/<stem>.tif`` (:func:`sanet.api.tiled.predict_tiled`).

    Args:
        inputs: image files, folders (their images) or glob patterns.
        unsure: 255 where the calibrated confidence is below the stored risk threshold.
        protocol: ``None``: the run's own; ``"paper"``, ``"single"`` or an ``EvalProtocol``.
        amp: the precision (``"auto"`` ...: :func:`~sanet.api.common.precision_of`).
        overwrite: replace outputs that exist (default: refuse before any work).
        progress: show progress bars (images, and windows or blocks inside large images).
        tiled: ``True``: every image tile by tile; ``None``: those above ``tile_above``
            megapixels (with a note). ``resume``, ``bands`` ...: as in ``predict_tiled``.

    Returns:
        a :class:`PredictResult`; unreadable inputs are listed in ``failed``.
    """
    chosen, precision = precision_of(checkpoint, protocol, device := device_of(device), amp)
    options = {"bands": bands, "value_range": value_range, "tile_size": tile_size}
    options |= {"strip_width": strip_width, "resume": resume, "overwrite": overwrite}
    out, images = Path(out), expand_inputs(inputs)
    plan = _plan(images, out, overlay, confidence)
    tiles, notes = _tiled_plan(images, out, tiled, tile_above, confidence, unsure)
    _check_outputs(plan, tiles, out, overlay, notes, options)
    predictor = Predictor(checkpoint, device=device, protocol=chosen)
    result = _empty_result(predictor, unsure, notes)  # no threshold: refused before any work
    result.precision = precision.to_dict()
    threshold = result.threshold
    with progress_bar(unit="img", enabled=progress) as bar:
        task = bar.add_task("predict", total=len(plan))
        windows = WindowProgress(bar, predictor.model, chosen)
        for row in plan:
            if row.image in tiles:
                _tiled_one(predictor, row.image, tiles[row.image], bar, result, options)
            else:
                _whole_one(predictor, row, windows, threshold, unsure or confidence, result)
            bar.advance(task)
    return result


def _empty_result(predictor: Predictor, unsure: bool, notes: list[str]) -> PredictResult:
    """The result before any image: the risk threshold, its α and guarantee with ``unsure``."""
    result = PredictResult(threshold=predictor.unsure_threshold() if unsure else None, notes=notes)
    if result.threshold is not None:
        result.alpha = predictor.calibration.alpha  # type: ignore[union-attr]
        result.guarantee = predictor.calibration.guarantee()  # type: ignore[union-attr]
    return result


def _check_outputs(
    plan: list[_Plan],
    tiles: dict[Path, TiledTargets],
    out: Path,
    overlay: bool,
    notes: list[str],
    options: dict[str, Any],
) -> None:
    """Refuse, before any work, outputs that exist, partial predictions not resumed, bad tiling
    options and bad band choices (an unreadable image is reported in ``failed`` later)."""
    _check_tiled_options(tiles, options, overlay, notes)
    whole = [r for r in plan if r.image not in tiles]
    ensure_writable_dir(out / "overlays" if overlay and whole else out, arg("out"))
    targets = [p for r in whole for p in (r.mask, r.overlay, r.confidence) if p is not None]
    refuse_existing(targets, arg("out"), options["overwrite"])
    for image, t in tiles.items():
        preflight(t, resume=options["resume"], overwrite=options["overwrite"])
        with contextlib.suppress(DataError):
            open_raster(image, bands=options["bands"], value_range=options["value_range"]).close()


def _tiled_plan(
    images: list[Path], out: Path, tiled: bool | None, tile_above: float, conf: bool, unsure: bool
) -> tuple[dict[Path, TiledTargets], list[str]]:
    """The images predicted tile by tile, their targets, and the notes saying why."""
    tiles, notes = {}, []
    for image in images:
        why = wants_tiles(image, tiled, tile_above)
        if why is not None:
            tiles[image] = tiled_targets(image, out, conf, unsure)
            if why:
                notes.append(why)
                logger.info(why)
    return tiles, notes


def _check_tiled_options(
    tiles: dict[Path, TiledTargets], options: dict[str, Any], overlay: bool, notes: list[str]
) -> None:
    Tiling(options["tile_size"], options["strip_width"])  # bad sizes fail now
    if not tiles and (options["bands"] is not None or options["value_range"] is not None):
        raise UsageError(
            f"{arg('bands')} and {arg('value_range')} apply to images predicted tile by tile; "
            f"add {arg('tiled', True)} (GeoTIFF outputs)."
        )
    if tiles and overlay:
        notes.append(
            "No overlay is drawn for images predicted tile by tile (open the GeoTIFF over the "
            "image in a GIS: docs/large-images.md)"
        )
        logger.info(notes[-1])


def _tiled_one(
    predictor: Predictor,
    image: Path,
    targets: TiledTargets,
    bar: Any,
    result: PredictResult,
    options: dict,
) -> None:
    try:
        done = run_tiled(predictor, image, targets, bar, **options)
    except (DataError, FileNotFoundError) as err:
        result.failed.append(f"{image}: {getattr(err, 'problem', None) or err}")
        return
    result.masks.append(done.mask)
    result.tiled.append(done)
    result.notes += [n for n in done.notes if n not in result.notes]


def _whole_one(
    predictor: Predictor,
    row: _Plan,
    windows: WindowProgress,
    threshold: float | None,
    conf: bool,
    result: PredictResult,
) -> None:
    try:
        rgb = load_rgb(row.image)
    except (DataError, FileNotFoundError) as err:
        result.failed.append(f"{row.image}: {getattr(err, 'problem', None) or err}")
        return
    with windows.image(row.image, *rgb.shape[:2]):
        _write_one(predictor, rgb, row, threshold, conf)
    result.masks.append(row.mask)


def _write_one(
    predictor: Predictor, rgb: np.ndarray, row: _Plan, threshold: float | None, conf: bool
) -> None:
    """One image's mask (255 where unsure), overlay and confidence map."""
    if conf:
        mask, confidence = predictor.predict_with_confidence(rgb)
        if threshold is not None:
            mask = predictor.apply_unsure(mask, confidence)
    else:
        mask = predictor.predict(rgb)
    save_png(mask_to_pil(mask, predictor.palette), row.mask)
    if row.confidence is not None:
        save_png(confidence_image(confidence), row.confidence)
    if row.overlay is not None:
        pic = overlay_with_legend(rgb, mask, predictor.class_names, predictor.palette)
        save_png(pic, row.overlay)


def _plan(images: list[Path], out: Path, overlay: bool, confidence: bool) -> list[_Plan]:
    """Where each image's outputs go; refuses name clashes and overwriting any input."""
    out = out.resolve()
    plan, seen = [], {}
    for image in images:
        if image.stem in seen:
            raise UsageError(
                f"{seen[image.stem]} and {image} would both be written as {image.stem}.png. "
                f"Predict them into separate {arg('out')} folders."
            )
        seen[image.stem] = image
        mask = out / f"{image.stem}.png"
        plan.append(
            _Plan(
                image,
                mask,
                out / "overlays" / f"{image.stem}.png" if overlay else None,
                mask.with_name(f"{image.stem}_confidence.png") if confidence else None,
            )
        )
    inputs, written = set(images), [(r.mask, r.overlay) for r in plan]
    taken = {p for pair in written for p in pair if p is not None} | inputs
    for row in plan:
        for target in (row.mask, row.overlay):
            if target is not None and target in inputs:
                raise UsageError(
                    f"Refusing to overwrite the input {target}. Choose an {arg('out')} folder "
                    "that does not hold the input images."
                )
        if row.confidence is not None and row.confidence in taken:
            raise UsageError(
                f"{row.confidence} is an input or another output as well as a confidence map. "
                f"Rename the image, or predict it into another {arg('out')} folder."
            )
    return plan


class WindowProgress:
    """Progress inside an image that takes many forward passes (windows done / total), and a
    hint about the base size the first time an image is huge at native size."""

    MIN_WINDOWS = 8  # fewer: the image bar alone moves often enough

    def __init__(self, bar: Any, model: Any, protocol: Any) -> None:
        self.bar, self.model, self.protocol, self.hinted = bar, model, protocol, False

    @contextlib.contextmanager
    def image(self, path: Path, height: int, width: int) -> Iterator[None]:
        total = window_count(height, width, self.protocol)
        if total < self.MIN_WINDOWS:
            yield
            return
        self._hint(path, height, width, total)
        task = self.bar.add_task(f"  {path.name}", total=total, unit="win")

        def count(module: Any, inputs: tuple, output: Any) -> None:
            self.bar.advance(task, inputs[0].shape[0])  # windows (and mirrors) in this batch

        handle = self.model.register_forward_hook(count)
        try:
            yield
        finally:
            handle.remove()
            self.bar.remove_task(task)

    def _hint(self, path: Path, height: int, width: int, total: int) -> None:
        if self.hinted or self.protocol.base_size is not None or max(height, width) <= 2048:
            return
        self.hinted = True
        small = window_count(height, width, dataclasses.replace(self.protocol, base_size=1024))
        logger.warning(
            "%s is %d×%d px: at native size it takes %d forward windows. %s predicts at a long "
            "side of 1024 px (%d windows), the mask is resized back to %d×%d.",
            path.name,
            width,
            height,
            total,
            arg("base_size", 1024),
            small,
            width,
            height,
        )
