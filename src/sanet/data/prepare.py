"""Converters from the official downloads to the layouts the loaders read (``sanet prepare``)."""

from __future__ import annotations

import os

import numpy as np


def read_sbd_mat(path: str | os.PathLike) -> np.ndarray:
    """SBD ``cls/<id>.mat``: the ``GTcls.Segmentation`` class map as (H, W) uint8 (0..20)."""
    from scipy.io import loadmat

    mat = loadmat(str(path), squeeze_me=True, struct_as_record=False)
    return np.asarray(mat["GTcls"].Segmentation, dtype=np.uint8)
