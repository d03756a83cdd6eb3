"""Fitting a calibration (``sanet.calibrate``, ``sanet calibrate``): temperature scaling by NLL, the top-label ECE
with its reliability bins, and the confidence threshold of conformal risk control.

Definitions (docs/trust.md):

- **calibrated probabilities**: the protocol's map with ``softmax(logits / T)`` in every forward
  (:mod:`sanet.inference.confidence`); ``T`` minimises their negative log-likelihood on the
  labelled pixels of the calibration split.
- **ECE**: top-label expected calibration error over all labelled pixels, 15 equal-width bins
  of the largest probability, ``Σ_b n_b/N · |accuracy_b − confidence_b|`` — torchmetrics'
  ``MulticlassCalibrationError(norm="l1")`` binning (``bucketize(right=True)``, so a confidence
  of exactly 1.0 has a bin of its own).
- **risk threshold** (Angelopoulos et al., "Conformal Risk Control", ICLR 2024): per image the
  loss ``L_i(λ)`` is the share of its labelled pixels that are *sure* (calibrated confidence
  ``≥ λ``) and wrong (the arg-max mask differs from the label). Raising ``λ`` only removes pixels
  from the sure set, so ``L_i`` is non-increasing in ``λ`` (checked on every curve), bounded by
  1. ``λ̂`` is the smallest grid threshold with ``n/(n+1)·R̂(λ) + 1/(n+1) ≤ α``; on a new image
  exchangeable with the ``n`` calibration images, ``E[L(λ̂)] ≤ α``.

Memory stays bounded: images are streamed; the temperature fit keeps one running NLL sum per
grid temperature and uses at most ``fit_images`` images (evenly spaced); the risk control keeps
one loss curve (``len(THRESHOLDS)`` floats) per image.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from sanet.conventions import IGNORE_INDEX
from sanet.errors import UsageError, arg
from sanet.inference.confidence import (
    ASSUMPTION,
    ASSUMPTION_WITH_CONFIDENCE,
    label_stats,
    protocol_settings,
    protocol_views,
)
from sanet.inference.predictor import image_to_tensor, normalize
from sanet.inference.protocol import EvalProtocol
from sanet.trust.audit import image_name
from sanet.trust.images import ImageStats
from sanet.trust.risk import (
    THRESHOLDS,
    RiskSpec,
    class_thresholds,
    conformal_threshold,
    ltt_min_images,
    ltt_threshold,
    per_image_view,
)

logger = logging.getLogger(__name__)

N_BINS = 15
#: Temperatures tried (log-spaced 1/8 … 8, ratio ≈ 1.19); the best is refined by a parabola.
TEMPERATURE_GRID: tuple[float, ...] = tuple(np.exp(np.linspace(math.log(1 / 8), math.log(8), 25)))
_TINY = torch.finfo(torch.float32).tiny  # log(0) guard: a probability that underflowed


class ReliabilityBins:
    """Top-label statistics of pixels in 15 equal-width confidence bins (plus torchmetrics'
    bin of confidence exactly 1.0), kept per predicted class.

    Args:
        num_classes: K.
        n_bins: equal-width bins of [0, 1].
    """

    def __init__(self, num_classes: int, n_bins: int = N_BINS) -> None:
        self.n_bins = n_bins
        self.edges = torch.linspace(0, 1, n_bins + 1)  # float32, as torchmetrics
        shape = (num_classes, n_bins + 1)
        self.count, self.conf, self.correct = (np.zeros(shape) for _ in range(3))

    def update(self, conf: torch.Tensor, correct: torch.Tensor, pred: torch.Tensor) -> None:
        """Add pixels: ``conf`` (N,) float32 largest probability, ``correct`` (N,) bool,
        ``pred`` (N,) predicted class."""
        bins = torch.bucketize(conf.float(), self.edges.to(conf.device), right=True) - 1
        flat = (pred.long() * (self.n_bins + 1) + bins).cpu()
        size = self.count.size
        self.count += (
            torch.bincount(flat, minlength=size).double().numpy().reshape(self.count.shape)
        )
        for total, values in ((self.conf, conf), (self.correct, correct)):
            w = torch.bincount(flat, weights=values.double().cpu(), minlength=size)
            total += w.numpy().reshape(total.shape)

    def ece(self) -> float:
        """Top-label ECE over every pixel added (0.0 when none)."""
        return _ece(self.count.sum(0), self.conf.sum(0), self.correct.sum(0))

    def per_class(self) -> list[float | None]:
        """ECE over the pixels predicted as each class (``None``: none predicted)."""
        return [
            _ece(n, c, a) if n.sum() else None
            for n, c, a in zip(self.count, self.conf, self.correct, strict=True)
        ]

    def table(self) -> dict[str, list[float]]:
        """Per bin: pixel count, mean confidence and accuracy (the reliability diagram); the
        last entry is the bin of confidence exactly 1.0."""
        n, c, a = self.count.sum(0), self.conf.sum(0), self.correct.sum(0)
        safe = np.maximum(n, 1)
        return {
            "count": n.tolist(),
            "confidence": (c / safe).tolist(),
            "accuracy": (a / safe).tolist(),
        }


def _ece(count: np.ndarray, conf: np.ndarray, correct: np.ndarray) -> float:
    total = count.sum()
    return float(np.abs(correct - conf).sum() / total) if total else 0.0


def fit_temperature(temperatures: Sequence[float], nll: Sequence[float]) -> float:
    """The minimiser of the NLL over ``log T``: the best grid point, refined by the parabola
    through it and its two neighbours (the NLL of temperature scaling is smooth in ``log T``)."""
    x, y = np.log(np.asarray(temperatures, float)), np.asarray(nll, float)
    i = int(np.argmin(y))
    if i in (0, len(y) - 1):
        logger.warning(
            "The NLL is smallest at the edge of the temperature grid (T = %.3g); the model is "
            "extremely over- or under-confident on this split.",
            temperatures[i],
        )
        return float(temperatures[i])
    (x0, x1, x2), (y0, y1, y2) = x[i - 1 : i + 2], y[i - 1 : i + 2]
    den = (x1 - x0) * (y1 - y2) - (x1 - x2) * (y1 - y0)
    if den == 0:
        return float(temperatures[i])
    vertex = x1 - 0.5 * ((x1 - x0) ** 2 * (y1 - y2) - (x1 - x2) ** 2 * (y1 - y0)) / den
    return float(np.exp(np.clip(vertex, x0, x2)))


def fit_subset(indices: Sequence[int], fit_images: int) -> list[int]:
    """At most ``fit_images`` of ``indices``, evenly spaced: the images the temperature is
    fitted on."""
    if fit_images < 1:
        raise UsageError(f"{arg('fit_images')} must be at least 1, got {fit_images}.")
    return list(indices)[:: max(1, math.ceil(len(indices) / fit_images))]


def fit_calibration(
    model: nn.Module,
    dataset: Any,
    class_names: Sequence[str],
    protocol: EvalProtocol,
    *,
    indices: Sequence[int] | None = None,
    device: str | torch.device = "cpu",
    alpha: float | None = None,
    per_image: float | None = None,
    confidence_level: float = 0.9,
    per_class: bool = False,
    fit_images: int = 200,
    on_image: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Fit the temperature (first pass, at most ``fit_images`` images), then measure ECE and NLL
    before and after and, with ``alpha``, choose the risk threshold (second pass, every image).

    Args:
        dataset: ``dataset[i]`` → ``(image, mask)``: an image :func:`image_to_tensor` reads and an
            ``(H, W)`` mask of ids 0..K-1 and 255.
        alpha, per_image, confidence_level, per_class: the risk request
            (:class:`~sanet.trust.risk.RiskSpec`; ``alpha=None``: no threshold).
        on_image: called with ``"fit"`` or ``"measure"`` after each image (progress bars).

    Returns:
        the calibration record (``calibration.json``): ``temperature``, ``bins``, ``ece_before``,
        ``ece_after``, ``nll_before``, ``nll_after``, ``per_class_ece`` (after), ``reliability``,
        ``reference`` and, with ``alpha``, ``risk``.
    """
    indices = list(range(len(dataset))) if indices is None else list(indices)
    if not indices:
        raise UsageError("The calibration split has no images.")
    spec = RiskSpec(alpha, per_image, confidence_level, per_class)
    spec.check(len(indices))
    model = model.to(device).eval()
    fit = fit_subset(indices, fit_images)
    mean_nll = _fit_pass(model, dataset, fit, protocol, device, on_image)
    temperature = fit_temperature(TEMPERATURE_GRID, mean_nll)
    names = list(class_names)
    result = measure_images(
        model, dataset, indices, len(names), protocol, temperature, device, per_class, on_image
    )
    record = _record(temperature, result, names, len(indices), protocol)
    record["fit"] = {
        "images": len(fit),
        "temperatures": list(TEMPERATURE_GRID),
        "nll": mean_nll.tolist(),
    }
    record["reliability"] = {
        "bin_edges": np.linspace(0, 1, N_BINS + 1).tolist(),
        "before": result["before"].table(),
        "after": result["after"].table(),
    }
    unsure = None
    if alpha is not None:
        record["risk"], unsure = risk_record(result["images"], spec, names)
    record["reference"] = result["images"].reference(unsure)
    return record


def _fit_pass(
    model: nn.Module,
    dataset: Any,
    fit: list[int],
    protocol: EvalProtocol,
    device: str | torch.device,
    on_image: Callable[[str], None] | None,
) -> np.ndarray:
    """First pass: the mean NLL over the labelled pixels of the ``fit`` images at every
    temperature of :data:`TEMPERATURE_GRID` (one set of forwards per image)."""
    nll_grid, fit_pixels = np.zeros(len(TEMPERATURE_GRID)), 0
    for i in fit:
        x, y = _sample(dataset, i, device)
        views = [(t, _label_nll(y)) for t in TEMPERATURE_GRID]
        nll_grid += [float(v.double().sum()) for v in protocol_views(model, x, protocol, views)]
        fit_pixels += int((y != IGNORE_INDEX).sum())
        if on_image:
            on_image("fit")
    if fit_pixels == 0:
        raise UsageError("The calibration images hold no labelled pixel (every mask is 255).")
    return nll_grid / fit_pixels


def _record(
    temperature: float,
    result: dict[str, Any],
    names: list[str],
    images: int,
    protocol: EvalProtocol,
) -> dict[str, Any]:
    """The measured part of the record: temperature, ECE and NLL before and after."""
    pixels = max(result["pixels"], 1)
    return {
        "temperature": temperature,
        "bins": N_BINS,
        "ece_before": result["before"].ece(),
        "ece_after": result["after"].ece(),
        "nll_before": result["nll"][0] / pixels,
        "nll_after": result["nll"][1] / pixels,
        "per_class_ece": dict(zip(names, result["after"].per_class(), strict=True)),
        "per_class_ece_before": dict(zip(names, result["before"].per_class(), strict=True)),
        "images": images,
        "labelled_pixels": result["pixels"],
        "protocol": protocol_settings(protocol),
    }


def _sample(
    dataset: Any, index: int, device: str | torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    image, mask = dataset[index]
    x = normalize(image_to_tensor(image), device)
    return x, torch.as_tensor(np.asarray(mask)).long().to(device)


def _label_nll(y: torch.Tensor) -> Callable[[torch.Tensor, slice], torch.Tensor]:
    """``reduce`` giving ``−log p[label]`` on labelled pixels, 0 elsewhere."""

    def reduce(band: torch.Tensor, rows: slice) -> torch.Tensor:
        labels = y[rows]
        valid = labels != IGNORE_INDEX
        p = band.gather(0, labels.clamp(max=band.shape[0] - 1)[None])[0]
        return torch.where(valid, -p.clamp_min(_TINY).log(), torch.zeros_like(p))

    return reduce


def measure_images(
    model: nn.Module,
    dataset: Any,
    indices: Sequence[int],
    num_classes: int,
    protocol: EvalProtocol,
    temperature: float,
    device: str | torch.device = "cpu",
    per_class: bool = False,
    on_image: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Second pass: reliability bins and NLL at ``T = 1`` and ``T``, and what each image gives
    the risk control and the reference (:class:`~sanet.trust.images.ImageStats`; wrong: the
    plain arg-max; sure: the calibrated confidence)."""
    before, after = ReliabilityBins(num_classes), ReliabilityBins(num_classes)
    nll, pixels = [0.0, 0.0], 0
    images = ImageStats(num_classes, per_class)
    for i in indices:
        x, y = _sample(dataset, i, device)
        raw, cal = protocol_views(
            model, x, protocol, [(1.0, label_stats(y)), (temperature, label_stats(y))]
        )
        valid = y != IGNORE_INDEX
        labels = y[valid]
        for bins, view, k in ((before, raw, 0), (after, cal, 1)):
            pred, conf, p = view[0][valid].long(), view[1][valid], view[2][valid]
            bins.update(conf, pred == labels, pred)
            nll[k] += float(-p.clamp_min(_TINY).log().double().sum())
        pixels += int(valid.sum())
        images.add(image_name(dataset, i), cal[1], raw[0].long(), y)
        if on_image:
            on_image("measure")
    return {"before": before, "after": after, "nll": nll, "pixels": pixels, "images": images}


def risk_record(
    images: ImageStats, spec: RiskSpec, names: Sequence[str]
) -> tuple[dict[str, Any], np.ndarray]:
    """The ``risk`` record of ``spec`` on the measured images (docs/trust.md), and each image's
    unsure share under the thresholds chosen."""
    losses, alpha = images.matrix(), spec.alpha
    assert alpha is not None
    if spec.per_image is None:
        threshold, adjusted = conformal_threshold(losses, alpha)
        if threshold is None:
            raise UsageError(
                f"No confidence threshold keeps the sure-and-wrong share at {arg('risk', alpha)} "
                f"on these {len(losses)} images: the smallest reachable is {adjusted.min():.4g}. "
                f"Use a larger {arg('risk')}, more images, or a better model."
            )
        j = int(np.searchsorted(THRESHOLDS, threshold))
        record = {"mode": "mean", "alpha": alpha, "threshold": threshold, "images": len(losses)}
        record["empirical_risk"] = float(losses[:, j].mean())
        record["adjusted_risk"] = float(adjusted[j])
    else:
        record = _per_image_threshold(losses, spec)
    rule: Any = record["threshold"]
    if spec.per_class:
        classes = [images.class_losses(c) for c in range(len(names))]
        record["per_class"] = class_thresholds(classes, alpha, rule, names)
        rule = record["class_thresholds"] = [c["threshold"] for c in record["per_class"]]
    risk, unsure = images.at(rule)
    record["unsure_share"] = images.labelled_unsure(rule)
    record["loss_monotone_in_threshold"] = True  # conformal_threshold refuses curves that are not
    record["guarantee"] = spec.guarantee()
    record["assumption"] = ASSUMPTION if spec.per_image is None else ASSUMPTION_WITH_CONFIDENCE
    record["per_image"] = per_image_view(risk, alpha, images.names, images.labelled)
    return record, unsure


def _per_image_threshold(losses: np.ndarray, spec: RiskSpec) -> dict[str, Any]:
    """The learn-then-test threshold of ``spec`` (:func:`~sanet.trust.risk.ltt_threshold`)."""
    alpha, delta, epsilon = spec.alpha, spec.per_image, 1 - spec.confidence_level
    assert alpha is not None and delta is not None
    threshold, exceeding, pvalues = ltt_threshold(losses, alpha, delta, epsilon)
    n = len(losses)
    if threshold is None:
        raise UsageError(
            f"No confidence threshold keeps the share of images above {arg('risk', alpha)} at "
            f"{arg('per_image', delta)} with {arg('confidence_level', spec.confidence_level)}: "
            f"even at confidence 1.0, {int(exceeding[-1])} of these {n} images exceed {alpha} "
            f"(p = {pvalues[-1]:.3g} > {epsilon:.3g}). Use a larger {arg('risk')} or "
            f"{arg('per_image')}, more images, or a better model."
        )
    j = int(np.searchsorted(THRESHOLDS, threshold))
    return {
        "mode": "per_image",
        "alpha": alpha,
        "delta": delta,
        "confidence_level": spec.confidence_level,
        "threshold": threshold,
        "images": n,
        "min_images": ltt_min_images(delta, epsilon),
        "exceeding_images": int(exceeding[j]),
        "p_value": float(pvalues[j]),
        "empirical_risk": float(losses[:, j].mean()),
    }
