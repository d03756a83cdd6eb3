"""Small rasters and a tiny model for the tiled-prediction tests (tests/test_tiled*.py): the
tests build their own GeoTIFFs with rasterio."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from affine import Affine

import sanet
from sanet.inference import EvalProtocol, Predictor

CLASSES = ["background", "a", "b", "c"]
PALETTE = [[0, 0, 0], [230, 25, 75], [60, 180, 75], [0, 130, 200]]
CRS = "EPSG:32633"
TRANSFORM = Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 4000000.0)
#: windows of 64 every 48: an image of a few hundred pixels has many, crossing strips and rows
PROTOCOL = EvalProtocol(crop_size=64, stride=48, window_batch=4)


def tiny_model(num_classes: int = len(CLASSES)) -> torch.nn.Module:
    torch.manual_seed(0)
    return sanet.build_model("sanet", backbone="resnet10t", num_classes=num_classes).eval()


def predictor(
    model: torch.nn.Module, protocol: EvalProtocol = PROTOCOL, temperature: float | None = None
) -> Predictor:
    meta: dict[str, Any] = {"class_names": CLASSES, "palette": PALETTE}
    if temperature is not None:
        meta["calibration"] = {"temperature": temperature, "risk": {"threshold": 0.5, "alpha": 0.1}}
    return Predictor.from_model(model, protocol=protocol, metadata=meta)


def scene(height: int, width: int, seed: int = 0) -> np.ndarray:
    """``(H, W, 3)`` uint8: blocks of colour with texture (the model's answers vary across it)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3))
    blocks = np.repeat(np.repeat(coarse, 16, 0), 16, 1)[:height, :width]
    return (blocks // 2 + rng.integers(0, 128, (height, width, 3))).astype(np.uint8)


def write_tif(
    path: Path, bands: np.ndarray, *, georef: bool = True, tiled: bool = True, **profile: Any
) -> Path:
    """``bands`` ``(C, H, W)`` as a GeoTIFF (with the test CRS and transform unless not
    ``georef``); ``profile`` adds e.g. ``nodata`` or ``photometric``."""
    count, height, width = bands.shape
    prof: dict[str, Any] = {"driver": "GTiff", "height": height, "width": width, "count": count}
    prof |= {"dtype": str(bands.dtype), "compress": "deflate"}
    if tiled:
        prof |= {"tiled": True, "blockxsize": 64, "blockysize": 64}
    if georef:
        prof |= {"crs": CRS, "transform": TRANSFORM}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", **(prof | profile)) as dst:
            dst.write(bands)
    return path


def read_layer(path: Path) -> tuple[np.ndarray, Any]:
    """A written layer's pixels and its dataset profile (plus colour table and tags)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        src = rasterio.open(path)
    with src:
        info = dict(src.profile)
        try:
            info["colormap"] = src.colormap(1)
        except ValueError:  # no colour table
            info["colormap"] = None
        info["tags"] = src.tags()
        info["description"] = src.descriptions[0]
        return src.read(1), info
