"""Calibration and risk control (docs/trust.md): the ECE is torchmetrics', temperature scaling
recovers a known temperature, the temperature enters every forward of the protocol, the
conformal threshold is the paper's, and on fresh scenes the sure-and-wrong share stays ≤ α.

References: torchmetrics' ``MulticlassCalibrationError``; a generating temperature; softmax
formulas by hand; plain loops in numpy; a nearest-colour model on generated scenes
(``_trust_scenes.py``) whose probabilities the tests compute with ``torch.softmax`` themselves.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from _trust_scenes import NAMES, ColourModel, scenes
from sanet.inference import EvalProtocol, Predictor, normalize, predict_proba
from sanet.trust.calibration import ReliabilityBins, fit_calibration
from sanet.trust.risk import THRESHOLDS, conformal_threshold, loss_curve

# tiny tensors: on a shared 2-core machine thread wake-ups cost ten times the work
pytestmark = pytest.mark.usefixtures("one_thread")


def test_ece_and_per_class_ece_equal_torchmetrics_and_a_numpy_loop():
    from torchmetrics.classification import MulticlassCalibrationError

    g = torch.Generator().manual_seed(0)
    k, n = 5, 8000
    probs = torch.softmax(torch.randn(n, k, generator=g) * 3, 1)
    probs[:300] = nn.functional.one_hot(torch.randint(0, k, (300,), generator=g), k).float()
    labels = torch.randint(0, k, (n,), generator=g)
    # confidences exactly on the inner bin edges, all correct (under-confident) next to the
    # over-confident random rows: which side of an edge a pixel falls on changes the ECE
    edges = torch.linspace(0, 1, 16)[4:15]
    on_edge = torch.stack([edges, *[(1 - edges) / (k - 1)] * (k - 1)], 1).repeat(40, 1)
    probs[300 : 300 + len(on_edge)] = on_edge
    labels[300 : 300 + len(on_edge)] = 0
    labels[::9] = 255
    reference = MulticlassCalibrationError(k, n_bins=15, norm="l1", ignore_index=255)
    valid = labels != 255
    conf, pred = probs[valid].max(1)
    bins = ReliabilityBins(k)
    for chunk in torch.arange(int(valid.sum())).split(1500):  # streamed, as over images
        bins.update(conf[chunk], pred[chunk] == labels[valid][chunk], pred[chunk])
    assert bins.ece() == pytest.approx(reference(probs, labels).item(), abs=1e-5)
    for c, value in enumerate(bins.per_class()):  # top-label ECE among pixels predicted c
        sel = pred == c
        expected = reference(probs[valid][sel], labels[valid][sel]).item()
        assert value == pytest.approx(expected, abs=1e-5)


def test_the_fit_recovers_the_temperature_that_generated_the_labels():
    g = torch.Generator().manual_seed(1)
    conv = nn.Conv2d(3, 4, 1).eval()
    nn.init.normal_(conv.weight, std=2.0, generator=g)

    class Net(nn.Module):
        def forward(self, x):
            return {"out": conv(x)}

    net, data = Net(), []
    for _ in range(12):  # labels drawn from softmax(z / 2.5): the fit must find 2.5
        image = torch.randint(0, 256, (3, 36, 44), generator=g, dtype=torch.uint8)
        with torch.no_grad():
            z = conv(normalize(image)[None])[0]
        p = torch.softmax(z / 2.5, 0).permute(1, 2, 0).reshape(-1, 4)
        data.append((image, torch.multinomial(p, 1, generator=g)[:, 0].reshape(36, 44)))
    record = fit_calibration(net, data, list("abcd"), EvalProtocol())
    assert record["temperature"] == pytest.approx(2.5, rel=0.05)
    assert record["nll_after"] < record["nll_before"]
    assert record["ece_after"] < record["ece_before"]


class _TilePosition(nn.Module):
    """Two classes, logits ``±0.2 · (column inside the window)``: overlapping windows give a
    pixel different logits, so where the temperature enters shows."""

    def forward(self, x):
        col = torch.arange(x.shape[-1], dtype=x.dtype).expand(x.shape[0], 1, *x.shape[-2:])
        return {"out": torch.cat([0.2 * col, -0.2 * col], 1)}


def test_the_temperature_divides_the_logits_of_every_forward_before_the_average():
    image = torch.zeros(3, 32, 48)
    protocol = EvalProtocol(crop_size=32, stride=16)  # windows at columns 0 and 16
    t = 3.0
    got = predict_proba(_TilePosition(), image, protocol, temperature=t)
    # column 20 lies at column 20 of the first window and column 4 of the second
    first, second = torch.tensor([4.0, -4.0]), torch.tensor([0.8, -0.8])
    expected = (torch.softmax(first / t, 0) + torch.softmax(second / t, 0)) / 2
    assert torch.allclose(got[:, 7, 20], expected, atol=1e-6)
    # averaging first and scaling after would give another number
    wrong = torch.softmax(
        torch.log((torch.softmax(first, 0) + torch.softmax(second, 0)) / 2) / t, 0
    )
    assert not torch.allclose(wrong, expected, atol=1e-3)
    plain = predict_proba(_TilePosition(), image, protocol)
    assert torch.equal(plain, predict_proba(_TilePosition(), image, protocol, temperature=1.0))


def test_loss_curves_and_the_conformal_threshold_by_hand():
    conf = torch.tensor([0.95, 0.5, 0.99, 0.3])
    wrong = torch.tensor([True, True, False, False])
    curve = loss_curve(conf, wrong, labelled=4)
    at = {lam: curve[int(np.searchsorted(THRESHOLDS, lam))] for lam in (0.0, 0.4, 0.5, 0.9, 0.96)}
    assert at == {0.0: 0.5, 0.4: 0.5, 0.5: 0.5, 0.9: 0.25, 0.96: 0.0}
    assert np.all(np.diff(curve) <= 0)  # monotone in the threshold
    # three images, thresholds 0.2 / 0.5 / 0.8; α = 0.5: n/(n+1)·R̂ + 1/(n+1) = 3/4·R̂ + 1/4
    losses = np.array([[0.6, 0.2, 0.0], [0.4, 0.4, 0.1], [0.8, 0.3, 0.2]])
    threshold, adjusted = conformal_threshold(losses, 0.5, np.array([0.2, 0.5, 0.8]))
    assert np.allclose(adjusted, [0.75 * 0.6 + 0.25, 0.75 * 0.3 + 0.25, 0.75 * 0.1 + 0.25])
    assert threshold == 0.5  # 0.475 ≤ 0.5 first at 0.5, not at 0.2 (0.7)
    assert conformal_threshold(losses, 0.26, np.array([0.2, 0.5, 0.8]))[0] is None
    with pytest.raises(RuntimeError, match="monotone"):
        conformal_threshold(np.array([[0.1, 0.2]]), 0.5, np.array([0.1, 0.2]))


def _risk_on_fresh_scenes(seed: int, alpha: float, n_cal: int, n_test: int) -> dict:
    """Calibrate on one draw of scenes; measure the sure-and-wrong share on another with the
    model's logits and ``torch.softmax`` (not the code under test)."""
    model = ColourModel(scale=3.0).eval()
    record = fit_calibration(model, scenes(seed, n_cal), NAMES, EvalProtocol(), alpha=alpha)
    t, lam = record["temperature"], record["risk"]["threshold"]
    losses, raw, unsure = [], [], []
    for image, label in scenes(10_000 + seed, n_test):
        with torch.no_grad():
            z = model(normalize(image)[None])["out"][0]
        conf, wrong = torch.softmax(z / t, 0).max(0).values, z.argmax(0) != label
        losses.append(float(((conf >= lam) & wrong).float().mean()))
        raw.append(float(wrong.float().mean()))
        unsure.append(float((conf < lam).float().mean()))
    return {**record, "test_risk": np.mean(losses), "raw": np.mean(raw), "unsure": np.mean(unsure)}


@pytest.mark.parametrize(
    ("seeds", "n_cal", "n_test"),
    [pytest.param(4, 30, 30, id="4-seeds"), pytest.param(20, 60, 60, marks=pytest.mark.slow)],
)
def test_risk_control_keeps_the_sure_and_wrong_share_below_alpha_on_fresh_scenes(
    seeds, n_cal, n_test
):
    alpha = 0.1
    runs = [_risk_on_fresh_scenes(s, alpha, n_cal, n_test) for s in range(seeds)]
    risks = np.array([r["test_risk"] for r in runs])
    # E[risk] ≤ α over calibration draws and test images; the mean over `seeds` draws carries
    # sampling noise: allow three standard errors of that mean
    noise = 3 * risks.std(ddof=1) / math.sqrt(seeds)
    assert risks.mean() <= alpha + noise, (risks, noise)
    assert noise < alpha / 2  # the allowance is small next to α
    assert np.mean([r["raw"] for r in runs]) > 1.5 * alpha  # without the threshold: far above α
    assert all(r["unsure"] < 0.85 for r in runs)  # and far from "every pixel unsure"
    assert all(r["ece_after"] < r["ece_before"] for r in runs)


def test_predictor_returns_calibrated_and_raw_probabilities_and_unsure_masks():
    model = ColourModel(scale=3.0).eval()
    meta = {"calibration": {"temperature": 2.0, "risk": {"alpha": 0.1, "threshold": 0.8}}}
    calibrated = Predictor.from_model(model, metadata=meta)
    raw = Predictor.from_model(model, metadata=meta, calibrated=False)
    image, _ = scenes(3, 1, size=37)[0]
    with torch.no_grad():
        z = model(normalize(image)[None])["out"][0]
    hand_cal, hand_raw = torch.softmax(z / 2.0, 0).numpy(), torch.softmax(z, 0).numpy()
    assert np.allclose(calibrated.predict_proba(image), hand_cal, atol=1e-6)
    assert np.allclose(raw.predict_proba(image), hand_raw, atol=1e-6)
    mask = z.argmax(0).numpy()
    assert np.array_equal(calibrated.predict(image), mask)  # arg-max unchanged
    assert np.array_equal(raw.predict(image), mask)
    unsure = calibrated.predict(image, unsure=True)
    expected = np.where(hand_cal.max(0) < 0.8, 255, mask)
    assert np.array_equal(unsure, expected)
    assert 0 < (unsure == 255).mean() < 1
    got_mask, conf = calibrated.predict_with_confidence(image)
    assert np.array_equal(got_mask, mask) and np.allclose(conf, hand_cal.max(0), atol=1e-6)
    with pytest.raises(ValueError, match="calibrated=False"):
        raw.predict(image, unsure=True)
    with pytest.raises(ValueError, match="no risk threshold"):
        Predictor.from_model(model).predict(image, unsure=True)
