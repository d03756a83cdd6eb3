"""The GeoTIFF layers of a tiled prediction (docs/large-images.md).

Each layer (the class ids, and on request the confidence and the unsure pixels) is a tiled,
DEFLATE-compressed GeoTIFF (BigTIFF when it may pass 4 GB) with the input's CRS and transform,
written into a hidden ``.NAME.partial`` file beside its target, block by block (each block's
files closed and synced), and renamed over the target when every block is written: a file under
the final name is always whole. ``tiled_job.py`` drives it and keeps the resume state.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sanet.conventions import IGNORE_INDEX
from sanet.data.classes import voc_palette
from sanet.inference.raster import RasterSource, quiet, require_rasterio
from sanet.inference.tiled import Block, Tiling

#: nodata of each layer: 255 in the class ids (as the ignore label), 0 in the confidence (a
#: valid pixel's is at least round(255 / K) > 0), 255 in the unsure layer (1 = unsure, 0 = sure).
NODATA = {"mask": IGNORE_INDEX, "confidence": 0, "unsure": IGNORE_INDEX}


@dataclass(frozen=True)
class TiledTargets:
    """The files of one tiled prediction: the class ids at ``mask``, the optional layers beside
    it (``NAME_confidence.tif``, ``NAME_unsure.tif``)."""

    mask: Path
    confidence: Path | None = None
    unsure: Path | None = None

    @classmethod
    def beside(cls, mask: str | Path, confidence: bool, unsure: bool) -> TiledTargets:
        mask = Path(mask)
        layer = lambda name: mask.with_name(f"{mask.stem}_{name}{mask.suffix}")  # noqa: E731
        return cls(
            mask, layer("confidence") if confidence else None, layer("unsure") if unsure else None
        )

    def layers(self) -> dict[str, Path]:
        found = {"mask": self.mask, "confidence": self.confidence, "unsure": self.unsure}
        return {k: v for k, v in found.items() if v is not None}

    @property
    def state(self) -> Path:
        return self.mask.with_name(f".{self.mask.name}.resume.json")

    @staticmethod
    def partial(path: Path) -> Path:
        return path.with_name(f".{path.name}.partial")


def _profile(source: RasterSource, tiling: Tiling, nodata: int) -> dict[str, Any]:
    profile = {
        "driver": "GTiff",
        "height": source.height,
        "width": source.width,
        "count": 1,
        "dtype": "uint8",
        "nodata": nodata,
        "tiled": True,
        "blockxsize": tiling.tile,
        "blockysize": tiling.tile,
        "compress": "deflate",
        "BIGTIFF": "IF_SAFER",
    }
    if source.crs is not None:
        profile["crs"] = source.crs
    if source.transform is not None:
        profile["transform"] = source.transform
    return profile


def create_layers(
    targets: TiledTargets, source: RasterSource, tiling: Tiling, meta: dict[str, Any]
) -> None:
    """The empty partial files, with colour table (class ids) and descriptions."""
    rasterio = require_rasterio()
    k = meta["num_classes"] or IGNORE_INDEX  # unknown: a colour for every id
    palette = list(meta.get("palette") or []) + voc_palette(k)[len(meta.get("palette") or []) :]
    targets.mask.parent.mkdir(parents=True, exist_ok=True)
    for name, path in targets.layers().items():
        with (
            quiet(),
            rasterio.open(
                TiledTargets.partial(path), "w", **_profile(source, tiling, NODATA[name])
            ) as dst,
        ):
            dst.set_band_description(1, name)
            dst.update_tags(
                **{k: json.dumps(v) for k, v in meta.get("tags", {}).get(name, {}).items()}
            )
            if name == "mask":
                colours = {i: (*map(int, palette[i][:3]), 255) for i in range(k)}
                dst.write_colormap(1, colours | {IGNORE_INDEX: (0, 0, 0, 0)})


def block_layers(
    block: Block,
    unsure: Callable[[np.ndarray], np.ndarray] | None,
    confidence: bool = True,
) -> dict[str, np.ndarray]:
    """A block's layers as uint8: class ids (arg-max at temperature 1), the confidence
    ``round(255 × largest calibrated probability)`` and, with ``unsure`` (the predictor's
    ``unsure_pixels``), 1 where the pixel is unsure; nodata pixels get each layer's nodata."""
    valid = block.valid
    mask = block.probs[0].argmax(0).cpu().numpy().astype(np.uint8)
    out = {"mask": np.where(valid, mask, NODATA["mask"]).astype(np.uint8)}
    if not confidence and unsure is None:
        return out
    conf = block.probs[-1].amax(0).float().cpu().numpy()
    out["confidence"] = np.where(valid, np.rint(np.clip(conf, 0, 1) * 255), 0).astype(np.uint8)
    if unsure is not None:
        flagged = unsure(conf).astype(np.uint8)
        out["unsure"] = np.where(valid, flagged, NODATA["unsure"]).astype(np.uint8)
    return out


def write_block(targets: TiledTargets, block: Block, layers: dict[str, np.ndarray]) -> None:
    """Write one block into every partial file, close and sync them (a disk error is raised
    as it comes: the caller keeps the partial files for a resume)."""
    rasterio = require_rasterio()
    from rasterio.windows import Window

    window = Window(
        block.cols.start,
        block.rows.start,
        block.cols.stop - block.cols.start,
        block.rows.stop - block.rows.start,
    )
    for name, path in targets.layers().items():
        partial = TiledTargets.partial(path)
        with quiet(), rasterio.open(partial, "r+") as dst:
            dst.write(layers[name], 1, window=window)
        fd = os.open(partial, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def discard_partial(targets: TiledTargets) -> None:
    """Remove a partial prediction (its partial files and state)."""
    for path in targets.layers().values():
        TiledTargets.partial(path).unlink(missing_ok=True)
    targets.state.unlink(missing_ok=True)


def finish_layers(targets: TiledTargets) -> None:
    """Rename the partial files over their targets, the class ids last, then drop the state."""
    layers = list(targets.layers().values())
    for path in layers[1:] + layers[:1]:
        partial = TiledTargets.partial(path)
        if partial.is_file():  # (a run stopped between two renames has renamed some)
            os.replace(partial, path)
    targets.state.unlink(missing_ok=True)
