"""Which unlabelled images to label next (``sanet.suggest``): uncertainty mixed with diversity
(docs/active-learning.md).

**Scores.** Each pool image is predicted once under the run's protocol with the calibrated
probabilities (the temperature ``sanet calibrate`` stored). ``mean_entropy`` is the mean over
pixels of the entropy divided by ``log K`` (0: certain, 1: uniform). With a risk threshold
(``sanet calibrate --risk``), ``unsure_share`` is the share of pixels
:meth:`~sanet.inference.Predictor.unsure_pixels` calls unsure, and the image's
``uncertainty`` is the mean of the two; without one, ``uncertainty = mean_entropy``.

**Features.** The input of the model's classifier (SANet: the fused feature ``F`` before the
``1×1`` mask convolution, Fig. 3; FCN: the ``C_4/4`` feature before its last convolution),
averaged over the pixels of every forward pass the protocol makes, and scaled to unit length.
A model whose classifier cannot be hooked (an ``.onnx`` file) uses its mean class probabilities
instead.

**Picking.** Uncertainty-weighted k-center greedy: the first pick is the most uncertain image;
each next one maximises ``uncertainty × d``, where ``d`` is its feature distance to the nearest
image picked so far (so a copy of a picked image, ``d = 0``, is worth nothing). Images within
``duplicate × (the median distance between pool images)`` of a pick are near-duplicates: they
are never picked with it, even when that leaves the budget unfilled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from sanet.errors import UsageError, arg
from sanet.inference.predictor import Predictor, image_to_tensor, normalize
from sanet.inference.protocol import predict_proba

#: least uncertainty a pick is weighted by: a model certain of every image still spreads its
#: picks (pure k-center) instead of treating every image as worth nothing
MIN_UNCERTAINTY = 1e-6
#: at most this many images estimate the median pairwise distance (a fixed, seeded sample)
MEDIAN_SAMPLE = 1000


@dataclass
class ImageScores:
    """What :func:`image_scores` measures on one image (docs/active-learning.md)."""

    mean_entropy: float
    unsure_share: float | None  # None: the model carries no risk threshold
    uncertainty: float
    features: np.ndarray  # (C,) float64, unit length


@dataclass
class Pick:
    """One picked image: its index in the pool, the gain it was picked for, its distance to the
    nearest earlier pick and that pick's index (``None`` for the first), and why."""

    index: int
    gain: float
    distance: float | None
    nearest: int | None
    reason: str


def classifier_layer(model: nn.Module) -> nn.Module | None:
    """The model's per-pixel classifier: the last ``Conv2d`` of its head (else of the model)
    with one output channel per class; ``None`` when there is none (an ``.onnx`` file)."""
    num_classes = getattr(model, "num_classes", None)
    if not isinstance(num_classes, int):
        return None
    where = getattr(model, "head", model)
    found = None
    for module in where.modules():
        if isinstance(module, nn.Conv2d) and module.out_channels == num_classes:
            found = module
    return found


class FeatureTap:
    """Sums the pixel-mean of the classifier's input over the forward passes made while it is
    open (``with tap: ...``); :meth:`mean` is their average, one row of features."""

    def __init__(self, layer: nn.Module) -> None:
        self.layer, self.handle = layer, None
        self.total: torch.Tensor | None = None
        self.count = 0

    def __enter__(self) -> FeatureTap:
        self.total, self.count = None, 0
        self.handle = self.layer.register_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.handle.remove()

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        pooled = inputs[0].detach().float().mean(dim=(2, 3)).sum(0)  # (C,) over the batch
        self.total = pooled if self.total is None else self.total + pooled
        self.count += inputs[0].shape[0]

    def mean(self) -> np.ndarray:
        return (self.total / max(self.count, 1)).double().cpu().numpy()


@torch.no_grad()
def image_scores(predictor: Predictor, image: Any, layer: nn.Module | None) -> ImageScores:
    """The scores and features of one image under ``predictor``'s protocol and calibration
    (``layer``: :func:`classifier_layer` of its model, or ``None`` for class probabilities)."""
    x = normalize(image_to_tensor(image), predictor.device)
    model, protocol, temperature = predictor.model, predictor.protocol, predictor.temperature
    if layer is None:
        p = predict_proba(model, x, protocol, temperature=temperature)  # (K, H, W)
        features = p.mean(dim=(1, 2)).double().cpu().numpy()
    else:
        with FeatureTap(layer) as tap:
            p = predict_proba(model, x, protocol, temperature=temperature)
        features = tap.mean()
    classes = max(p.shape[0], 2)
    entropy = -(p * p.clamp_min(1e-12).log()).sum(0) / math.log(classes)
    h = float(entropy.mean())
    unsure = None
    if predictor.calibration is not None and predictor.calibration.threshold is not None:
        conf, mask = p.max(0)
        pixels = predictor.unsure_pixels(conf.cpu().numpy(), mask.cpu().numpy())
        unsure = float(pixels.mean())
    uncertainty = h if unsure is None else (h + unsure) / 2
    norm = float(np.linalg.norm(features))
    return ImageScores(h, unsure, uncertainty, features / norm if norm > 0 else features)


def duplicate_radius(features: np.ndarray, duplicate: float) -> float:
    """``duplicate`` × the median distance between two pool images (over a seeded sample of at
    most :data:`MEDIAN_SAMPLE` images): closer than this, two images are near-duplicates."""
    if duplicate < 0:
        raise UsageError(f"{arg('duplicate')} must be 0 or more, got {duplicate}.")
    n = len(features)
    if n < 2 or duplicate == 0:
        return 0.0
    rows = features
    if n > MEDIAN_SAMPLE:
        rows = features[np.random.default_rng(0).choice(n, MEDIAN_SAMPLE, replace=False)]
    d = np.sqrt(((rows[:, None, :] - rows[None, :, :]) ** 2).sum(-1))
    return float(duplicate * np.median(d[np.triu_indices(len(rows), k=1)]))


def pick(
    features: np.ndarray, uncertainty: np.ndarray, budget: int, radius: float = 0.0
) -> tuple[list[Pick], dict[int, int]]:
    """Uncertainty-weighted k-center greedy (module docstring).

    Args:
        features: ``(N, C)``, one row per pool image.
        uncertainty: ``(N,)`` in [0, 1].
        budget: picks wanted (at most ``N``).
        radius: images at most this far from a pick are its near-duplicates (an exact copy,
            distance 0, always is).

    Returns:
        ``(picks, duplicates)``: the picks in order, and ``{left-out index: the pick it
        duplicates}``. Ties go to the lower index.
    """
    n = len(features)
    weight = np.maximum(np.asarray(uncertainty, np.float64), MIN_UNCERTAINTY)
    nearest_d = np.full(n, np.inf)
    nearest_i = np.full(n, -1)
    open_ = np.ones(n, bool)
    picks: list[Pick] = []
    duplicates: dict[int, int] = {}
    rank_of: dict[int, int] = {}
    while len(picks) < budget and open_.any():
        gain = np.where(open_, weight * np.where(np.isinf(nearest_d), 1.0, nearest_d), -1.0)
        i = int(np.argmax(gain))
        first = not picks
        d = None if first else float(nearest_d[i])
        j = None if first else int(nearest_i[i])
        reason = _reason(first, weight[i], d, None if j is None else rank_of[j])
        picks.append(Pick(i, float(gain[i]), d, j, reason))
        rank_of[i] = len(picks)
        open_[i] = False
        dist = np.sqrt(((features - features[i]) ** 2).sum(-1))
        closer = dist < nearest_d
        nearest_d[closer], nearest_i[closer] = dist[closer], i
        for k in np.flatnonzero(open_ & (dist <= radius)):
            duplicates[int(k)] = i
            open_[k] = False
    return picks, duplicates


def _reason(first: bool, weight: float, d: float | None, rank: int | None) -> str:
    if first:
        return f"most uncertain image (uncertainty {weight:.3f})"
    return (
        f"largest uncertainty x distance left: {weight:.3f} x {d:.3f} from pick {rank}, the "
        "nearest one"
    )
