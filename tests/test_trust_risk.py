"""The per-image and per-class risk control (docs/trust.md): learn-then-test p-values and the
fixed sequence, the fewest images a per-image bound needs, per-class thresholds, the per-image
view, the curves the measuring pass keeps, and the class thresholds where they are applied.

References: binomial tails with ``math.comb``; plain loops and numpy on hand-made or random
confidences; ``np.quantile``; the stored record read back by ``read_calibration``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from _trust_scenes import ColourModel, scenes
from sanet.inference import Predictor
from sanet.inference.confidence import read_calibration
from sanet.trust.images import ImageStats
from sanet.trust.risk import (
    THRESHOLDS,
    RiskSpec,
    binomial_pvalues,
    class_thresholds,
    ltt_min_images,
    ltt_threshold,
    per_image_view,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _tail(k: int, n: int, delta: float) -> float:
    return sum(math.comb(n, i) * delta**i * (1 - delta) ** (n - i) for i in range(k + 1))


def test_binomial_pvalues_are_the_lower_tail_by_hand():
    for k, n, delta in ((0, 22, 0.1), (3, 30, 0.2), (7, 10, 0.5)):
        assert binomial_pvalues(np.array([k]), n, delta)[0] == pytest.approx(_tail(k, n, delta))


def test_the_fewest_images_a_per_image_bound_needs():
    for delta, epsilon in ((0.1, 0.1), (0.05, 0.05), (0.2, 0.01), (0.5, 0.25)):
        n = ltt_min_images(delta, epsilon)
        assert (1 - delta) ** n <= epsilon + 1e-12 < (1 - delta) ** (n - 1)
    assert ltt_min_images(0.1, 0.1) == 22


def test_ltt_threshold_is_the_fixed_sequence_from_the_top_by_hand():
    grid = np.array([0.2, 0.5, 0.8, 1.0])
    # 30 images; at 1.0 none exceeds 0.1, at 0.8 one, at 0.5 four, at 0.2 twelve
    losses = np.zeros((30, 4))
    losses[:12, 0] = 0.3
    losses[:4, 1] = 0.2
    losses[:1, 2] = 0.15
    threshold, exceeding, p = ltt_threshold(losses, 0.1, 0.2, 0.1, grid)
    assert exceeding.tolist() == [12, 4, 1, 0]
    expected = [_tail(k, 30, 0.2) for k in (12, 4, 1, 0)]
    assert np.allclose(p, expected)
    # p ≤ 0.1 at 1.0 (0.0012) and 0.8 (0.0105), not at 0.5 (0.255): the sequence stops there
    assert [v <= 0.1 for v in expected] == [False, False, True, True]
    assert threshold == 0.8
    assert ltt_threshold(losses, 0.1, 0.2, 0.001, grid)[0] is None  # not even 1.0 (p 0.0012)


def test_class_thresholds_are_the_mean_rule_per_class_floored_by_the_global_one():
    grid_index = {lam: int(np.searchsorted(THRESHOLDS, lam)) for lam in (0.3, 0.6)}
    # class a: 9 images whose loss is 0.5 below 0.3 and 0 from 0.3; class b: 9 images, 0 from 0.6
    a = np.zeros((9, len(THRESHOLDS)))
    a[:, : grid_index[0.3]] = 0.5
    b = np.zeros((9, len(THRESHOLDS)))
    b[:, : grid_index[0.6]] = 0.5
    rare = np.zeros((2, len(THRESHOLDS)))  # 2 images: α = 0.2 needs n ≥ 4
    out = class_thresholds([a, b, rare, rare[:0]], 0.2, 0.4, ["a", "b", "rare", "never"])
    assert [c["own_threshold"] for c in out] == [0.3, 0.6, None, None]
    assert [c["threshold"] for c in out] == [0.4, 0.6, None, None]  # max(own, global 0.4)
    assert [c["images"] for c in out] == [9, 9, 2, 0]
    assert out[0]["empirical_risk"] == 0.0


def test_per_image_view_quantiles_and_worst_images():
    rng = np.random.default_rng(0)
    values = rng.uniform(0, 0.3, 50)
    names = [f"img{i}.png" for i in range(50)]
    view = per_image_view(values, 0.2, names, list(range(50)))
    assert view["quantiles"]["0.95"] == pytest.approx(np.quantile(values, 0.95))
    assert view["share_above_alpha"] == pytest.approx(np.mean(values > 0.2))
    order = sorted(range(50), key=lambda i: -values[i])[:10]
    assert [w["image"] for w in view["worst"]] == [names[i] for i in order]
    assert view["worst"][0]["risk"] == pytest.approx(values.max())


def test_image_stats_equal_loops_over_pixels_for_global_and_class_thresholds():
    g = torch.Generator().manual_seed(0)
    stats = ImageStats(3, per_class=True)
    images = []
    for i in range(5):
        conf = torch.rand(9, 11, generator=g) * 0.7 + 0.3
        pred = torch.randint(0, 3 if i else 2, (9, 11), generator=g)  # class 2 absent in image 0
        labels = torch.randint(0, 3, (9, 11), generator=g)
        labels[0] = 255
        stats.add(f"im{i}", conf, pred, labels)
        images.append((conf.numpy(), pred.numpy(), labels.numpy()))
    rule = [0.5, 0.8, None]
    risk, unsure = stats.at(rule)
    by_class = {0: 0.5, 1: 0.8, 2: np.inf}
    for k, (conf, pred, labels) in enumerate(images):
        lam = np.vectorize(by_class.get)(pred)
        valid = labels != 255
        assert risk[k] == pytest.approx(
            ((conf >= lam) & (pred != labels) & valid).sum() / valid.sum()
        )
        assert unsure[k] == pytest.approx((conf < lam).mean())
    all_valid = np.concatenate([(lab != 255).ravel() for *_, lab in images])
    all_unsure = np.concatenate([(c < np.vectorize(by_class.get)(p)).ravel() for c, p, _ in images])
    assert stats.labelled_unsure(rule) == pytest.approx(all_unsure[all_valid].mean())
    glob, glob_unsure = stats.at(0.6)
    conf, pred, labels = images[3]
    valid = labels != 255
    assert glob[3] == pytest.approx(((conf >= 0.6) & (pred != labels) & valid).sum() / valid.sum())
    assert glob_unsure[3] == pytest.approx((conf < 0.6).mean())
    curves = stats.class_losses(2)  # the images where class 2 is predicted on a labelled pixel
    assert len(curves) == 4
    j = int(np.searchsorted(THRESHOLDS, 0.7))
    conf, pred, labels = images[1]
    sel = (pred == 2) & (labels != 255)
    assert curves[0, j] == pytest.approx(((conf >= 0.7) & (pred != labels))[sel].mean())


def test_risk_spec_guarantee_sentences():
    assert (
        RiskSpec(0.1).guarantee()
        == "expected share of sure-and-wrong labelled pixels per image ≤ 0.1"
    )
    text = RiskSpec(0.1, per_image=0.2, confidence_level=0.95, per_class=True).guarantee()
    assert text.startswith(
        "with probability ≥ 0.95 over the calibration images, at most a share 0.2"
    )
    assert "per class" in text


def test_existing_records_read_as_before_and_class_thresholds_read_back():
    old = {"calibration": {"temperature": 2.0, "risk": {"alpha": 0.1, "threshold": 0.8}}}
    assert read_calibration(old).class_thresholds is None
    new = {"calibration": {"temperature": 2.0, "risk": {"alpha": 0.1, "threshold": 0.5,
                                                         "class_thresholds": [0.5, None, 0.7, 0.6]}}}  # fmt: skip
    assert read_calibration(new).class_thresholds == (0.5, math.inf, 0.7, 0.6)
    model = ColourModel(scale=3.0).eval()
    predictor = Predictor.from_model(model, metadata=new)
    image, _ = scenes(3, 1, size=37)[0]
    mask, conf = predictor.predict_with_confidence(image)
    table = np.array([0.5, np.inf, 0.7, 0.6])
    assert np.array_equal(
        predictor.predict(image, unsure=True), np.where(conf < table[mask], 255, mask)
    )


def test_the_stored_guarantee_is_what_predict_says_and_old_records_keep_the_mean_sentence():
    old = read_calibration({"calibration": {"temperature": 2.0, "risk": {"alpha": 0.1,
                                                                         "threshold": 0.8}}})  # fmt: skip
    assert old.guarantee().startswith(
        "expected share of sure-and-wrong labelled pixels per image ≤ 0.1; the guarantee holds "
        "in expectation"
    )
    spec = RiskSpec(0.1, per_image=0.2, confidence_level=0.95, per_class=True)
    risk = {"alpha": 0.1, "threshold": 0.5, "class_thresholds": [0.5, 0.7],
            "guarantee": spec.guarantee(), "assumption": "holds with the stated probability"}  # fmt: skip
    text = read_calibration({"calibration": {"temperature": 2.0, "risk": risk}}).guarantee()
    assert text == (
        f"each class has its own threshold, at least 0.5: {spec.guarantee()}; the guarantee "
        "holds with the stated probability"
    )
    assert read_calibration({"calibration": {"temperature": 2.0}}).guarantee() is None
