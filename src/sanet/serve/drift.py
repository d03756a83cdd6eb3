"""Drift on the server: are the last requests still like the images the model was calibrated on?

``sanet calibrate`` stores, with the model, the per-image statistics of its calibration images
(``calibration["reference"]``: mean calibrated confidence, unsure share, class shares, pixels;
docs/trust.md). The server computes the same statistics of every answered request
(:func:`request_stats`) and keeps the last ``window`` of them (:class:`DriftMonitor`).

The test (docs/deploy.md, "Drift"): for each statistic (a *feature*: mean confidence, unsure
share, the share of each class, the input's pixels), the two-sample Kolmogorov–Smirnov distance
``D`` between the window and the reference. ``D`` is distribution-free: when the requests are
drawn from the calibration images' distribution, ``P(D ≥ d)`` depends only on the two sample
sizes, and :func:`ks_exceed` computes it exactly (no large-sample approximation; ties, as in
class shares of 0 or equal image sizes, only make the test more conservative). The window is
"drifting" when some feature's ``D`` reaches the critical distance at level ``false_alarm / m``
(Bonferroni over the ``m`` features), so a window of in-distribution requests raises a false
alarm with probability at most ``false_alarm`` (5 %). All features share one critical distance
(same sizes, same level): the statistic shown is the largest ``D``, its threshold that distance.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sanet.errors import UsageError, arg

#: Default share of in-distribution windows allowed to raise a false alarm.
FALSE_ALARM = 0.05
#: Default number of recent requests compared with the reference.
WINDOW = 50
#: Features other than the class shares, with their words.
SCALAR_FEATURES = {
    "mean_confidence": "mean confidence",
    "unsure_share": "unsure share",
    "pixels": "input size (pixels)",
}
CLASS_PREFIX = "class_share:"


@dataclass(frozen=True)
class RequestStats:
    """One answered request's statistics, as the reference stores them per image.

    Attributes:
        mean_confidence: mean of the calibrated confidence over the image's pixels.
        unsure_share: share of its pixels below the risk threshold (``None`` without one).
        class_shares: share of its pixels predicted as each class (the plain arg-max mask).
        pixels: ``H × W`` of the input image.
    """

    mean_confidence: float
    unsure_share: float | None
    class_shares: tuple[float, ...]
    pixels: int


def request_stats(
    mask: np.ndarray, confidence: np.ndarray, unsure: np.ndarray | None, num_classes: int
) -> RequestStats:
    """The statistics of one prediction at the input's size (``mask``: plain class ids)."""
    size = max(1, mask.size)
    counts = np.bincount(mask.ravel().astype(np.int64), minlength=num_classes)[:num_classes]
    return RequestStats(
        mean_confidence=float(confidence.mean(dtype=np.float64)),
        unsure_share=None if unsure is None else float(unsure.mean()),
        class_shares=tuple(float(c) / size for c in counts),
        pixels=int(mask.size),
    )


def feature_values(stats: RequestStats, class_names: Sequence[str]) -> dict[str, float]:
    """``{feature: value}`` of one request (the unsure share only when there is one)."""
    values = {"mean_confidence": stats.mean_confidence, "pixels": float(stats.pixels)}
    if stats.unsure_share is not None:
        values["unsure_share"] = stats.unsure_share
    for name, share in zip(class_names, stats.class_shares, strict=False):
        values[CLASS_PREFIX + name] = share
    return values


def feature_words(feature: str) -> str:
    """How a feature reads in a sentence ("mean confidence", "share of 'disc'")."""
    if feature.startswith(CLASS_PREFIX):
        return f"share of {feature[len(CLASS_PREFIX) :]!r}"
    return SCALAR_FEATURES.get(feature, feature)


# --- The reference stored with the model -------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """The calibration images' per-image statistics: ``{feature: sorted values}``."""

    images: int
    features: dict[str, np.ndarray]


def read_reference(
    record: dict[str, Any] | None, class_names: Sequence[str], *, unsure: bool = True
) -> tuple[Reference | None, str]:
    """The reference in a calibration record, or ``None`` and why there is none. ``unsure``:
    whether the served model has a risk threshold (without one, requests have no unsure share
    and the reference's is not compared)."""
    if record is None:
        return None, (
            "the model is not calibrated; `sanet calibrate` stores the reference statistics "
            "drift is measured against"
        )
    ref = record.get("reference")
    if not ref:
        return None, (
            "the model's calibration has no reference statistics: it predates them; "
            "calibrate it again to store them"
        )
    try:
        reference = _parse_reference(ref, class_names)
        if not unsure:
            reference.features.pop("unsure_share", None)
        return reference, ""
    except (TypeError, ValueError, KeyError, AttributeError) as err:
        return None, f"the stored reference statistics cannot be used ({err})"


def _parse_reference(ref: dict[str, Any], class_names: Sequence[str]) -> Reference:
    n, per = int(ref["images"]), ref["per_image"]
    k = len(class_names)
    columns = {
        "mean_confidence": per["mean_confidence"],
        "pixels": per["pixels"],
        "unsure_share": per.get("unsure_share"),
    }
    shares = np.asarray(per["class_shares"], dtype=np.float64)
    if shares.shape != (n, k):
        raise ValueError(f"class shares of shape {shares.shape}, expected {n} images × {k} classes")
    features = {}
    for name, values in columns.items():
        if values is None and name == "unsure_share":
            continue
        column = np.asarray(values, dtype=np.float64)
        if column.shape != (n,):
            raise ValueError(f"{len(column)} values of {name} for {n} images")
        features[name] = column
    for j, name in enumerate(class_names):
        features[CLASS_PREFIX + name] = shares[:, j]
    if n < 1 or not all(np.isfinite(v).all() for v in features.values()):
        raise ValueError("no images, or values that are not finite numbers")
    return Reference(n, {name: np.sort(v) for name, v in features.items()})


# --- The exact two-sample Kolmogorov–Smirnov test ----------------------------------------------


def ks_exceed(n: int, m: int, k: int) -> float:
    """``P(n·m·D ≥ k)`` for the two-sample KS distance ``D`` of samples of sizes ``n`` and ``m``
    from one continuous distribution: one minus the share of the ``C(n + m, n)`` equally likely
    merge orders (lattice paths) that keep ``|i·m − j·n| < k`` at every step (Hodges, 1958)."""
    a, b = min(n, m), max(n, m)
    if k <= 0:
        return 1.0
    row = np.zeros(b + 1)
    log_scale = 0.0
    for i in range(a + 1):
        lo = max(0, (i * b - k) // a + 1)
        hi = min(b, -(-(i * b + k) // a) - 1)
        if lo > hi:
            return 1.0
        new = np.zeros(b + 1)
        new[lo : hi + 1] = 1.0 if i == 0 else np.cumsum(row[lo : hi + 1])
        top = new.max()
        if top <= 0:
            return 1.0
        row = new / top
        log_scale += math.log(top)
    log_paths = math.lgamma(a + b + 1) - math.lgamma(a + 1) - math.lgamma(b + 1)
    inside = math.exp(math.log(row[b]) + log_scale - log_paths) if row[b] > 0 else 0.0
    return min(1.0, max(0.0, 1.0 - inside))


def ks_critical(n: int, m: int, level: float) -> int | None:
    """The least value ``k`` of ``n·m·D`` that can occur with ``P(n·m·D ≥ k) ≤ level`` (the
    critical distance is ``k / (n·m)``), or ``None`` when even ``D = 1`` is more likely than
    ``level`` (samples too small)."""
    lo, hi = 1, n * m + 1  # P(n·m·D ≥ n·m + 1) = 0 ≤ level
    while lo < hi:
        mid = (lo + hi) // 2
        if ks_exceed(n, m, mid) <= level:
            hi = mid
        else:
            lo = mid + 1
    if lo > n * m:
        return None
    # n·m·D is some |i·m − j·n|: the least such value ≥ lo (the same test, an exact threshold)
    i = np.arange(n + 1, dtype=np.int64) * m
    below = i - (i - lo) // n * n  # i·m − j·n ≥ lo with the largest j
    above = -(-(i + lo) // n) * n - i  # j·n − i·m ≥ lo with the least j
    values = np.concatenate([below[i >= lo], above[-(-(i + lo) // n) <= m]])
    return int(values.min())


def ks_count(reference: np.ndarray, window: np.ndarray) -> int:
    """``n·m·D``: the two-sample KS distance of sorted ``reference`` (n) and ``window`` (m) as
    an integer, ``max |i·m − j·n|`` over the values (``i``, ``j``: how many of each are ≤)."""
    points = np.concatenate([reference, window])
    i = np.searchsorted(reference, points, side="right").astype(np.int64)
    j = np.searchsorted(np.sort(window), points, side="right").astype(np.int64)
    return int(np.abs(i * len(window) - j * len(reference)).max())


# --- The monitor --------------------------------------------------------------------------------


class DriftMonitor:
    """The last ``window`` requests' statistics against the model's reference.

    Args:
        reference: from :func:`read_reference` (``None``: the state is "no reference").
        reason: why there is no reference (shown in the state).
        class_names: the model's classes (the class-share features).
        window: requests compared with the reference (≥ 2).
        false_alarm: the largest share of in-distribution windows that may be flagged.
    """

    def __init__(
        self,
        reference: Reference | None,
        class_names: Sequence[str],
        *,
        reason: str = "",
        window: int = WINDOW,
        false_alarm: float = FALSE_ALARM,
    ) -> None:
        check_settings(window, false_alarm)
        self.reference, self.reason = reference, reason
        self.class_names = list(class_names)
        self.window, self.false_alarm = int(window), float(false_alarm)
        self._recent: deque[dict[str, float]] = deque(maxlen=self.window)
        self._lock = threading.Lock()
        self.features = sorted(reference.features) if reference else []
        self.critical: int | None = None
        if reference is not None:
            level = self.false_alarm / len(self.features)
            self.critical = ks_critical(reference.images, self.window, level)
            if self.critical is None:
                images = f"{reference.images} image" + ("s" if reference.images != 1 else "")
                self.reason = (
                    f"a reference of {images} is too small to tell a window of {self.window} "
                    f"requests apart at a {100 * self.false_alarm:g} % false-alarm rate"
                )
        self._state = self._compute()

    @property
    def threshold(self) -> float | None:
        """The critical KS distance (``None``: no test possible)."""
        if self.reference is None or self.critical is None:
            return None
        return self.critical / (self.reference.images * self.window)

    def summary(self) -> str:
        """The monitor in a few words (the start-up line)."""
        if self.threshold is None:
            return f"drift: no reference ({self.reason})"
        assert self.reference is not None
        return (
            f"drift: the last {self.window} requests against {self.reference.images} "
            f"calibration images (KS threshold {self.threshold:.3f}, {100 * self.false_alarm:g} % "
            "false alarms)"
        )

    def add(self, stats: RequestStats) -> None:
        """Fold one answered request in (its oldest request leaves a full window)."""
        if self.threshold is None:
            return
        with self._lock:
            self._recent.append(feature_values(stats, self.class_names))
            self._state = self._compute()

    def state(self) -> dict[str, Any]:
        """``status`` ("no reference", "collecting", "in distribution", "drifting"), ``detail``
        (a sentence), ``statistic`` and ``threshold`` (KS distances), ``feature`` (where the
        statistic is), the window, the reference's size and ``features`` (per feature: the KS
        distance, the window's and the reference's mean)."""
        with self._lock:
            return dict(self._state)

    def _compute(self) -> dict[str, Any]:
        base: dict[str, Any] = {
            "window": self.window,
            "false_alarm": self.false_alarm,
            "requests": len(self._recent),
            "reference_images": self.reference.images if self.reference else None,
            "statistic": None,
            "threshold": self.threshold,
            "feature": None,
            "features": {},
        }
        if self.threshold is None:
            return {**base, "status": "no reference", "detail": f"No reference: {self.reason}."}
        if len(self._recent) < self.window:
            detail = (
                f"Collecting: {len(self._recent)} of the {self.window} requests compared with "
                f"the {base['reference_images']} calibration images."
            )
            return {**base, "status": "collecting", "detail": detail}
        return {**base, **self._test()}

    def _test(self) -> dict[str, Any]:
        assert self.reference is not None and self.critical is not None
        n, m = self.reference.images, self.window
        per: dict[str, dict[str, float]] = {}
        counts = {}
        for name in self.features:
            values = np.array([r.get(name, 0.0) for r in self._recent])
            ref = self.reference.features[name]
            counts[name] = ks_count(ref, values)
            per[name] = {
                "distance": round(counts[name] / (n * m), 6),
                "window_mean": round(float(values.mean()), 6),
                "reference_mean": round(float(ref.mean()), 6),
            }
        worst = max(self.features, key=lambda f: counts[f])
        statistic, threshold = counts[worst] / (n * m), self.critical / (n * m)
        drifting = counts[worst] >= self.critical
        row = per[worst]
        detail = (
            f"{'Drifting' if drifting else 'In distribution'}: the largest KS distance, "
            f"{statistic:.3f} ({feature_words(worst)}: mean {row['window_mean']:.4g} over the "
            f"last {m} requests, {row['reference_mean']:.4g} over the {n} calibration images), "
            f"is {'at or above' if drifting else 'below'} the threshold {threshold:.3f} "
            f"(a {100 * self.false_alarm:g} % false-alarm rate per window)."
        )
        return {
            "status": "drifting" if drifting else "in distribution",
            "detail": detail,
            "statistic": round(statistic, 6),
            "feature": worst,
            "features": per,
        }


def check_settings(window: Any, false_alarm: Any) -> None:
    """Refuse a window below 2 requests or a false-alarm rate outside (0, 1)."""
    if not isinstance(window, int) or isinstance(window, bool) or window < 2:
        raise UsageError(
            f"{arg('drift_window')} must be a whole number of requests ≥ 2, got {window!r}. "
            f"Try {arg('drift_window', WINDOW)}."
        )
    if not isinstance(false_alarm, (int, float)) or not 0 < false_alarm < 1:
        raise UsageError(
            f"{arg('drift_false_alarm')} must be a share between 0 and 1 (exclusive), got "
            f"{false_alarm!r}. Try {arg('drift_false_alarm', FALSE_ALARM)}."
        )
