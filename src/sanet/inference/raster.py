"""Reading a large image window by window (docs/large-images.md): GeoTIFF, BigTIFF,
cloud-optimised GeoTIFF and any raster GDAL reads go through rasterio, lazily; PNG, JPEG, BMP
and WebP are decoded once as uint8 (Pillow, the rules of ``sanet.data.io``).

Band rules (one line each; the note of a :class:`RasterSource` says which one applied):

- 3 bands: red, green, blue as stored.
- 4 bands whose 4th is alpha (2 bands whose 2nd is alpha): the colour bands, alpha 0 = nodata.
- 1 band: repeated to red, green and blue.
- any other count (multispectral): ``bands=(r, g, b)`` (1-based) names the bands to use.
- 8-bit values as stored; 16-bit unsigned values scaled from 0..65535 to 0..255 (the rule of
  ``sanet.data.io`` for 16-bit images) unless ``value_range=(low, high)`` is given; any other
  type (signed, 32-bit, float) needs ``value_range``. ``value_range`` maps ``low..high``
  linearly onto 0..255, clipped, rounded.
- nodata: the file's nodata value, its alpha band or mask, and NaN: such pixels are skipped and
  written as nodata.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sanet.data.io import load_image, load_mask
from sanet.errors import DataError, NotFoundError, UsageError, arg, speaks_cli

#: Decoded whole by Pillow (as every other sanet command reads images); the rest goes to GDAL.
PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_RE_COPY = "copy or export the file again (gdalinfo shows what GDAL reads of it)"


def numbers_arg(name: str, values: Sequence[float]) -> str:
    """``bands=(4, 3, 2)`` from Python, ``--bands 4,3,2`` on the command line."""
    if speaks_cli():
        return arg(name, ",".join(f"{v:g}" for v in values))
    return arg(name, tuple(values))


def require_rasterio() -> Any:
    """The ``rasterio`` module, or a one-line error saying how to install it."""
    try:
        import rasterio
    except ImportError:  # pragma: no cover - the dev environment has it
        raise UsageError(
            "Tiled prediction reads and writes GeoTIFF with rasterio, which is not installed. "
            "Install it with: pip install 'sanet[geo]'"
        ) from None
    return rasterio


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """No warning about rasters without georeference (they work: no CRS is written)."""
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


class RasterSource:
    """An image read window by window: ``read(rows, cols)`` gives ``(3, h, w)`` uint8 RGB and an
    ``(h, w)`` bool map of valid (not nodata) pixels.

    Attributes:
        path, height, width, crs (``None`` without georeference), transform (an
        ``affine.Affine`` or ``None``), note (the band rule applied, one line).
    """

    path: str
    height: int
    width: int
    crs: Any = None
    transform: Any = None
    note: str = ""

    def read(self, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def valid(self, rows: slice, cols: slice) -> np.ndarray:
        """The ``(h, w)`` valid map alone (a source without nodata reads no pixel for it)."""
        return self.read(rows, cols)[1]

    def identity(self) -> dict[str, Any]:
        """What a resumed prediction checks is still the same image."""
        path = Path(self.path)
        stat = path.stat() if path.is_file() else None
        return {
            "path": str(path.resolve()) if stat else self.path,
            "size": [self.height, self.width],
            "bytes": stat.st_size if stat else None,
            "mtime_ns": stat.st_mtime_ns if stat else None,
        }

    def close(self) -> None:
        """Release the file."""

    def __enter__(self) -> RasterSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class ArraySource(RasterSource):
    """An image already in memory: ``(H, W, 3)`` uint8, with an optional ``(H, W)`` valid map."""

    def __init__(
        self, rgb: np.ndarray, valid: np.ndarray | None = None, path: str = "<array>", note=""
    ) -> None:
        if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
            raise UsageError(
                f"Expected an (H, W, 3) uint8 image array, got shape {rgb.shape} dtype {rgb.dtype}."
            )
        self.rgb, self.valid_map, self.path, self.note = rgb, valid, path, note
        self.height, self.width = int(rgb.shape[0]), int(rgb.shape[1])

    def valid(self, rows: slice, cols: slice) -> np.ndarray:
        if self.valid_map is None:
            return np.ones((rows.stop - rows.start, cols.stop - cols.start), dtype=bool)
        return np.array(self.valid_map[rows, cols], dtype=bool)

    def read(self, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        rgb = np.ascontiguousarray(self.rgb[rows, cols].transpose(2, 0, 1))
        return rgb, self.valid(rows, cols)


class GdalSource(RasterSource):
    """A raster rasterio opens, read lazily (see the module docstring for the band rules)."""

    def __init__(
        self,
        path: str | Path,
        bands: Sequence[int] | None = None,
        value_range: tuple[float, float] | None = None,
    ) -> None:
        rasterio = require_rasterio()
        self.path = str(path)
        try:
            with quiet():
                self._src = rasterio.open(self.path)
        except rasterio.errors.RasterioIOError as err:
            raise DataError(self.path, f"cannot be read as a raster ({err})", _RE_COPY) from err
        src = self._src
        self.height, self.width = src.height, src.width
        self.crs = src.crs if src.crs else None
        self.transform = src.transform if (src.crs or not src.transform.is_identity) else None
        self.nodata = src.nodata
        self._bands, self._alpha, self.note = _choose_bands(src, self.path, bands)
        dtype = src.dtypes[self._bands[0] - 1]
        self._range = _value_range(dtype, self.path, value_range)
        if dtype == "uint16" and value_range is None:
            self.note = "; ".join(
                n
                for n in (
                    self.note,
                    f"{Path(path).name} is 16-bit: values 0..65535 scaled to 0..255 (pass "
                    f"{numbers_arg('value_range', (0, 4095))} to stretch e.g. 12-bit data)",
                )
                if n
            )
        self._masked = self._alpha or any(
            "all_valid" not in {f.name for f in flags} for flags in src.mask_flag_enums
        )
        self._float = np.dtype(src.dtypes[0]).kind == "f"
        self._probe()

    def _probe(self) -> None:
        """Read the first and the last pixel: a truncated file fails here, before any work."""
        for r, c in ((0, 0), (self.height - 1, self.width - 1)):
            self.read(slice(r, r + 1), slice(c, c + 1))

    def valid(self, rows: slice, cols: slice) -> np.ndarray:
        if not (self._masked or self._float):
            return np.ones((rows.stop - rows.start, cols.stop - cols.start), dtype=bool)
        return self.read(rows, cols)[1]

    def read(self, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        from rasterio.errors import RasterioIOError
        from rasterio.windows import Window

        window = Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
        try:
            data = self._src.read(list(self._bands), window=window)
            valid = self._src.dataset_mask(window=window) > 0 if self._masked else None
        except RasterioIOError as err:
            where = f"rows {rows.start}..{rows.stop - 1}, columns {cols.start}..{cols.stop - 1}"
            raise DataError(
                self.path, f"is truncated or corrupt at {where} ({err})", _RE_COPY
            ) from err
        if valid is None:
            valid = np.ones(data.shape[1:], dtype=bool)
        if self._float:
            valid &= ~np.isnan(data).any(axis=0)
        if self._range is not None:
            low, high = self._range
            scaled = (np.nan_to_num(data.astype(np.float32)) - low) * (255.0 / (high - low))
            data = np.clip(scaled + 0.5, 0, 255).astype(np.uint8)
        if len(self._bands) == 1:
            data = np.repeat(data, 3, axis=0)
        return np.ascontiguousarray(data), valid

    def close(self) -> None:
        self._src.close()


def _choose_bands(
    src: Any, path: str, bands: Sequence[int] | None
) -> tuple[tuple[int, ...], bool, str]:
    """The band indices read as RGB (or one band repeated), whether an alpha band marks nodata,
    and the note saying so."""
    from rasterio.enums import ColorInterp

    count, interp = src.count, list(src.colorinterp)
    alpha = interp[-1] == ColorInterp.alpha and count in (2, 4)
    if bands is not None:
        chosen = tuple(int(b) for b in bands)
        if len(chosen) not in (1, 3) or not all(1 <= b <= count for b in chosen):
            raise UsageError(
                f"{path} has {count} band(s); {arg('bands')} must name 3 bands (red, green, "
                f"blue) or 1, each between 1 and {count}, got {list(chosen)}."
            )
        used = "band" + ("s " + ", ".join(map(str, chosen)) if len(chosen) > 1 else f" {chosen[0]}")
        return chosen, alpha, f"{Path(path).name}: {used} of {count} used as RGB ({arg('bands')})"
    if count == 3:
        return (1, 2, 3), False, ""
    if alpha:
        colour = (1, 2, 3) if count == 4 else (1,)
        return colour, True, f"{Path(path).name}: band {count} is alpha; alpha 0 = nodata"
    if count == 1:
        return (1,), False, f"{Path(path).name}: 1 band, repeated to red, green and blue"
    raise UsageError(
        f"{path} has {count} bands and none is marked as alpha: name the 3 used as red, green "
        f"and blue with {numbers_arg('bands', (4, 3, 2) if count >= 4 else (1,))} (1-based)."
    )


def _value_range(
    dtype: str, path: str, value_range: tuple[float, float] | None
) -> tuple[float, float] | None:
    """The values mapped onto 0..255, or ``None`` for 8-bit data read as stored."""
    if value_range is not None:
        low, high = (float(v) for v in value_range)
        if not high > low:
            raise UsageError(f"{arg('value_range')} must be (low, high) with high > low.")
        return low, high
    if dtype == "uint8":
        return None
    if dtype == "uint16":
        return 0.0, 65535.0
    raise UsageError(
        f"{path} holds {dtype} values: pass {numbers_arg('value_range', (0, 1))} (the values shown as "
        "black and white) to map them onto 0..255."
    )


def open_raster(
    image: Any,
    *,
    bands: Sequence[int] | None = None,
    value_range: tuple[float, float] | None = None,
) -> RasterSource:
    """The image as a :class:`RasterSource`: a path (rasterio, or Pillow for PNG/JPEG/BMP/WebP)
    or an ``(H, W, 3)`` uint8 array. Bad input is one line naming the file and the fix."""
    if isinstance(image, np.ndarray):
        return ArraySource(image)
    path = Path(image)
    if not path.is_file():
        raise NotFoundError(f"Image {str(path)!r} does not exist.")
    if path.suffix.lower() in PIL_SUFFIXES and pil_decodes(path):
        if bands is not None or value_range is not None:
            raise UsageError(
                f"{path.name} is read as 8-bit RGB (as every sanet command reads PNG and JPEG); "
                f"{arg('bands')} and {arg('value_range')} apply to rasters GDAL reads (GeoTIFF)."
            )
        return _pil_source(path)
    return GdalSource(path, bands, value_range)


def pil_decodes(path: str | Path) -> bool:
    """Whether Pillow decodes the image whole: a PNG, JPEG, BMP or WebP within Pillow's
    decompression-bomb limit (89 MP); larger ones are read lazily through GDAL instead."""
    from PIL import Image

    if Path(path).suffix.lower() not in PIL_SUFFIXES:
        return False
    try:
        with Image.open(path) as im:
            return im.size[0] * im.size[1] <= (Image.MAX_IMAGE_PIXELS or 2**62)
    except Exception:
        return True  # the decoder names the problem


def _pil_source(path: Path) -> ArraySource:
    from PIL import Image

    rgb = load_image(path, max_pixels=2**62)  # a truncated file is a DataError naming it
    valid, note = None, ""
    with Image.open(path) as im:
        if "A" in im.getbands():
            valid = np.asarray(im.getchannel("A")) > 0
            note = f"{path.name}: alpha 0 = nodata"
        elif im.mode in ("L", "1", "I", "I;16", "F"):
            note = f"{path.name}: 1 band, repeated to red, green and blue"
    return ArraySource(rgb, valid, str(path), note)


def raster_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` from the file's header, without decoding pixels."""
    from PIL import Image

    try:
        with warnings.catch_warnings(), Image.open(path) as im:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return im.size[1], im.size[0]
    except Exception:
        pass  # a format Pillow does not read, or a huge one: GDAL reads the header
    rasterio = require_rasterio()
    try:
        with quiet(), rasterio.open(str(path)) as src:
            return src.height, src.width
    except rasterio.errors.RasterioIOError as err:
        raise DataError(str(path), f"cannot be read as a raster ({err})", _RE_COPY) from err


class LabelSource:
    """A label mask read window by window: raw uint8 values ``(h, w)`` of band 1 (GDAL), or the
    whole mask decoded once (PNG, by ``sanet.data.io``'s rules: palette PNGs as indices)."""

    def __init__(self, path: str | Path) -> None:
        self.path, self._src, self._raw = str(path), None, None
        if str(path).endswith(".mat") or pil_decodes(path):
            self._raw = load_mask(path, max_pixels=2**62)
            self.height, self.width = self._raw.shape
            return
        rasterio = require_rasterio()
        try:
            with quiet():
                self._src = rasterio.open(self.path)
        except rasterio.errors.RasterioIOError as err:
            raise DataError(self.path, f"cannot be read as a mask ({err})", _RE_COPY) from err
        self.height, self.width = self._src.height, self._src.width

    def read(self, rows: slice, cols: slice) -> np.ndarray:
        if self._raw is not None:
            return self._raw[rows, cols]
        from rasterio.windows import Window

        window = Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
        data = self._src.read(1, window=window)  # type: ignore[union-attr]
        if data.size and (data.min() < 0 or data.max() > 255):
            raise DataError(
                self.path,
                f"mask holds values up to {data.max()}; expected class ids 0..K-1 and 255",
                "convert the mask to 8-bit class indices",
            )
        return data.astype(np.uint8)

    def close(self) -> None:
        if self._src is not None:
            self._src.close()


__all__ = [
    "PIL_SUFFIXES",
    "ArraySource",
    "GdalSource",
    "LabelSource",
    "RasterSource",
    "open_raster",
    "pil_decodes",
    "quiet",
    "raster_size",
    "require_rasterio",
]
