"""What a calibrated model adds to ``sanet serve``'s answers (docs/trust.md): each pixel's
calibrated confidence and, with a risk threshold (``sanet calibrate --risk``), its unsure pixels.

A calibrated model is predicted with :meth:`~sanet.inference.Predictor.predict_with_confidence`
— the mask and the confidence from one set of forward passes, under the same working resolution
and stop signal as a plain mask, so admission by forward windows still holds. An uncalibrated
model is predicted as before (:meth:`~sanet.inference.Predictor.predict`), at no extra cost, and
its answers do not change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from sanet.conventions import IGNORE_INDEX
from sanet.inference.confidence import ASSUMPTION
from sanet.inference.predictor import Predictor
from sanet.serve.drift import RequestStats, request_stats
from sanet.serve.middleware import Refused


@dataclass(frozen=True)
class Prediction:
    """One image's prediction at the input's size.

    Attributes:
        mask: class ids ``(H, W)`` (uint8 when they fit), 255 on unsure pixels when asked.
        confidence: calibrated confidence ``(H, W)`` float32 in [0, 1]; ``None`` for an
            uncalibrated model.
        unsure: ``(H, W)`` bool, confidence below the risk threshold; ``None`` without one.
        stats: a calibrated model's per-request statistics (``drift.py``), of the plain mask.
    """

    mask: np.ndarray
    confidence: np.ndarray | None = None
    unsure: np.ndarray | None = None
    stats: RequestStats | None = None


def has_threshold(predictor: Predictor) -> bool:
    """Whether the model carries a risk threshold (unsure pixels can be shown)."""
    return predictor.calibration is not None and predictor.calibration.threshold is not None


def check_unsure(predictor: Predictor, unsure: bool) -> None:
    """Refuse ``?unsure=true`` for a model without a risk threshold, before the upload is read.

    Raises:
        Refused: 422, saying how to get a threshold.
    """
    if unsure and not has_threshold(predictor):
        state = (
            "is calibrated without --risk"
            if predictor.calibration is not None
            else "carries no calibration"
        )
        raise Refused(
            422,
            f"unsure=true needs a model calibrated with a risk threshold, but this model {state}. "
            "Drop unsure=true, or run `sanet calibrate --checkpoint RUN --data KIND:ROOT --risk "
            "0.05` on the model and restart the server with it.",
            "no_risk_threshold",
        )


def predict(
    should_stop: Callable[[], bool],
    predictor: Predictor,
    rgb: np.ndarray,
    side: int | None,
    mark_unsure: bool = False,
) -> Prediction:
    """The mask (and, when calibrated, the confidence) of ``rgb`` at working side ``side``;
    ``mark_unsure``: 255 on unsure pixels (check with :func:`check_unsure` first)."""
    calibration = predictor.calibration
    if calibration is None:
        mask = predictor.predict(rgb, max_side=side, should_stop=should_stop)
        return Prediction(_compact(mask))
    mask, confidence = predictor.predict_with_confidence(
        rgb, max_side=side, should_stop=should_stop
    )
    unsure = None if calibration.threshold is None else predictor.unsure_pixels(confidence, mask)
    stats = request_stats(mask, confidence, unsure, int(predictor.model.num_classes))
    if mark_unsure and unsure is not None:
        mask = np.where(unsure, IGNORE_INDEX, mask)
    return Prediction(_compact(mask), confidence, unsure, stats)


def _compact(mask: np.ndarray) -> np.ndarray:
    return mask.astype(np.uint8) if mask.max(initial=0) < 256 else mask


def unsure_image(unsure: np.ndarray) -> Image.Image:
    """Grey PNG image of the unsure pixels: 255 where unsure, 0 elsewhere."""
    return Image.fromarray(np.where(unsure, 255, 0).astype(np.uint8), mode="L")


def share(unsure: np.ndarray) -> float:
    """Share of the image's pixels that are unsure, rounded as the class fractions are."""
    return round(float(unsure.mean()) if unsure.size else 0.0, 6)


def guarantee(predictor: Predictor) -> dict[str, Any]:
    """``threshold``, ``alpha`` and ``assumption`` of the model's risk threshold (the
    assumption as ``sanet calibrate`` stored it, else sanet's sentence)."""
    calibration = predictor.calibration
    assert calibration is not None and calibration.threshold is not None
    risk = calibration.record.get("risk") or {}
    return {
        "threshold": calibration.threshold,
        "alpha": calibration.alpha,
        "assumption": risk.get("assumption") or ASSUMPTION,
    }


def calibration_words(predictor: Predictor) -> str:
    """Whether the model is calibrated, in a few words for the start-up line: its temperature
    and, with a risk threshold, the threshold and the guarantee (mode and level)."""
    calibration = predictor.calibration
    if calibration is None:
        return "not calibrated (no confidence, unsure pixels or drift: see `sanet calibrate`)"
    words = f"calibrated: T = {calibration.temperature:.4g}"
    if calibration.threshold is None:
        return words + ", no risk threshold"
    risk = calibration.record.get("risk") or {}
    words += f", risk threshold {calibration.threshold:.4g}"
    if risk.get("mode", "mean") == "per_image" and risk.get("delta") is not None:
        level = risk.get("confidence_level")
        within = f", with probability {level}" if level is not None else ""
        return words + (
            f" (per-image guarantee: at most {risk['delta']} of the images have a "
            f"sure-and-wrong share above α = {calibration.alpha}{within})"
        )
    return (
        words
        + f" (mean guarantee: expected sure-and-wrong share of an image ≤ α = {calibration.alpha})"
    )


def model_calibration(predictor: Predictor) -> dict[str, Any] | None:
    """``GET /v1/model``'s ``calibration``: temperature, threshold, alpha and assumption (the
    last three ``None`` without ``--risk``) and the whole stored ``record``; ``None`` for an
    uncalibrated model (or one loaded with ``calibrated=False``)."""
    calibration = predictor.calibration
    if calibration is None:
        return None
    risk = (
        guarantee(predictor)
        if has_threshold(predictor)
        else dict.fromkeys(("threshold", "alpha", "assumption"))
    )
    return {"temperature": calibration.temperature, **risk, "record": calibration.record}
