"""``sanet check-data``: scan every (image, mask) pair of a dataset before training.

Flags (severity), per pair: unreadable / truncated / missing files, image–mask size mismatches,
out-of-range labels and colour-coded (RGB) masks (errors); masks that are all ignore and
duplicate images (warnings). Over the whole split (:func:`label_issues`, index -1): fewer than
2 classes, masks holding only 0 and 255 while 255 means ignore (binary masks saved as 0/255),
labelled pixels of one class only (errors); a class that never appears while ignore covers a
large share of the pixels, and a large ignore share in general (warnings). Counts class pixels
and suggests class weights by median frequency balancing (Eigen & Fergus 2015): ``f_k`` =
pixels of class k / pixels of the images where k appears, ``w_k = median(f) / f_k`` (0 for
classes never seen).

:func:`check_training_labels` runs the split-wide checks at the start of training on a bounded
sample of masks (and reads the rest only to confirm a refusal).
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
from sanet.errors import UsageError, arg, speaks_cli

log = logging.getLogger(__name__)

ERROR_KINDS = (
    "missing",
    "unreadable",
    "truncated",
    "size_mismatch",
    "bad_labels",
    "rgb_mask",
    "too_few_classes",
    "mask_0_255",
    "one_class",
)
WARNING_KINDS = ("all_ignore", "duplicate", "absent_class", "high_ignore")
#: A class that never appears while this share of the pixels is ignore: 255 may be that class.
SIGNATURE_IGNORE_SHARE = 0.2
#: Above this share of ignore pixels, warn in any case.
HIGH_IGNORE_SHARE = 0.5
#: Masks the start of training reads (evenly spaced over the split); the rest only to confirm
#: a refusal.
TRAINING_SAMPLE = 64


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
    ignore_pixels: int = 0
    raw_values: np.ndarray | None = None  # (256,) bool: the raw values this mask holds
    size: tuple[int, int] | None = None
    digest: str | None = None


@dataclass
class LabelStats:
    """What the masks read so far hold, after the dataset's ``label_map``."""

    num_classes: int
    masks: int = 0
    class_pixels: np.ndarray = field(init=False)
    ignore_pixels: int = 0
    raw_values: np.ndarray = field(init=False)  # (256,) bool: raw values seen in any mask

    def __post_init__(self) -> None:
        self.class_pixels = np.zeros(self.num_classes, np.int64)
        self.raw_values = np.zeros(256, bool)

    def add(self, raw: np.ndarray, label_map: np.ndarray) -> None:
        """Count one raw mask (values the map does not know are left out). One histogram of
        the 256 raw values does it: the map is applied to the bins, not to every pixel."""
        self.masks += 1
        hist = np.bincount(raw.ravel(), minlength=256)[:256]
        self.raw_values |= hist > 0
        self.ignore_pixels += int(hist[label_map == IGNORE_INDEX].sum())
        labelled = (label_map >= 0) & (label_map != IGNORE_INDEX)
        self.class_pixels += np.bincount(
            label_map[labelled], weights=hist[labelled], minlength=self.num_classes
        )[: self.num_classes].astype(np.int64)

    @property
    def ignore_share(self) -> float:
        total = int(self.class_pixels.sum()) + self.ignore_pixels
        return self.ignore_pixels / total if total else 0.0

    def present(self) -> list[int]:
        return np.flatnonzero(self.class_pixels).tolist()


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
    res.raw_values = np.bincount(raw.ravel(), minlength=256)[:256] > 0
    res.ignore_pixels = int((ids == IGNORE_INDEX).sum())
    if ids.min(initial=0) < 0:
        bad = np.unique(raw[ids < 0])
        issue("bad_labels", f"{mask_path}: values {bad[:10].tolist()} are not labels of {ds.name}")
    valid = ids[(ids >= 0) & (ids != IGNORE_INDEX)]
    if valid.size == 0:
        issue("all_ignore", f"{mask_path}: every pixel is ignore (255); the pair teaches nothing")
    res.class_pixels = np.bincount(valid.ravel(), minlength=ds.num_classes)[: ds.num_classes]
    res.image_pixels = int(valid.size)
    return res


def _label_map_fix(value: int = 1) -> str:
    """How to read raw 255 as class ``value``, in a recipe and in the caller's words."""
    option = f"{{label_map: {{255: {value}}}}}"
    if speaks_cli():
        where = f"for check-data and eval {arg('data_options')} '{option}'"
    else:
        where = f"for check_data and evaluate {arg('data_options', {'label_map': {255: value}})}"
    recipe = f"in a recipe data.options: {option}"
    return f"the dataset option label_map ({recipe}; {where}; docs/datasets.md)"


def _names(ds: SegmentationDataset, ids: list[int]) -> str:
    return ", ".join(f"{ds.class_names[k]!r} ({k})" for k in ids)


def _percent(share: float) -> str:
    return f"{100 * share:.0f} %"


def label_issues(stats: LabelStats, ds: SegmentationDataset, scope: str) -> list[tuple[str, str]]:
    """(kind, message) of every split-wide problem of the masks counted in ``stats``.

    ``scope`` names what was read in the messages, e.g. ``"folder:train"`` or ``"a sample of 64
    of the 10582 masks of folder:train"``.
    """
    k = ds.num_classes
    if k < 2:
        return [_too_few_classes(ds)]
    present = stats.present()
    absent = [c for c in range(k) if c not in present]
    share = stats.ignore_share
    raw = set(np.flatnonzero(stats.raw_values).tolist())
    if ds.label_map[IGNORE_INDEX] == IGNORE_INDEX and IGNORE_INDEX in raw and raw <= {0, 255}:
        return [_mask_0_255(ds, scope, absent, share)]
    if len(present) <= 1:
        return [_one_class(ds, scope, present, share)]
    if absent and share >= SIGNATURE_IGNORE_SHARE:
        return [
            (
                "absent_class",
                f"{scope}: {_names(ds, absent)} never appear{'s' * (len(absent) == 1)} while "
                f"{_percent(share)} of the pixels are ignore (255). If 255 marks "
                f"{'that class' if len(absent) == 1 else 'one of them'} in these masks, map it "
                f"with {_label_map_fix(absent[0])}.",
            )
        ]
    if share >= HIGH_IGNORE_SHARE:
        return [
            (
                "high_ignore",
                f"{scope}: {_percent(share)} of the pixels are ignore (255); the loss and the "
                "metrics see only the rest. Check that 255 means 'unlabelled' in these masks; "
                f"if it is a class, map it with {_label_map_fix()}.",
            )
        ]
    return []


def _too_few_classes(ds: SegmentationDataset) -> tuple[str, str]:
    k = ds.num_classes
    return (
        "too_few_classes",
        f"{ds.name}: {k} class{'' if k == 1 else 'es'} "
        f"({', '.join(map(repr, ds.class_names))}); segmentation needs at least 2. Fix: "
        "add the background as class 0 (for a folder dataset, classes.txt lines "
        "'background' then 'object': mask value k = line k).",
    )


def _mask_0_255(
    ds: SegmentationDataset, scope: str, absent: list[int], share: float
) -> tuple[str, str]:
    return (
        "mask_0_255",
        f"{scope}: every mask holds only the values 0 and 255, and 255 means ignore, so "
        f"{_names(ds, absent)} never appear{'s' * (len(absent) == 1)} "
        f"({_percent(share)} of the pixels are ignored): binary masks saved as 0/255. "
        f"Fix: if 255 marks the object, read it as class 1 with {_label_map_fix()}, or "
        "save the masks with the values 0 and 1.",
    )


def _one_class(
    ds: SegmentationDataset, scope: str, present: list[int], share: float
) -> tuple[str, str]:
    k = ds.num_classes
    what = f"one class only ({_names(ds, present)})" if present else "no class at all"
    if share >= SIGNATURE_IGNORE_SHARE:
        cause = (
            f"{_percent(share)} of the pixels are ignore (255): if 255 marks a class in "
            f"these masks, map it to that class with {_label_map_fix()}."
        )
    else:
        cause = (
            "the masks do not use the values of the class list (mask value k = class k: "
            f"{_names(ds, list(range(min(k, 4))))}{', ...' if k > 4 else ''}); check the "
            "class list and the values the masks hold (`sanet check-data` counts them)."
        )
    return (
        "one_class",
        f"{scope}: the labelled pixels hold {what}; a model would learn nothing and "
        f"validation would score it perfect. Likely cause: {cause}",
    )


def check_training_labels(ds: SegmentationDataset, sample: int = TRAINING_SAMPLE) -> list[str]:
    """The split-wide label checks at the start of training, kept cheap on large datasets.

    Reads ``sample`` masks evenly spaced over the split (all of a smaller split). When they
    show a refusal (one class only, 0/255 masks), the rest of the split is read to confirm it,
    stopping as soon as the masks prove it wrong: a split is refused only for what all its
    masks hold. Warnings of a sample say so.

    Returns:
        the warnings (messages) to show.

    Raises:
        ValueError: fewer than 2 classes, 0/255 masks read with 255 as ignore, or labelled
            pixels of one class only; the message names the cause and the fix.
    """
    n = len(ds)
    stats = LabelStats(ds.num_classes)
    picked = sorted({i * n // sample for i in range(sample)}) if n > sample else list(range(n))
    for i in picked:
        stats.add(ds.read_mask(i), ds.label_map)
    scope = f"a sample of {len(picked)} of the {n} masks of {ds.name}" if n > sample else ds.name
    found = label_issues(stats, ds, scope)
    refused = [kind for kind, _ in found if kind in ERROR_KINDS]
    if refused and n > sample and refused != ["too_few_classes"]:
        rest = sorted(set(range(n)) - set(picked))
        log.info("%s: checking all %d masks (%s in the sample)", ds.name, n, refused[0])
        for i in rest:
            stats.add(ds.read_mask(i), ds.label_map)
            if len(stats.present()) > 1:  # two classes: neither refusal holds any more
                break
        whole = stats.masks == n
        found = label_issues(
            stats,
            ds,
            f"all {n} masks of {ds.name}"
            if whole
            else f"{stats.masks} of the {n} masks of {ds.name}",
        )
    errors = [message for kind, message in found if kind in ERROR_KINDS]
    if errors:
        raise UsageError(" ".join(errors))
    return [message for _, message in found]


def median_frequency_weights(class_pixels: np.ndarray, present_pixels: np.ndarray) -> np.ndarray:
    """``w_k = median(f) / f_k`` with ``f_k = class_pixels_k / present_pixels_k`` (0 if unseen)."""
    seen = (class_pixels > 0) & (present_pixels > 0)
    weights = np.zeros(len(class_pixels), dtype=np.float64)
    if seen.any():
        freq = class_pixels[seen] / present_pixels[seen]
        weights[seen] = np.median(freq) / freq
    return weights


@dataclass
class _Tally:
    """What the scan of a split has counted so far (:func:`check_dataset`)."""

    num_classes: int
    issues: list[Issue] = field(default_factory=list)
    seen: dict[str, int] = field(default_factory=dict)  # image digest -> first index
    sizes: list[tuple[int, int]] = field(default_factory=list)
    stats: LabelStats = field(init=False)
    class_pixels: np.ndarray = field(init=False)
    present_pixels: np.ndarray = field(init=False)  # pixels of the images where class k appears
    class_images: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.stats = LabelStats(self.num_classes)
        self.class_pixels = np.zeros(self.num_classes, np.int64)
        self.present_pixels = np.zeros(self.num_classes, np.int64)
        self.class_images = np.zeros(self.num_classes, np.int64)

    def add(self, ds: SegmentationDataset, i: int, res: _PairResult) -> None:
        self.issues.extend(res.issues)
        if res.size:
            self.sizes.append(res.size)
        if res.class_pixels is not None:
            present = res.class_pixels > 0
            self.class_pixels += res.class_pixels
            self.class_images += present
            self.present_pixels[present] += res.image_pixels
            self.stats.masks += 1
            self.stats.class_pixels += res.class_pixels
            self.stats.ignore_pixels += res.ignore_pixels
            self.stats.raw_values |= res.raw_values
        if res.digest is None:
            return
        if res.digest in self.seen:
            first = ds.files(self.seen[res.digest])[0]
            image, mask = ds.files(i)
            msg = f"{image}: same pixels as {first}"
            self.issues.append(Issue("duplicate", "warning", i, image, mask, msg))
        else:
            self.seen[res.digest] = i


def check_dataset(
    ds: SegmentationDataset,
    *,
    workers: int = 2,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Scan every pair of ``ds``; returns the JSON-serialisable report (see module doc)."""
    tally = _Tally(ds.num_classes)
    with ThreadPoolExecutor(max(1, workers)) as pool:  # decoding releases the GIL
        for i, res in enumerate(pool.map(lambda j: _check_pair(ds, j), range(len(ds)))):
            tally.add(ds, i, res)
            if progress:
                progress(1)
    if tally.stats.masks or ds.num_classes < 2:  # split-wide problems (no pair: index -1)
        for kind, message in label_issues(tally.stats, ds, ds.name):
            severity = "error" if kind in ERROR_KINDS else "warning"
            tally.issues.append(Issue(kind, severity, -1, "", "", message))
    return _report(ds, tally)


def _report(ds: SegmentationDataset, tally: _Tally) -> dict[str, Any]:
    """The report of :func:`check_dataset` from what the scan counted."""
    k, issues, class_pixels = ds.num_classes, tally.issues, tally.class_pixels
    total = int(class_pixels.sum())
    counts = {kind: 0 for kind in (*ERROR_KINDS, *WARNING_KINDS)}
    for it in issues:
        counts[it.kind] += 1
    hw = np.array(tally.sizes) if tally.sizes else np.zeros((0, 2), int)
    weights = median_frequency_weights(class_pixels, tally.present_pixels)
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
        "ignore_pixels": tally.stats.ignore_pixels,
        "ignore_share": tally.stats.ignore_share,
        "class_names": ds.class_names,
        "class_pixels": class_pixels.tolist(),
        "class_images": tally.class_images.tolist(),
        "class_frequency": (class_pixels / total).tolist() if total else [0.0] * k,
        "suggested_class_weights": weights.tolist(),
        "class_weighting": "median frequency balancing: w_k = median(f)/f_k, f_k = pixels of k "
        "/ pixels of the images containing k; 0 for classes never seen",
    }


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)
