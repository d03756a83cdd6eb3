"""Choosing the unsure threshold from per-image loss curves (docs/trust.md, "Unsure pixels with a
guarantee"): the mean-risk threshold of conformal risk control, the per-image threshold in the
learn-then-test style, and the per-class thresholds.

Every rule works on loss curves ``L_i(λ)`` on the fixed grid :data:`THRESHOLDS`, each
non-increasing in ``λ`` (raising the threshold only removes pixels from the sure set) and in
[0, 1]:

- **mean risk** (Angelopoulos, Bates, Fisch, Lei, Schuster, "Conformal Risk Control", ICLR
  2024): ``λ̂`` = the smallest ``λ`` with ``n/(n+1)·R̂(λ) + 1/(n+1) ≤ α``; then
  ``E[L_new(λ̂)] ≤ α`` for a new image exchangeable with the ``n`` calibration images.
- **per image** (Angelopoulos, Bates, Candès, Jordan, Lei, "Learn then Test", 2021): for each
  ``λ`` the null hypothesis "a share ``≥ δ`` of images have ``L(λ) > α``" has the binomial-tail
  p-value ``P(Binom(n, δ) ≤ k(λ))``, ``k(λ)`` the calibration images with ``L_i(λ) > α``; fixed-
  sequence testing from the largest ``λ`` downwards rejects while ``p ≤ ε`` and ``λ̂`` is the
  last rejected. With probability ``≥ 1 − ε`` over the calibration draw,
  ``P(L_new(λ̂) > α | calibration) ≤ δ``.
- **per class**: the mean-risk rule on the class's own loss (the share of an image's labelled
  pixels *predicted* as the class that are sure and wrong), over the calibration images where
  the class is predicted; a class applies ``max(global λ̂, its own)`` so the global guarantee
  still holds (a larger unsure set only lowers every loss).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sanet.errors import UsageError, arg

#: Confidence thresholds of the risk control: every 0.001, and log-spaced towards 1 (where the
#: confidences of a trained model crowd), up to 1.0.
THRESHOLDS: np.ndarray = np.unique(
    np.concatenate([np.linspace(0, 1, 1001), 1 - np.logspace(-3, -7, 41)])
).astype(np.float64)
#: Quantiles of the per-image risk that ``calibration.json`` reports.
QUANTILES = (0.5, 0.75, 0.9, 0.95, 0.99)
WORST_IMAGES = 10


def at_or_above(conf: torch.Tensor, thresholds: np.ndarray = THRESHOLDS) -> np.ndarray:
    """How many of the values ``conf`` (any shape) are ``≥ λ``, at every ``λ`` of ``thresholds``
    (float64, non-increasing)."""
    edges = torch.as_tensor(thresholds, dtype=torch.float64, device=conf.device)
    # thresholds[0..j] are ≤ c exactly when j ≤ index: the pixel is sure for those
    index = torch.searchsorted(edges, conf.reshape(-1).double(), right=True) - 1
    index = index[index >= 0]  # below every threshold: sure at none
    counts = torch.bincount(index.cpu(), minlength=len(thresholds)).double().numpy()
    return np.cumsum(counts[::-1])[::-1]


def loss_curve(
    conf: torch.Tensor, wrong: torch.Tensor, labelled: int, thresholds: np.ndarray = THRESHOLDS
) -> np.ndarray:
    """``L(λ)`` at every threshold: the share of the image's ``labelled`` pixels whose
    confidence is ``≥ λ`` and whose prediction is wrong.

    Shape: conf, wrong ``(N,)`` over the labelled pixels → ``(len(thresholds),)``.
    """
    if labelled == 0:
        return np.zeros(len(thresholds))
    return at_or_above(conf[wrong], thresholds) / labelled


def check_monotone(losses: np.ndarray) -> None:
    """Risk control needs every curve non-increasing in the threshold (true by construction)."""
    if np.any(np.diff(losses, axis=-1) > 1e-12):
        raise RuntimeError(
            "a loss curve increases with the threshold: risk control needs it monotone"
        )


def conformal_threshold(
    losses: np.ndarray, alpha: float, thresholds: np.ndarray = THRESHOLDS
) -> tuple[float | None, np.ndarray]:
    """Conformal risk control: the smallest threshold with ``n/(n+1)·R̂ + 1/(n+1) ≤ α``.

    Args:
        losses: ``(n, len(thresholds))`` per-image loss curves, each non-increasing, in [0, 1].

    Returns:
        ``(threshold or None when none qualifies, adjusted risk at every threshold)``.
    """
    losses = np.asarray(losses, float)
    check_monotone(losses)
    n = len(losses)
    adjusted = n / (n + 1) * losses.mean(axis=0) + 1 / (n + 1)
    ok = np.flatnonzero(adjusted <= alpha)
    return (float(thresholds[ok[0]]) if ok.size else None), adjusted


def binomial_pvalues(exceeding: np.ndarray, n: int, delta: float) -> np.ndarray:
    """``P(Binom(n, δ) ≤ k)`` for each count ``k``: the p-value of "a share ``≥ δ`` of images
    exceed", having seen ``k`` of ``n`` exceed (Learn then Test's binomial tail)."""
    from scipy.special import bdtr  # the binomial CDF (scipy.stats costs seconds to import)

    return bdtr(np.asarray(exceeding, np.float64), n, delta)


def ltt_threshold(
    losses: np.ndarray,
    alpha: float,
    delta: float,
    epsilon: float,
    thresholds: np.ndarray = THRESHOLDS,
) -> tuple[float | None, np.ndarray, np.ndarray]:
    """The per-image threshold: fixed-sequence testing from the largest threshold down, each
    null "``P(L(λ) > α) ≥ δ``" rejected at ``p ≤ ε``; the smallest rejected threshold.

    Returns:
        ``(threshold or None when even the largest is not rejected, images exceeding α at every
        threshold, p-values)``.
    """
    losses = np.asarray(losses, float)
    check_monotone(losses)
    exceeding = (losses > alpha).sum(axis=0)
    pvalues = binomial_pvalues(exceeding, len(losses), delta)
    chosen = None
    for j in range(len(thresholds) - 1, -1, -1):  # the most conservative first
        if pvalues[j] > epsilon:
            break
        chosen = j
    return (None if chosen is None else float(thresholds[chosen])), exceeding, pvalues


def ltt_min_images(delta: float, epsilon: float) -> int:
    """The fewest images with which the per-image test can reject at all: even with no image
    exceeding, ``(1 − δ)^n ≤ ε`` is needed."""
    return math.ceil(math.log(epsilon) / math.log1p(-delta) - 1e-9)


def check_risk_alpha(alpha: float, images: int) -> None:
    """Refuse an α outside (0, 1) or one that ``images`` calibration images cannot reach
    (the adjusted risk is at least ``1/(n+1)``)."""
    if not 0 < alpha < 1:
        raise UsageError(
            f"{arg('risk')} must lie between 0 and 1 (e.g. {arg('risk', 0.05)}), got {alpha}."
        )
    if 1 / (images + 1) > alpha:
        need = math.ceil(1 / alpha) - 1
        raise UsageError(
            f"{arg('risk', alpha)} needs at least {need} calibration images (the guarantee "
            f"costs 1/(n+1)); the split has {images}. Use a larger {arg('risk')} or more images."
        )


def check_per_image(
    alpha: float | None, delta: float, confidence_level: float, images: int | None
) -> None:
    """Refuse a per-image request that cannot work: no ``risk`` (the share an image may
    exceed), ``δ`` or the confidence level outside (0, 1), or fewer images than the test
    needs (``images=None``: not known yet)."""
    if alpha is None:
        raise UsageError(
            f"{arg('per_image')} bounds the share of images whose sure-and-wrong share exceeds "
            f"{arg('risk')}: give both, e.g. {arg('risk', 0.1)} {arg('per_image', 0.1)}."
        )
    for name, value, example in (
        ("per_image", delta, 0.1),
        ("confidence_level", confidence_level, 0.9),
    ):
        if not (isinstance(value, (int, float)) and 0 < value < 1):
            raise UsageError(
                f"{arg(name)} must lie between 0 and 1, excluded (e.g. {arg(name, example)}), "
                f"got {value}."
            )
    need = ltt_min_images(delta, 1 - confidence_level)
    if images is not None and images < need:
        raise UsageError(
            f"{arg('per_image', delta)} at {arg('confidence_level', confidence_level)} needs at "
            f"least {need} calibration images ((1 − {delta})^n ≤ {1 - confidence_level:.3g}); the "
            f"split has {images}. Use more images, a larger {arg('per_image')} or a lower "
            f"{arg('confidence_level')}."
        )


@dataclass(frozen=True)
class RiskSpec:
    """What ``sanet calibrate`` is asked to guarantee (docs/trust.md).

    Attributes:
        alpha: ``risk``: the mean sure-and-wrong share (``per_image=None``), or the share an
            image may exceed; ``None``: no threshold.
        per_image: ``δ``: the share of images allowed above ``alpha``.
        confidence_level: ``1 − ε``: the probability over the calibration draw with which the
            per-image bound holds.
        per_class: also a threshold per predicted class.
    """

    alpha: float | None
    per_image: float | None = None
    confidence_level: float = 0.9
    per_class: bool = False

    def check(self, images: int | None) -> None:
        """Refuse what cannot work with ``images`` calibration images (``None``: not known
        yet: the values only)."""
        if self.alpha is not None:  # per image, α is no mean: any n reaches it
            mean = self.per_image is None and images is not None
            check_risk_alpha(self.alpha, images if mean else math.inf)
        if self.per_image is not None:
            check_per_image(self.alpha, self.per_image, self.confidence_level, images)
        if self.per_class and self.alpha is None:
            raise UsageError(
                f"{arg('per_class', True)} chooses a threshold per class at the risk level: give "
                f"{arg('risk')} too, e.g. {arg('risk', 0.1)}."
            )

    def guarantee(self) -> str:
        """The guarantee, in one sentence."""
        if self.per_image is None:
            text = f"expected share of sure-and-wrong labelled pixels per image ≤ {self.alpha}"
        else:
            text = (
                f"with probability ≥ {self.confidence_level} over the calibration images, at "
                f"most a share {self.per_image} of new images have more than {self.alpha} of "
                "their labelled pixels sure and wrong"
            )
        if self.per_class:
            text += (
                f"; and per class, over new images where the model predicts it, the expected "
                f"share of sure-and-wrong pixels among the labelled pixels predicted as it "
                f"≤ {self.alpha}"
            )
        return text


def class_thresholds(
    curves: Sequence[np.ndarray], alpha: float, floor: float, names: Sequence[str]
) -> list[dict[str, Any]]:
    """Per class: the mean-risk threshold on the class's own loss curves and the one applied,
    ``max(floor, own)``; ``None`` (every pixel predicted as the class unsure) when the class
    was predicted on too few images (``α < 1/(n_c+1)``) or no threshold reaches ``α``.

    Args:
        curves: per class, ``(n_c, len(THRESHOLDS))``: the class's loss on each calibration image
            where it is predicted on a labelled pixel.
        floor: the global threshold.
    """
    out = []
    for name, losses in zip(names, curves, strict=True):
        n = len(losses)
        own = conformal_threshold(losses, alpha)[0] if n and 1 / (n + 1) <= alpha else None
        applied = None if own is None else max(own, floor)
        j = None if applied is None else int(np.searchsorted(THRESHOLDS, applied))
        out.append(
            {
                "class": name,
                "images": n,
                "own_threshold": own,
                "threshold": applied,
                "empirical_risk": None if j is None else float(losses[:, j].mean()),
            }
        )
    return out


def per_image_view(
    values: np.ndarray, alpha: float, names: Sequence[str], labelled: Sequence[int]
) -> dict[str, Any]:
    """The distribution of the per-image sure-and-wrong share at the chosen threshold:
    quantiles, the share of images above ``α``, and the worst images by name."""
    values = np.asarray(values, float)
    order = np.argsort(-values, kind="stable")[:WORST_IMAGES]
    return {
        "mean": float(values.mean()),
        "quantiles": {str(q): float(np.quantile(values, q)) for q in QUANTILES},
        "max": float(values.max()),
        "share_above_alpha": float((values > alpha).mean()),
        "worst": [
            {"image": names[i], "risk": float(values[i]), "labelled_pixels": int(labelled[i])}
            for i in order
        ],
        "values": [round(float(v), 6) for v in values],
    }
