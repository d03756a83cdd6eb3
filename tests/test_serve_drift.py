"""Drift on the server (issue 30.4; docs/deploy.md, "Drift"): the exact two-sample KS test
against a brute-force count of merge orders and against scipy; the false-alarm rate of
in-distribution windows; a stream served over HTTP that turns "drifting" exactly when scipy's
exact test (Bonferroni over the features) says so; a model without reference statistics.

The served model is ``RampModel`` (test_deploy_serve.py): its calibrated confidence depends on
the image's width, so images of other sizes are a shift whose statistics are known.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from scipy import stats

from sanet.errors import UsageError
from sanet.inference import Predictor
from sanet.serve.app import create_app
from sanet.serve.drift import (
    CLASS_PREFIX,
    DriftMonitor,
    RequestStats,
    ks_count,
    ks_critical,
    ks_exceed,
    read_reference,
)
from sanet.serve.unsure import predict
from test_deploy_serve import (
    BASE,
    NAMES,
    THRESHOLD,
    RampModel,
    calibrated,
    hand_predictor,
    png_bytes,
    ramp_reference,
    upload,
)


def merge_order_counts(n: int, m: int) -> dict[int, int]:
    """``{n·m·D: how many of the C(n + m, n) merge orders give it}``, by enumerating them."""
    counts: dict[int, int] = {}
    for first in itertools.combinations(range(n + m), n):  # positions of the first sample
        i = j = worst = 0
        chosen = set(first)
        for pos in range(n + m):
            i, j = (i + 1, j) if pos in chosen else (i, j + 1)
            worst = max(worst, abs(i * m - j * n))
        counts[worst] = counts.get(worst, 0) + 1
    return counts


@pytest.mark.parametrize("n,m", [(5, 3), (6, 4), (4, 4), (9, 2)])
def test_ks_exceed_is_the_share_of_merge_orders(n: int, m: int) -> None:
    counts = merge_order_counts(n, m)
    total = math.comb(n + m, n)
    assert sum(counts.values()) == total
    for k in range(1, n * m + 2):
        share = sum(c for d, c in counts.items() if d >= k) / total
        assert ks_exceed(n, m, k) == pytest.approx(share, abs=1e-12), k
    for level in (0.01, 0.05, 0.2):  # the least distance that occurs and is significant
        significant = [
            k for k in counts if sum(c for d, c in counts.items() if d >= k) <= level * total
        ]
        assert ks_critical(n, m, level) == (min(significant) if significant else None)


def test_ks_distance_and_p_value_equal_scipys_exact_test() -> None:
    rng = np.random.default_rng(0)
    for n, m in [(200, 50), (40, 10), (13, 29), (500, 20)]:
        for shift in (0.0, 0.4):
            ref = np.round(rng.normal(size=n), 1)  # ties, as in image sizes and zero shares
            win = np.round(rng.normal(shift, size=m), 1)
            k = ks_count(np.sort(ref), win)
            exact = stats.ks_2samp(ref, win, method="exact")
            assert k / (n * m) == pytest.approx(exact.statistic, abs=1e-12)
            assert ks_exceed(n, m, k) == pytest.approx(exact.pvalue, rel=1e-6, abs=1e-12)


def fake_stats(rng: np.random.Generator, shift: float = 0.0) -> RequestStats:
    shares = rng.dirichlet([4.0, 2.0, 1.0 + shift])
    conf = float(rng.beta(8 - 6 * shift, 2))
    return RequestStats(conf, float(rng.beta(2, 8)), tuple(shares), int(rng.choice([9216, 6144])))


def reference_record(rows: list[RequestStats], risk: bool = True) -> dict:
    """The ``reference`` ``sanet calibrate`` stores (docs/trust.md), from per-image stats."""
    per = {
        "mean_confidence": [r.mean_confidence for r in rows],
        "unsure_share": [r.unsure_share for r in rows] if risk else None,
        "class_shares": [list(r.class_shares) for r in rows],
        "pixels": [r.pixels for r in rows],
    }
    return {"images": len(rows), "per_image": per}


def test_in_distribution_windows_raise_at_most_five_percent_false_alarms() -> None:
    """400 independent windows of 15 requests, each against its own reference of 60 images,
    all from one distribution: the share flagged stays within 5 % (+ 3 standard errors).
    Six features at 5 % each, without the Bonferroni split, would flag about 26 %."""
    rng = np.random.default_rng(1)
    names = ["a", "b", "c"]
    flagged = 0
    for _ in range(400):
        record = reference_record([fake_stats(rng) for _ in range(60)])
        monitor = DriftMonitor(read_reference({"reference": record}, names)[0], names, window=15)
        for _ in range(15):
            monitor.add(fake_stats(rng))
        state = monitor.state()["status"]
        assert state in ("in distribution", "drifting")
        flagged += state == "drifting"
    assert flagged / 400 <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 400)


def test_monitor_states_and_a_shift_flagged(tmp_path) -> None:
    rng = np.random.default_rng(2)
    names = ["a", "b", "c"]
    record = reference_record([fake_stats(rng) for _ in range(100)], risk=False)
    monitor = DriftMonitor(read_reference({"reference": record}, names)[0], names, window=20)
    assert monitor.state()["status"] == "collecting" and "0 of the 20" in monitor.state()["detail"]
    for _ in range(20):
        monitor.add(fake_stats(rng, shift=1.0))  # confidence ~ Beta(2, 2) instead of Beta(8, 2)
    state = monitor.state()
    assert state["status"] == "drifting" and state["statistic"] >= state["threshold"]
    assert set(state["features"]) == {
        "mean_confidence",
        "pixels",
        *(CLASS_PREFIX + n for n in names),
    }
    assert "unsure_share" not in state["features"]  # a reference without a risk threshold
    assert state["detail"].startswith("Drifting: the largest KS distance")


@pytest.mark.parametrize(
    "window,alarm", [(1, 0.05), (2.5, 0.05), (50, 0.0), (50, 1.0), (50, float("nan"))]
)
def test_drift_settings_out_of_range_are_refused(window, alarm) -> None:
    with pytest.raises(UsageError, match=r"drift_window must|drift_false_alarm must"):
        create_app(hand_predictor(), drift_window=window, drift_false_alarm=alarm)


def test_server_statistics_are_the_images_own() -> None:
    """What the server folds in per request, against numpy on RampModel's known confidence."""
    h, w = 37, 48
    prediction = predict(lambda: False, calibrated(), np.zeros((h, w, 3), np.uint8), None, True)
    mask, conf = ramp_reference(h, w)
    got = prediction.stats
    assert got.mean_confidence == pytest.approx(conf.mean(), abs=1e-6)
    assert got.unsure_share == pytest.approx((conf < THRESHOLD).mean(), abs=1e-12)
    assert got.class_shares == pytest.approx(np.bincount(mask.ravel(), minlength=3) / (h * w))
    assert got.pixels == h * w
    assert (prediction.mask == 255).any()  # marked unsure pixels; the stats are the plain mask's


SIZES = [(36, 40), (36, 48), (40, 56), (44, 64)]  # the calibration images' sizes, 10 of each
SHIFTED = (60, 96)  # larger, wider images: other pixels, confidence and class shares


def served_monitor(window: int, record_calibration: dict) -> TestClient:
    meta = {"class_names": NAMES, "calibration": record_calibration}
    return TestClient(
        create_app(Predictor.from_model(RampModel(), metadata=meta), drift_window=window),
        base_url=BASE,
    )


def expected_state(
    reference: dict, by_size: dict, window_sizes: list, features: int
) -> tuple[str, float]:
    """The state scipy's exact KS test decides, Bonferroni over the features."""
    per = reference["per_image"]
    ref = {
        "mean_confidence": per["mean_confidence"],
        "unsure_share": per["unsure_share"],
        "pixels": per["pixels"],
        **{f"c{k}": [row[k] for row in per["class_shares"]] for k in range(3)},
    }
    worst_p, worst_d = 1.0, 0.0
    for name, values in ref.items():
        win = [by_size[s][name] for s in window_sizes]
        test = stats.ks_2samp(values, win, method="exact")
        worst_p, worst_d = min(worst_p, test.pvalue), max(worst_d, test.statistic)
    return ("drifting" if worst_p <= 0.05 / features else "in distribution"), worst_d


def test_a_shifted_stream_is_flagged_when_scipys_exact_test_says_so() -> None:
    """Over HTTP: 10 requests like the calibration images, then images of another size until
    the window turns "drifting"; after every request the state is what scipy's exact two-sample
    KS test decides on the same values (6 features: Bonferroni at 5 % / 6)."""
    base = calibrated()
    by_size = {}
    for h, w in [*SIZES, SHIFTED]:
        s = predict(lambda: False, base, np.zeros((h, w, 3), np.uint8), None).stats
        by_size[(h, w)] = {
            "mean_confidence": s.mean_confidence,
            "unsure_share": s.unsure_share,
            "pixels": s.pixels,
            **{f"c{k}": s.class_shares[k] for k in range(3)},
        }
    rows = [
        predict(lambda: False, base, np.zeros((*size, 3), np.uint8), None).stats
        for size in SIZES * 10
    ]
    reference = reference_record(rows)
    record = {**base.calibration.record, "reference": reference}
    stream = [SIZES[i % 4] for i in range(10)] + [SHIFTED] * 10
    seen = []
    with served_monitor(10, record) as client:
        for i, size in enumerate(stream):
            assert client.post("/v1/segment", files=upload(png_bytes(*size))).status_code == 200
            drift = client.get("/healthz").json()["drift"]
            if i < 9:
                assert drift["status"] == "collecting" and drift["requests"] == i + 1
                continue
            want, distance = expected_state(reference, by_size, stream[i - 9 : i + 1], 6)
            assert (drift["status"], drift["statistic"]) == (
                want,
                pytest.approx(distance, abs=1e-6),
            ), i
            seen.append(want)
        model = client.get("/v1/model").json()["drift"]
    assert seen[0] == "in distribution" and seen[-1] == "drifting"
    first = seen.index("drifting")  # shifted requests in the window when first flagged
    assert 1 <= first <= 7 and "drifting" not in seen[:first]
    assert model["status"] == "drifting" and model["reference_images"] == 40


NO_REFERENCE = [
    (None, "the model is not calibrated"),
    ({"temperature": 2.0}, "has no reference statistics"),
    (
        {"temperature": 2.0, "reference": {"images": 2, "per_image": {"mean_confidence": [0.5]}}},
        "cannot be used",
    ),
    (
        {
            "temperature": 2.0,
            "reference": {
                "images": 1,
                "per_image": {
                    "mean_confidence": [0.5],
                    "pixels": [9],
                    "class_shares": [[1.0, 0.0]],
                },
            },
        },
        "cannot be used (class shares of shape (1, 2), expected 1 images × 3 classes)",
    ),
    (
        {
            "temperature": 2.0,
            "reference": {
                "images": 1,
                "per_image": {
                    "mean_confidence": ["x"],
                    "pixels": [9],
                    "class_shares": [[1.0, 0.0, 0.0]],
                },
            },
        },
        "cannot be used",
    ),
    (
        {
            "temperature": 2.0,
            "reference": reference_record(
                [RequestStats(0.9, None, (1.0, 0.0, 0.0), 9)], risk=False
            ),
        },
        "a reference of 1 image is too small to tell a window of 50 requests apart",
    ),
]


@pytest.mark.reliability("r88")
@pytest.mark.parametrize("record,why", NO_REFERENCE)
def test_a_model_without_reference_statistics_says_no_reference(record, why) -> None:
    """Issue 30's bad input: drift shows "no reference" and why, never a crash; every route
    answers as before."""
    model = RampModel()
    meta = {"class_names": NAMES, **({"calibration": record} if record else {})}
    with TestClient(
        create_app(Predictor.from_model(model, metadata=meta)), base_url=BASE
    ) as client:
        assert client.post("/v1/segment", files=upload(png_bytes(36, 40))).status_code == 200
        health = client.get("/healthz").json()["drift"]
        info = client.get("/v1/model").json()["drift"]
        text = client.get("/metrics").text
    for drift in (health, info):
        assert drift["status"] == "no reference" and why in drift["detail"], drift["detail"]
        assert drift["statistic"] is None and drift["threshold"] is None
    families = {f.name: f for f in text_string_to_metric_families(text)}
    status = {s.labels["status"]: s.value for s in families["sanet_drift_status"].samples}
    assert status == {"no reference": 1, "collecting": 0, "in distribution": 0, "drifting": 0}
    assert "sanet_drift_statistic" not in families
    json.dumps(health)  # plain JSON values


def test_a_reference_unsure_share_is_not_compared_without_a_threshold() -> None:
    """A model served without a risk threshold answers no unsure share: the reference's is
    left out (not compared with zeros), and ``calibrated=False`` says why there is no drift."""
    base = calibrated(risk=False)
    rows = [predict(lambda: False, base, np.zeros((*s, 3), np.uint8), None).stats for s in SIZES]
    ref = reference_record(
        [RequestStats(r.mean_confidence, 0.3, r.class_shares, r.pixels) for r in rows * 10]
    )
    meta = {"class_names": NAMES, "calibration": {**base.calibration.record, "reference": ref}}
    with TestClient(
        create_app(Predictor.from_model(RampModel(), metadata=meta), drift_window=4), base_url=BASE
    ) as client:
        for size in SIZES + SIZES[:1]:
            assert client.post("/v1/segment", files=upload(png_bytes(*size))).status_code == 200
        drift = client.get("/healthz").json()["drift"]
    assert drift["status"] == "in distribution" and "unsure_share" not in drift["features"]
    plain = Predictor.from_model(RampModel(), metadata=meta, calibrated=False)
    with TestClient(create_app(plain), base_url=BASE) as client:
        drift = client.get("/healthz").json()["drift"]
    assert drift["status"] == "no reference" and "calibrated=False" in drift["detail"]
