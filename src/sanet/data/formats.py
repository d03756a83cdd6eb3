"""Readers and writers of the file formats the official datasets ship (docs/datasets.md).

- SBD ``cls/<id>.mat``: ``GTcls.Segmentation`` class maps (VOC ids 0..20);
- PASCAL-Context ``trainval/<id>.mat``: ``LabelMap`` over 459 classes, reduced to the 59-class
  60-label convention through the official 59-class list;
- 8-bit palette PNGs: what ``sanet prepare`` writes (indices for the loaders, colours for people).

Pure functions of one file each; the converter jobs that walk whole downloads are in
``prepare.py``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from sanet._files import atomic_save_bytes
from sanet.errors import DataError, UsageError


def _ints(text: str) -> list[int]:
    """A whitespace-separated table of integers."""
    return [int(word) for word in text.split()]


# PASCAL-Context: the 459-class ids (labels.txt) of the 59 classes, in the order of the 60-label
# PNGs (label k = CONTEXT59_IDS[k - 1]; everything else is background 0).
CONTEXT59_IDS = _ints("""
    2 9 18 19 22 23 25 31 33 34 44 45 46 59 65 68 72 80 85 98 104 105 113 115 144 158 159 162 187
    189 207 220 232 258 259 260 284 295 296 308 324 326 347 349 354 355 360 366 368 397 415 416 420
    424 427 440 445 454 458
""")


def read_sbd_mat(path: str | os.PathLike) -> np.ndarray:
    """SBD ``cls/<id>.mat``: the ``GTcls.Segmentation`` class map as (H, W) uint8 (0..20)."""
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path), squeeze_me=True, struct_as_record=False)
        seg = np.asarray(mat["GTcls"].Segmentation)
    except (KeyError, AttributeError, ValueError, OSError) as err:
        raise DataError(
            path,
            f"not an SBD class file ({type(err).__name__}: {err}); expected a struct GTcls "
            "with a Segmentation field",
            "use the cls/*.mat files of the SBD release (benchmark_RELEASE/dataset/cls)",
        ) from err
    if seg.ndim != 2 or seg.size == 0 or seg.min() < 0 or seg.max() > 20:
        raise DataError(path, "GTcls.Segmentation is not an (H, W) map of ids 0..20", "re-download")
    return seg.astype(np.uint8)


def read_context59_list(path: str | os.PathLike) -> tuple[list[int], list[str]]:
    """The 59-class list: lines ``<459-class id>: <name>`` (as in 59_labels.txt)."""
    ids, names = [], []
    for ln in Path(path).read_text().splitlines():
        if not ln.strip():
            continue
        key, sep, name = ln.partition(":")
        if not sep or not key.strip().isdigit():
            raise UsageError(
                f"{path}: line {ln!r} is not '<id>: <name>'. Fix: pass the official 59_labels.txt"
            )
        ids.append(int(key))
        names.append(name.strip())
    if len(ids) != 59:
        raise UsageError(f"{path}: expected 59 classes, found {len(ids)}")
    order = np.argsort(ids, kind="stable")  # the PNG labels follow the 459-class id order
    return [ids[i] for i in order], [names[i] for i in order]


def context_lut(ids59: Sequence[int]) -> np.ndarray:
    """459-class LabelMap value -> 60-label PNG value (0 = background / unlabeled)."""
    lut = np.zeros(460, dtype=np.uint8)
    for k, cid in enumerate(ids59, start=1):
        lut[cid] = k
    return lut


def convert_context_mat(path: str | os.PathLike, lut: np.ndarray) -> np.ndarray:
    """``trainval/<id>.mat`` ``LabelMap`` (uint16, 0..459) -> (H, W) uint8 0..59."""
    from scipy.io import loadmat

    try:
        label_map = np.asarray(loadmat(str(path))["LabelMap"])
    except (KeyError, ValueError, OSError) as err:
        raise DataError(
            path,
            f"not a PASCAL-Context label file ({type(err).__name__}: {err}); expected a LabelMap",
            "use the trainval/*.mat files of the official trainval.tar.gz",
        ) from err
    if label_map.ndim != 2 or label_map.min() < 0 or label_map.max() >= len(lut):
        raise DataError(
            path, f"LabelMap values must be 0..{len(lut) - 1}", "use the official 459-class files"
        )
    return lut[label_map.astype(np.int64)]


def save_index_png(arr: np.ndarray, path: Path, palette: list[tuple[int, int, int]]) -> None:
    """An 8-bit palette PNG (indices for the loaders, colours for people), written atomically:
    a converter killed mid-way leaves whole masks or none."""
    im = Image.fromarray(arr.astype(np.uint8))
    flat = [c for rgb in palette for c in rgb]
    im.putpalette(flat + [0, 0, 0] * (256 - len(palette)))
    save_image(im, path)


def save_image(image: Image.Image, path: Path) -> None:
    """Write ``image`` atomically in the format its suffix names (``.png``, ``.jpg``)."""
    buf = io.BytesIO()
    image.save(buf, format=Image.registered_extensions()[path.suffix.lower()])
    atomic_save_bytes(path, buf.getvalue())
