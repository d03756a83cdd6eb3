"""``sanet check-data``: scan every (image, mask) pair of a dataset before training.

Flags (severity): unreadable / truncated / missing files, image–mask size mismatches,
out-of-range labels and colour-coded (RGB) masks (errors); masks that are all ignore and
duplicate images (warnings). Counts class pixels and suggests class weights by median
frequency balancing (Eigen & Fergus 2015): ``f_k`` = pixels of class k / pixels of the images
where k appears, ``w_k = median(f) / f_k`` (0 for classes never seen).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from sanet.conventions import IGNORE_INDEX
from sanet.data.datasets import SegmentationDataset
from sanet.data.io import DataError

log = logging.getLogger(__name__)

ERROR_KINDS = ("missing", "unreadable", "truncated", "size_mismatch", "bad_labels", "rgb_mask")
WARNING_KINDS = ("all_ignore", "duplicate")


@dataclass
class Issue:
    kind: str
    severity: str
    index: int
    image: str
    mask: str
    message: str


@dataclass
class _PairResult:
    issues: list[Issue] = field(default_factory=list)
    class_pixels: np.ndarray | None = None
    image_pixels: int = 0
    size: tuple[int, int] | None = None
    digest: str | None = None


def _classify(err: Exception) -> str:
    if isinstance(err, FileNotFoundError):
        return "missing"
    text = str(err)
    if "colour-coded" in text or "16/32-bit mask" in text or "unsupported mode" in text:
        return "rgb_mask" if "colour-coded" in text else "bad_labels"
    return "truncated" if "truncated" in text else "unreadable"


def _check_pair(ds: SegmentationDataset, i: int) -> _PairResult:
    res = _PairResult()
    image_path, mask_path = ds.files(i)

    def issue(kind: str, message: str) -> None:
        severity = "error" if kind in ERROR_KINDS else "warning"
        res.issues.append(Issue(kind, severity, i, image_path, mask_path, message))

    image = raw = None
    try:
        image = ds.read_image(i)
        res.digest = hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest()
        res.size = image.shape[:2]
    except (DataError, FileNotFoundError) as err:
        issue(_classify(err), str(err))
    try:
        raw = ds.read_mask(i)
    except (DataError, FileNotFoundError) as err:
        issue(_classify(err), str(err))
    if raw is None:
        return res
    if image is not None and image.shape[:2] != raw.shape:
        issue(
            "size_mismatch",
            f"{mask_path}: mask is {raw.shape[1]}×{raw.shape[0]} (W×H), image is "
            f"{image.shape[1]}×{image.shape[0]}",
        )
    ids = ds.label_map[raw]
    if ids.min(initial=0) < 0:
        bad = np.unique(raw[ids < 0])
        issue("bad_labels", f"{mask_path}: values {bad[:10].tolist()} are not labels of {ds.name}")
    valid = ids[(ids >= 0) & (ids != IGNORE_INDEX)]
    if valid.size == 0:
        issue("all_ignore", f"{mask_path}: every pixel is ignore (255); the pair teaches nothing")
    res.class_pixels = np.bincount(valid.ravel(), minlength=ds.num_classes)[: ds.num_classes]
    res.image_pixels = int(valid.size)
    return res


def median_frequency_weights(class_pixels: np.ndarray, present_pixels: np.ndarray) -> np.ndarray:
    """``w_k = median(f) / f_k`` with ``f_k = class_pixels_k / present_pixels_k`` (0 if unseen)."""
    seen = (class_pixels > 0) & (present_pixels > 0)
    weights = np.zeros(len(class_pixels), dtype=np.float64)
    if seen.any():
        freq = class_pixels[seen] / present_pixels[seen]
        weights[seen] = np.median(freq) / freq
    return weights


def check_dataset(
    ds: SegmentationDataset,
    *,
    workers: int = 2,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Scan every pair of ``ds``; returns the JSON-serialisable report (see module doc)."""
    k = ds.num_classes
    class_pixels = np.zeros(k, np.int64)
    present_pixels = np.zeros(k, np.int64)  # pixels of the images where class k appears
    class_images = np.zeros(k, np.int64)
    issues: list[Issue] = []
    seen: dict[str, int] = {}
    sizes: list[tuple[int, int]] = []
    with ThreadPoolExecutor(max(1, workers)) as pool:  # decoding releases the GIL
        for i, res in enumerate(pool.map(lambda j: _check_pair(ds, j), range(len(ds)))):
            issues.extend(res.issues)
            if res.size:
                sizes.append(res.size)
            if res.class_pixels is not None:
                present = res.class_pixels > 0
                class_pixels += res.class_pixels
                class_images += present
                present_pixels[present] += res.image_pixels
            if res.digest is not None:
                if res.digest in seen:
                    first = ds.files(seen[res.digest])[0]
                    image, mask = ds.files(i)
                    msg = f"{image}: same pixels as {first}"
                    issues.append(Issue("duplicate", "warning", i, image, mask, msg))
                else:
                    seen[res.digest] = i
            if progress:
                progress(1)
    total = int(class_pixels.sum())
    counts = {kind: 0 for kind in (*ERROR_KINDS, *WARNING_KINDS)}
    for it in issues:
        counts[it.kind] += 1
    hw = np.array(sizes) if sizes else np.zeros((0, 2), int)
    return {
        "dataset": ds.name,
        "num_pairs": len(ds),
        "num_classes": k,
        "errors": sum(it.severity == "error" for it in issues),
        "warnings": sum(it.severity == "warning" for it in issues),
        "issue_counts": counts,
        "issues": [asdict(it) for it in sorted(issues, key=lambda it: (it.index, it.kind))],
        "image_size": {
            "min_hw": hw.min(0).tolist() if len(hw) else None,
            "max_hw": hw.max(0).tolist() if len(hw) else None,
        },
        "class_names": ds.class_names,
        "class_pixels": class_pixels.tolist(),
        "class_images": class_images.tolist(),
        "class_frequency": (class_pixels / total).tolist() if total else [0.0] * k,
        "suggested_class_weights": median_frequency_weights(class_pixels, present_pixels).tolist(),
        "class_weighting": "median frequency balancing: w_k = median(f)/f_k, f_k = pixels of k "
        "/ pixels of the images containing k; 0 for classes never seen",
    }


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)
