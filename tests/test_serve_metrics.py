"""``GET /metrics`` (issue 30.5): the server's counts and state in the Prometheus text format,
read back with prometheus-client's own parser and compared with the requests this test made,
the answers' unsure shares and ``/healthz``'s queue and drift."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from sanet.inference import Predictor
from sanet.serve.app import create_app
from sanet.serve.limits import ServeLimits
from sanet.serve.metrics import REJECT_REASONS
from sanet.serve.unsure import predict
from test_deploy_serve import BASE, NAMES, RampModel, calibrated, png_bytes, upload
from test_serve_drift import reference_record

SIZES = [(36, 40), (36, 48), (40, 56)]


def text_field(value: str) -> tuple[bytes, dict]:
    """What ``curl -F image=VALUE`` sends: a multipart text field named ``image``."""
    body = (
        f'--b\r\nContent-Disposition: form-data; name="image"\r\n\r\n{value}\r\n--b--\r\n'
    ).encode()
    return body, {"content-type": "multipart/form-data; boundary=b"}


def samples(text: str) -> dict[str, list]:
    """``{metric family: [samples]}`` as prometheus-client parses the exposition."""
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def value(fams: dict, name: str, family: str | None = None, **labels: str) -> float:
    found = [
        s.value
        for s in fams[family or name]
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) == 1, (name, labels, fams.get(family or name))
    return found[0]


@pytest.fixture
def served() -> TestClient:
    base = calibrated()
    rows = [predict(lambda: False, base, np.zeros((*s, 3), np.uint8), None).stats for s in SIZES]
    record = {**base.calibration.record, "reference": reference_record(rows * 10)}
    predictor = Predictor.from_model(
        RampModel(), metadata={"class_names": NAMES, "calibration": record}
    )
    app = create_app(predictor, ServeLimits(max_upload_bytes=50_000), drift_window=3)
    with TestClient(app, base_url=BASE) as client:
        yield client


def test_metrics_count_what_was_asked_and_answered(served: TestClient) -> None:
    shares = []
    for size in SIZES:  # three answered images, like the calibration images
        body = served.post("/v1/segment", files=upload(png_bytes(*size))).json()
        shares.append(body["unsure_share"])
    refusals = [
        served.post("/v1/segment", files=upload(b"not a picture", "notes.txt")),  # 415
        served.post("/v1/segment", files=upload(b"\0" * 60_000)),  # 413, Content-Length
        served.post("/v1/segment", content=text_field("")[0], headers=text_field("")[1]),
        served.post("/v1/segment", files=upload(b"", "empty.png")),  # 422 empty file
    ]
    assert [r.status_code for r in refusals] == [415, 413, 422, 422]
    assert served.get("/static/app.js").status_code == 200
    assert served.get("/no/such/page").status_code == 404
    health = served.get("/healthz").json()
    r = served.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith(
        "text/plain; version=0.0.4"
    )
    fams = samples(r.text)
    requests = {
        ("/v1/segment", "200"): 3,
        ("/v1/segment", "415"): 1,
        ("/v1/segment", "413"): 1,
        ("/v1/segment", "422"): 2,
        ("/static", "200"): 1,
        ("other", "404"): 1,
        ("/healthz", "200"): 1,
    }
    got = {
        (s.labels["route"], s.labels["status"]): s.value
        for s in fams["sanet_requests"]
        if s.name == "sanet_requests_total"
    }
    assert got == requests  # /metrics counts itself once answered: not in its own first scrape
    latency = "sanet_request_duration_seconds"
    assert value(fams, latency + "_count", latency, route="/v1/segment") == 7
    assert value(fams, latency + "_bucket", latency, route="/v1/segment", le="+Inf") == 7
    assert value(fams, latency + "_sum", latency, route="/v1/segment") > 0
    rejected = {
        s.labels["reason"]: s.value
        for s in fams["sanet_rejected_uploads"]
        if s.name == "sanet_rejected_uploads_total"
    }
    counted = {"not_an_image": 1, "too_large": 1, "no_image_field": 1, "empty_file": 1}
    assert rejected == {reason: counted.get(reason, 0) for reason in REJECT_REASONS}
    unsure = "sanet_unsure_share"
    assert value(fams, unsure + "_count", unsure) == 3
    assert value(fams, unsure + "_sum", unsure) == pytest.approx(sum(shares), abs=1e-5)
    assert value(fams, "sanet_mean_confidence_count", "sanet_mean_confidence") == 3
    assert value(fams, "sanet_queue_depth", state="running") == health["queue"]["running"] == 0
    assert value(fams, "sanet_queue_depth", state="waiting") == 0
    assert value(fams, "sanet_queue_capacity") == health["queue"]["capacity"] == 9
    assert value(fams, "sanet_model_loaded") == 1
    drift = health["drift"]
    assert drift["status"] == "in distribution"
    assert value(fams, "sanet_drift_status", status="in distribution") == 1
    assert value(fams, "sanet_drift_status", status="drifting") == 0
    assert value(fams, "sanet_drift_statistic") == pytest.approx(drift["statistic"])
    assert value(fams, "sanet_drift_threshold") == pytest.approx(drift["threshold"])
    assert value(fams, "sanet_drift_window_requests") == 3
    for feature, row in drift["features"].items():
        for key in ("distance", "window_mean", "reference_mean"):
            name = f"sanet_drift_feature_{key}"
            assert value(fams, name, feature=feature) == pytest.approx(row[key]), (key, feature)


def test_a_chunked_upload_over_the_limit_counts_as_too_large(served: TestClient) -> None:
    head = b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'

    def body():  # a generator: sent chunked, without Content-Length
        yield head
        for _ in range(10):
            yield b"\0" * 10_000

    r = served.post(
        "/v1/segment", content=body(), headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert r.status_code == 413
    fams = samples(served.get("/metrics").text)
    assert (
        value(fams, "sanet_rejected_uploads_total", "sanet_rejected_uploads", reason="too_large")
        == 1
    )


def test_each_app_counts_its_own_requests(served: TestClient) -> None:
    served.get("/healthz")
    with TestClient(create_app(calibrated()), base_url=BASE) as other:
        fams = samples(other.get("/metrics").text)
    assert not [s for s in fams["sanet_requests"] if s.name == "sanet_requests_total"]
    assert value(fams, "sanet_drift_status", status="no reference") == 1
