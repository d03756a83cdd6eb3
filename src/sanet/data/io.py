"""Reading one image or one mask from disk, with errors that name the file and the fix.

Every loader in this package goes through ``load_image`` and ``load_mask`` so that bad input is
caught here, on the CPU, with the file name — never deep inside a CUDA kernel as garbage.

Conventions (see docs/datasets.md, "Bad input"):
- images: any Pillow mode is turned into 8-bit RGB. Grayscale is replicated to 3 channels,
  RGBA/LA drop their alpha channel, palette images are expanded, 16-bit images are scaled
  by 255/65535. Truncated or unreadable files raise ``DataError``.
- masks: single-channel indices. Palette ("P") PNGs are read as their indices, never as
  colours. An RGB mask whose three channels are equal is accepted as grayscale; a colour-coded
  RGB mask raises. 16-bit masks are accepted when every value fits in 0..255.
- EXIF orientation: by default neither image nor mask is rotated (pixels are used as stored,
  which is how the official annotations of VOC, Context, ADE20K and Cityscapes were made, and
  what ``torchvision.io.decode_image`` does). With ``exif_transpose=True`` each file's own
  orientation tag is applied, for images and masks alike.
- decompression bombs: an image with more than ``max_pixels`` pixels is refused from its
  header, before any pixel is decoded.
"""

from __future__ import annotations

import os
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sanet.data.formats import read_sbd_mat
from sanet.errors import DataError, NotFoundError, arg, speaks_cli

# Pillow's own limit (it warns above this and refuses above twice this).
DEFAULT_MAX_PIXELS = 89_478_485
_EXIF_ORIENTATION = 0x0112

#: A file path, or an open binary file (e.g. an HTTP upload) with ``name`` used in messages.
ImageSource = str | os.PathLike | BinaryIO


class TooManyPixels(DataError):
    """The image's header declares more than ``max_pixels`` pixels (a possible decompression
    bomb); raised before any pixel is decoded. The server answers it with 413, not 415."""


def verb_call(verb: str, *positional: str, **params: object) -> str:
    """A sanet verb as the caller runs it, for the fix of a message: ``sanet prepare voc-aug
    --sbd SBD`` under the command line, ``sanet.prepare('voc-aug', sbd='SBD')`` from Python."""
    if speaks_cli():
        words = [verb.replace("_", "-"), *positional, *(arg(k, v) for k, v in params.items())]
        return f"`sanet {' '.join(map(str, words))}`"
    inside = [*map(repr, positional), *(arg(k, v) for k, v in params.items())]
    return f"`sanet.{verb}({', '.join(inside)})`"


def _name(source: ImageSource) -> str | os.PathLike:
    if isinstance(source, (str, os.PathLike)):
        return source
    return getattr(source, "name", None) or "<upload>"


def _open(source: ImageSource, max_pixels: int, what: str) -> Image.Image:
    """Open lazily (header only) and refuse absurd sizes before decoding any pixel."""
    path = _name(source)
    if isinstance(source, (str, os.PathLike)) and not os.path.exists(source):
        raise NotFoundError(
            f"{path}: {what} file not found. Fix: check the dataset root and layout "
            "(docs/datasets.md) or run `sanet check-data`."
        )
    try:
        # Pillow itself refuses above 2 × Image.MAX_IMAGE_PIXELS (and warns above 1 ×); our
        # own ``max_pixels`` check below turns the rest into an error. No warnings filter is
        # changed here: that would not be thread-safe (check-data decodes in threads).
        im = Image.open(source)
    except Image.DecompressionBombError as err:
        raise TooManyPixels(
            path,
            f"{what} is a possible decompression bomb ({err})",
            "remove the file, or raise max_pixels and PIL.Image.MAX_IMAGE_PIXELS if it really "
            "is that large",
        ) from err
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(
            path,
            f"cannot read the {what} ({type(err).__name__}: {err}); expected a PNG or JPEG file",
            "re-download or re-export the file, or remove it from the dataset",
        ) from err
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise TooManyPixels(
            path,
            f"{what} is {w}×{h} = {w * h:,} pixels, more than max_pixels={max_pixels:,} "
            "(possible decompression bomb)",
            "remove the file, or pass a larger max_pixels if it really is that large",
        )
    return im


def _decode(im: Image.Image, path: str | os.PathLike, what: str) -> None:
    try:
        im.load()
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(
            path,
            f"the {what} is truncated or corrupt ({err})",
            "re-download or re-export the file, or remove it from the dataset",
        ) from err


def exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation tag (1 = as stored) of an opened image."""
    try:
        return int(im.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # malformed EXIF blocks are common; treat as "as stored"
        return 1


def image_to_rgb_array(im: Image.Image) -> np.ndarray:
    """Convert any Pillow mode to an (H, W, 3) uint8 array (conventions in the module doc)."""
    if im.mode == "RGB":
        return np.asarray(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im).astype(np.float32)
        scale = 255.0 / 65535.0
        gray = np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if im.mode == "F":
        arr = np.nan_to_num(np.asarray(im, dtype=np.float32))
        gray = np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8)  # floats taken as 0..1
        return np.repeat(gray[:, :, None], 3, axis=2)
    # "L", "1", "P", "RGBA", "LA", "CMYK", "YCbCr", "PA", ...: Pillow knows the colours.
    # Alpha is dropped (not composited): the colour under a transparent pixel is kept.
    return np.asarray(im.convert("RGB"))


def load_image(
    path: ImageSource,
    *,
    exif_transpose: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Read an image (a file path or an open binary file) as an (H, W, 3) uint8 RGB array.

    Raises:
        TooManyPixels: more than ``max_pixels`` pixels (a ``DataError``).
        DataError: unreadable or truncated file (the message names the fix).
        FileNotFoundError: no such file.
    """
    im = _open(path, max_pixels, "image")
    with im:
        _decode(im, _name(path), "image")
        if exif_transpose:
            im = ImageOps.exif_transpose(im)
        return image_to_rgb_array(im)


def mask_to_index_array(im: Image.Image, path: str | os.PathLike) -> np.ndarray:
    """Convert a mask image to (H, W) uint8 indices, refusing colour-coded masks."""
    if im.mode in ("L", "P"):
        return np.asarray(im)  # "P": the palette indices, never the colours
    if im.mode == "1":
        return np.asarray(im).astype(np.uint8)
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im)
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise DataError(
                path,
                f"16/32-bit mask with values up to {int(arr.max())}; expected class ids "
                "0..K-1 and 255 (ignore) in one 8-bit channel",
                "convert the mask to 8-bit class indices (e.g. with `sanet prepare`)",
            )
        return arr.astype(np.uint8)
    if im.mode in ("RGB", "RGBA", "LA", "PA"):
        arr = np.asarray(im.convert("RGB"))
        r, g, b = arr[..., 0], arr[..., 1], arr[..., 2]
        if np.array_equal(r, g) and np.array_equal(r, b):
            return np.ascontiguousarray(r)  # a grayscale mask saved as RGB: lossless
        raise DataError(
            path,
            f"mask is a colour-coded {im.mode} image; expected single-channel class indices "
            "(mode L, or a palette PNG in mode P)",
            "convert the colours to class ids with the dataset's palette and save an 8-bit "
            "grayscale or palette PNG (the official VOC masks are palette PNGs: use those)",
        )
    raise DataError(
        path,
        f"mask has unsupported mode {im.mode!r}; expected single-channel class indices",
        "save the mask as an 8-bit grayscale or palette PNG",
    )


def load_mask(
    path: str | os.PathLike,
    *,
    exif_transpose: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Read a label mask as (H, W) uint8 raw values (before any dataset-specific mapping).

    ``.mat`` files from the SBD release (``GTcls.Segmentation``) are read too.
    """
    if str(path).endswith(".mat"):
        return read_sbd_mat(path)
    im = _open(path, max_pixels, "mask")
    with im:
        _decode(im, path, "mask")
        if exif_transpose:
            im = ImageOps.exif_transpose(im)
        return mask_to_index_array(im, path)
