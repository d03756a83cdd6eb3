"""The three guarantees of ``sanet calibrate`` checked as a statistician would (docs/trust.md,
"Checked on random splits"): a pool of generated scenes the temperature was not fitted on is cut
into calibration and test images again and again; each split chooses its thresholds on its
calibration images and the test images say whether the promise held.

- mean risk (``risk=α``): ``E[L(λ̂)] ≤ α`` — the mean over splits of the test images' mean
  sure-and-wrong share stays ≤ α (three standard errors of that mean allowed);
- per image (``per_image=δ``, level ``1 − ε``): "at most a share δ of images above α" may fail
  in at most a share ε of splits — the number of failing splits stays within the binomial
  ``Binom(splits, ε)``'s 99.9 % bound;
- per class (``per_class=True``): each class's mean sure-and-wrong share among the labelled
  pixels predicted as it stays ≤ α.

The calibration side uses the library's curves (:func:`sanet.trust.calibration.measure_images`,
computed once per pool: the splits cost no forward pass); the test side measures every image
with the model's logits and ``torch.softmax`` (not the code under test).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from _trust_scenes import NAMES, ColourModel, scenes
from sanet.inference import EvalProtocol, normalize
from sanet.trust.calibration import fit_calibration, measure_images
from sanet.trust.risk import THRESHOLDS, class_thresholds, conformal_threshold, ltt_threshold

pytestmark = pytest.mark.usefixtures("one_thread")

ALPHA, ALPHA_IMAGE, DELTA, EPSILON = 0.1, 0.15, 0.2, 0.1


@pytest.fixture(scope="module")
def pool() -> dict:
    """400 scenes: the library's curves and, by hand, each image's confidence, class and error."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a module fixture runs before the test's one_thread
    try:
        return _pool()
    finally:
        torch.set_num_threads(threads)


def _pool() -> dict:
    model = ColourModel(scale=3.0).eval()
    t = fit_calibration(model, scenes(500, 30), NAMES, EvalProtocol())["temperature"]
    images = scenes(501, 400)
    curves = measure_images(model, images, range(400), 4, EvalProtocol(), t, per_class=True)
    by_hand = []
    for image, label in images:
        with torch.no_grad():
            z = model(normalize(image)[None])["out"][0]
        conf = torch.softmax(z / t, 0).max(0).values.numpy()
        by_hand.append((conf, z.argmax(0).numpy(), label.numpy()))
    return {"stats": curves["images"], "by_hand": by_hand}


def _loss(conf, pred, label, lam, select=None) -> float | None:
    """Sure-and-wrong share of the labelled pixels (of those in ``select``)."""
    keep = label != 255 if select is None else (label != 255) & select
    if not keep.any():
        return None
    return float(((conf >= lam) & (pred != label))[keep].mean())


def _splits(pool: dict, splits: int, n_cal: int = 80) -> dict:
    stats, by_hand = pool["stats"], pool["by_hand"]
    losses, rng = stats.matrix(), np.random.default_rng(7)
    out = {"mean": [], "per_image": [], "per_class": [], "unsure": []}
    for _ in range(splits):
        order = rng.permutation(len(by_hand))
        cal, test = order[:n_cal], [by_hand[i] for i in order[n_cal:]]
        lam = conformal_threshold(losses[cal], ALPHA)[0]
        out["mean"].append(np.mean([_loss(*image, lam) for image in test]))
        lam_image = ltt_threshold(losses[cal], ALPHA_IMAGE, DELTA, EPSILON)[0]
        out["per_image"].append(np.mean([_loss(*image, lam_image) > ALPHA_IMAGE for image in test]))
        out["unsure"].append(np.mean([(image[0] < lam_image).mean() for image in test]))
        curves = [_class_rows(stats, c, cal) for c in range(len(NAMES))]
        chosen = class_thresholds(curves, ALPHA, lam, NAMES)
        out["per_class"].append(
            [_class_risk(test, k, c["threshold"]) for k, c in enumerate(chosen)]
        )
    return {k: np.array(v) for k, v in out.items()}


def _upper(n: int, p: float, level: float) -> int:
    """The smallest ``k`` with ``P(Binom(n, p) ≤ k) ≥ level``, summed by hand."""
    total = 0.0
    for k in range(n + 1):
        total += math.comb(n, k) * p**k * (1 - p) ** (n - k)
        if total >= level:
            return k
    return n


def _class_rows(stats, c: int, cal: np.ndarray) -> np.ndarray:
    """Class ``c``'s loss curves of the calibration images ``cal`` where it is predicted."""
    rows = [
        stats.classes[i][c].wrong / stats.classes[i][c].labelled
        for i in cal
        if c in stats.classes[i] and stats.classes[i][c].labelled
    ]
    return np.stack(rows) if rows else np.zeros((0, len(THRESHOLDS)))


def _class_risk(test: list, k: int, threshold: float | None) -> float:
    """Mean over the test images predicting class ``k`` of its sure-and-wrong share."""
    lam = np.inf if threshold is None else threshold  # None: every such pixel unsure
    values = [_loss(conf, pred, label, lam, pred == k) for conf, pred, label in test]
    return float(np.mean([v for v in values if v is not None]))


@pytest.mark.parametrize("splits", [pytest.param(20, id="20-splits"),
                                    pytest.param(200, id="200-splits", marks=pytest.mark.slow)])  # fmt: skip
def test_each_guarantee_holds_at_its_nominal_rate_over_random_splits(pool, splits):
    got = _splits(pool, splits)
    by_hand = pool["by_hand"]
    # without a threshold the promises would not hold: they are not vacuous
    raw = [_loss(*image, 0.0) for image in by_hand]
    assert np.mean(raw) > 2 * ALPHA and np.mean(np.array(raw) > ALPHA_IMAGE) > 3 * DELTA
    mean = got["mean"]
    assert mean.mean() <= ALPHA + 3 * mean.std(ddof=1) / math.sqrt(splits), mean
    # per image: failing splits within Binom(splits, ε)'s 99.9 % bound
    failures = int((got["per_image"] > DELTA).sum())
    assert failures <= _upper(splits, EPSILON, 0.999), (failures, got["per_image"])
    assert got["unsure"].mean() < 0.8  # and far from "every pixel unsure"
    per_class = got["per_class"]  # (splits, classes)
    se = per_class.std(axis=0, ddof=1) / math.sqrt(splits)
    assert np.all(per_class.mean(axis=0) <= ALPHA + 3 * se), per_class.mean(axis=0)
