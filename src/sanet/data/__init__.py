"""Datasets, paired transforms, synthetic scenes and converters (docs/datasets.md).

```python
from sanet.data import build_dataset, train_transforms
ds = build_dataset("voc", "data/VOCdevkit/VOC2012", split="train",
                   transforms=train_transforms(base_size=520, crop_size=480))
image, mask = ds[0]          # float (3, 480, 480) normalised, int64 (480, 480)
ds.files(0)                  # (image path, mask path) for error messages
```
"""

from __future__ import annotations

import os
from collections.abc import Callable

from sanet.conventions import IGNORE_INDEX
from sanet.data.datasets import SegmentationDataset, Transforms
from sanet.data.io import DataError, load_image, load_mask
from sanet.data.layouts import (
    build_ade20k,
    build_cityscapes,
    build_folder,
    build_pascal_context,
    build_voc,
    build_voc_aug,
)
from sanet.data.synthetic import SyntheticDataset
from sanet.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    denormalize,
    eval_transforms,
    train_transforms,
)
from sanet.errors import UsageError, arg, suggest

_BUILDERS: dict[str, Callable[..., SegmentationDataset]] = {
    "voc": build_voc,
    "voc-aug": build_voc_aug,
    "pascal-context": build_pascal_context,
    "ade20k": build_ade20k,
    "cityscapes": build_cityscapes,
    "folder": build_folder,
}
DATASET_KINDS = (*_BUILDERS, "synthetic")
_COMMON_OPTIONS = ("exif_transpose", "max_pixels", "check_files")
# options of one kind only, beside the common ones
_KIND_OPTIONS = {
    "synthetic": ("num_images", "size", "seed", "generator", "family"),
    "folder": ("label_map",),
}


def list_datasets() -> list[str]:
    """The dataset kinds ``build_dataset`` accepts."""
    return list(DATASET_KINDS)


def build_dataset(
    kind: str,
    root: str | os.PathLike | None,
    split: str = "train",
    transforms: Transforms | None = None,
    **kwargs: object,
) -> SegmentationDataset:
    """Build a segmentation dataset of one of the layouts in docs/datasets.md.

    Args:
        kind: one of ``list_datasets()``.
        root: the dataset folder (ignored for ``synthetic``).
        split: ``train``/``val`` (and the layout's own split names).
        transforms: ``transforms(image, mask) -> (image, mask)``, e.g. ``train_transforms()``.
        **kwargs: ``exif_transpose``, ``max_pixels``, ``check_files`` (see
            :class:`SegmentationDataset`); for ``synthetic`` also ``num_images``, ``size``,
            ``seed``, ``generator`` (``"scenes"``, ``"glyphs"`` or ``"family"``) and ``family``
            (the family member's seed, docs/datasets.md); for ``folder`` also
            ``label_map`` (raw mask value -> class id, e.g. ``{255: 1}`` for 0/255 binary masks).

    Returns:
        A dataset with ``num_classes``, ``class_names``, ``palette`` and ``files(i)``.
    """
    if kind not in DATASET_KINDS:
        raise UsageError(
            f"unknown dataset kind {kind!r}; expected one of {', '.join(DATASET_KINDS)}."
            + suggest(kind, DATASET_KINDS)
        )
    allowed = _COMMON_OPTIONS + _KIND_OPTIONS.get(kind, ())
    for key in kwargs:
        if key not in allowed:
            raise UsageError(
                f"{kind}: unknown dataset option {key!r}; expected one of {', '.join(allowed)}."
                + suggest(key, allowed)
            )
    if kind == "synthetic":
        return SyntheticDataset(split, transforms=transforms, **kwargs)  # type: ignore[arg-type]
    if root is None:
        raise UsageError(f"{kind}: a dataset root folder is required (only synthetic has none)")
    return _BUILDERS[kind](root, split, transforms=transforms, **kwargs)


def parse_data_spec(spec: str, name: str = "data") -> tuple[str, str | None]:
    """``"KIND:PATH"`` -> (kind, path); ``"synthetic"`` needs no path. ``name`` is the argument
    that holds ``spec`` (for the message)."""
    kind, _, path = spec.partition(":")
    if kind not in DATASET_KINDS:
        raise UsageError(
            f"{arg(name, spec)} has an unknown kind {kind!r}; expected KIND:PATH with KIND one "
            f"of {', '.join(DATASET_KINDS)}." + suggest(kind, DATASET_KINDS)
        )
    if kind != "synthetic" and not path:
        raise UsageError(
            f"{arg(name, spec)} has no path; expected KIND:PATH, e.g. {kind}:data/{kind}."
        )
    return kind, (path or None)


__all__ = [
    "DATASET_KINDS",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DataError",
    "SegmentationDataset",
    "SyntheticDataset",
    "build_dataset",
    "denormalize",
    "eval_transforms",
    "list_datasets",
    "load_image",
    "load_mask",
    "parse_data_spec",
    "train_transforms",
]
