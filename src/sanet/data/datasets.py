"""Segmentation datasets: one class that reads (image, mask) file pairs, one builder per layout.

Every dataset yields ``(image uint8 (3, H, W), mask int64 (H, W))`` with class ids 0..K-1 and
255 = ignore, or ``transforms(image, mask)`` when transforms are given. The raw values stored
in a dataset's mask files are mapped to these ids by a 256-entry lookup table (``label_map``),
so each layout's convention (Context background → 255, ADE20K 0 → 255, Cityscapes labelIds →
trainIds) is one line of data in ``classes.py``.

The builders of each on-disk layout are in ``layouts.py`` (docs/datasets.md).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from sanet.data import classes as C
from sanet.data.io import DEFAULT_MAX_PIXELS, DataError, load_image, load_mask, verb_call
from sanet.errors import NotFoundError, UsageError

log = logging.getLogger(__name__)

Transforms = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class SegmentationDataset(Dataset):
    """(image, mask) pairs on disk, mapped to ids 0..K-1 and 255 by ``label_map``.

    Args:
        pairs: (image path, mask path) per sample.
        class_names: K names; ``num_classes = len(class_names)``.
        palette: K RGB colours for drawing masks.
        label_map: (256,) int array, raw mask value -> class id, 255 (ignore) or -1 (invalid).
        transforms: called as ``transforms(image, mask)`` on every sample.
        name: for messages, e.g. ``"voc:val"``.
        exif_transpose: apply each file's EXIF orientation (image and mask alike).
        max_pixels: refuse larger images (decompression bombs).
        check_files: refuse, here, a dataset with missing files (counted, with examples);
            ``False`` defers each to its read (``sanet check-data`` lists them all).
    """

    def __init__(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        class_names: Sequence[str],
        palette: Sequence[tuple[int, int, int]] | None = None,
        label_map: np.ndarray | None = None,
        transforms: Transforms | None = None,
        name: str = "dataset",
        exif_transpose: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        check_files: bool = True,
    ) -> None:
        self.pairs = [(str(i), str(m)) for i, m in pairs]
        if check_files:
            _check_files_exist(self.pairs, name)
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.palette = list(palette) if palette is not None else C.voc_palette(self.num_classes)
        if len(self.palette) != self.num_classes:
            raise UsageError(
                f"{name}: palette has {len(self.palette)} colours for {self.num_classes} classes"
            )
        self.label_map = C.identity_lut(self.num_classes) if label_map is None else label_map
        self.transforms = transforms
        self.name = name
        self.exif_transpose = exif_transpose
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.pairs)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.name!r}, {len(self)} images, {self.num_classes} classes)"
        )

    def files(self, index: int) -> tuple[str, str]:
        """(image path, mask path) of sample ``index``, to name the files of a bad batch."""
        return self.pairs[index]

    def read_image(self, index: int) -> np.ndarray:
        """Decoded image (H, W, 3) uint8 of sample ``index``."""
        kw = {"exif_transpose": self.exif_transpose, "max_pixels": self.max_pixels}
        return load_image(self.pairs[index][0], **kw)

    def read_mask(self, index: int) -> np.ndarray:
        """Raw mask values (H, W) uint8 of sample ``index``, before ``label_map``."""
        kw = {"exif_transpose": self.exif_transpose, "max_pixels": self.max_pixels}
        return load_mask(self.pairs[index][1], **kw)

    def load_raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Decoded image (H, W, 3) uint8 and raw mask values (H, W) uint8, before mapping."""
        return self.read_image(index), self.read_mask(index)

    def map_labels(self, raw: np.ndarray, mask_path: str) -> np.ndarray:
        """Raw mask values -> int64 ids 0..K-1 / 255; raises ``DataError`` on unknown values."""
        ids = self.label_map[raw]
        if ids.min(initial=0) < 0:
            bad = np.unique(raw[ids < 0])
            raise DataError(
                mask_path,
                f"mask holds values {bad[:10].tolist()} that are not labels of {self.name} "
                f"(expected {_describe_lut(self.label_map)})",
                "check the dataset kind and num_classes, re-run `sanet prepare`, and run "
                "`sanet check-data` to list every bad file",
            )
        return ids.astype(np.int64)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Validated sample: (image uint8 (3, H, W), mask int64 (H, W))."""
        image, raw = self.load_raw(index)
        image_path, mask_path = self.pairs[index]
        if image.shape[:2] != raw.shape:
            raise DataError(
                mask_path,
                f"mask is {raw.shape[1]}×{raw.shape[0]} (W×H) but its image {image_path} is "
                f"{image.shape[1]}×{image.shape[0]}; image and mask must have the same size"
                + _exif_hint(image_path, raw.shape, self.exif_transpose),
                "re-export the mask at the image's size, or remove the pair",
            )
        mask = self.map_labels(raw, mask_path)
        image_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return image_t, torch.from_numpy(mask)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.load(index)
        if self.transforms is not None:
            return self.transforms(image, mask)
        return image, mask


class DatasetSubset(Dataset):
    """The samples ``indices`` of ``dataset`` (a fold of a k-fold split), with its classes,
    palette and file names.

    Args:
        dataset: a :class:`SegmentationDataset` (or anything with its attributes).
        indices: the samples kept, in order.
        name: for messages (default: the dataset's name and the number kept).
    """

    def __init__(self, dataset: Dataset, indices: Sequence[int], name: str | None = None) -> None:
        self.dataset, self.indices = dataset, [int(i) for i in indices]
        self.class_names = list(dataset.class_names)  # type: ignore[attr-defined]
        self.num_classes = len(self.class_names)
        self.palette = list(dataset.palette)  # type: ignore[attr-defined]
        base = getattr(dataset, "name", "dataset")
        self.name = name or f"{base}[{len(self.indices)} of {len(dataset)}]"  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.indices)

    def files(self, index: int) -> tuple[str, str]:
        return self.dataset.files(self.indices[index])  # type: ignore[attr-defined]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dataset[self.indices[index]]


def _check_files_exist(pairs: list[tuple[str, str]], name: str) -> None:
    """Fail early, with a count and examples, when listed files are missing."""
    missing = [p for pair in pairs for p in pair if not os.path.exists(p)]
    if missing:
        kind = name.partition(":")[0]
        raise NotFoundError(
            f"{name}: {len(missing)} of {2 * len(pairs)} files are missing (e.g. "
            f"{', '.join(missing[:3])}). Fix: complete the download or re-run `sanet prepare`; "
            f"{verb_call('check_data', data=f'{kind}:ROOT')} lists every missing file."
        )


def _describe_lut(lut: np.ndarray) -> str:
    valid = np.flatnonzero(lut >= 0)
    runs, start = [], valid[0]
    for a, b in zip(valid, [*valid[1:], None], strict=True):
        if b is None or b != a + 1:
            runs.append(f"{start}" if start == a else f"{start}..{a}")
            start = b
    return "raw values " + ", ".join(runs)


def _exif_hint(image_path: str, mask_hw: tuple[int, ...], exif_transpose: bool) -> str:
    """Say so when the sizes would match after applying the image's EXIF rotation."""
    from PIL import Image

    from sanet.data.io import exif_orientation

    try:
        with Image.open(image_path) as im:
            orientation, (w, h) = exif_orientation(im), im.size
    except Exception:
        return ""
    if orientation in (5, 6, 7, 8) and (w, h) == (mask_hw[0], mask_hw[1]) and not exif_transpose:
        return (
            f" (the image has EXIF orientation {orientation}: rotated it would match; pass "
            "exif_transpose=True if the masks were drawn on the rotated view)"
        )
    return ""
