"""``sanet serve``'s HTTP API against the app (no sockets): the answers, every error status and
its reason, the limits, headers and host allow-list, the OpenAPI document, health and the access
log. Admission, cancellation and disconnects are in ``test_deploy_gate.py``.

Most tests use a stand-in model whose mask is known by hand (class 1 on the left half of the
image, class 2 on the top 10 rows, class 0 elsewhere), so pixel counts are checked exactly.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import threading

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from torch import nn

from sanet.inference import Predictor
from sanet.serve.app import create_app
from sanet.serve.limits import ServeLimits

NAMES = ["background", "disc", "square"]
BASE = "http://127.0.0.1"  # the host allow-list answers IP addresses and localhost


class HandModel(nn.Module):
    """Logits that make class 1 win on columns ``< W // 2`` and class 2 on rows ``< 10``."""

    num_classes = 3

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        n, _, h, w = x.shape
        out = torch.zeros(n, 3, h, w)
        out[:, 1, :, : w // 2] = 1.0
        out[:, 2, :10] = 2.0
        return {"out": out}


def hand_counts(h: int, w: int) -> dict[int, int]:
    return {2: 10 * w, 1: (h - 10) * (w // 2), 0: (h - 10) * (w - w // 2)}


def hand_predictor() -> Predictor:
    return Predictor.from_model(HandModel(), metadata={"class_names": NAMES})


def png_bytes(h: int, w: int, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode).save(buf, "PNG")
    return buf.getvalue()


def upload(data: bytes, name: str = "photo.png") -> dict:
    return {"image": (name, data, "application/octet-stream")}


@pytest.fixture(scope="module")
def client() -> TestClient:
    limits = ServeLimits(max_upload_bytes=200_000, max_pixels=1_000_000)
    with TestClient(create_app(hand_predictor(), limits), base_url=BASE) as c:
        yield c


def test_segment_json_counts_every_pixel(client: TestClient) -> None:
    h, w = 45, 77  # odd sizes: the mask must come back at exactly this size
    r = client.post("/v1/segment", files=upload(png_bytes(h, w)))
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"], body["scale"]) == (w, h, 1.0)
    assert body["seconds"] >= 0 and body["queue_seconds"] >= 0
    expected = hand_counts(h, w)
    assert [c["id"] for c in body["classes"]] == sorted(expected, key=lambda k: -expected[k])
    for c in body["classes"]:
        assert c["name"] == NAMES[c["id"]] and c["pixels"] == expected[c["id"]]
        assert c["fraction"] == pytest.approx(expected[c["id"]] / (h * w), abs=1e-6)
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask_png_base64"]))))
    assert mask.shape == (h, w)
    assert (mask[:10] == 2).all() and (mask[10:, : w // 2] == 1).all()
    assert (mask[10:, w // 2 :] == 0).all()


def test_segment_png_and_overlay(client: TestClient) -> None:
    h, w = 40, 50
    r = client.post("/v1/segment?format=png", files=upload(png_bytes(h, w, "L")))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-sanet-scale"] == "1.0"
    mask = Image.open(io.BytesIO(r.content))
    assert mask.mode == "P" and mask.size == (w, h)
    assert np.bincount(np.asarray(mask).ravel()).tolist() == [
        hand_counts(h, w)[k] for k in range(3)
    ]
    body = client.post("/v1/segment?overlay=1", files=upload(png_bytes(h, w))).json()
    pic = Image.open(io.BytesIO(base64.b64decode(body["overlay_png_base64"])))
    assert pic.size == (w, h) and pic.mode == "RGB"
    r = client.post("/v1/segment?format=png&overlay=1", files=upload(png_bytes(h, w)))
    assert Image.open(io.BytesIO(r.content)).mode == "RGB"


def test_model_health_page_and_favicon(client: TestClient) -> None:
    info = client.get("/v1/model").json()
    assert info["class_names"] == NAMES and info["backend"] == "torch"
    assert len(info["palette"]) == 3 and info["limits"]["max_pixels"] == 1_000_000
    assert info["limits"]["max_side"] == 480  # the default protocol's crop size
    client.post("/v1/segment", files=upload(png_bytes(30, 41)))
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["backend"] == "torch"
    assert health["queue"] == {"running": 0, "waiting": 0, "capacity": 9}
    assert health["last_inference"]["windows"] == 1 and health["last_inference"]["seconds"] >= 0
    assert health["seconds_per_window"] is not None and health["estimated_wait_s"] == 0
    page = client.get("/")
    assert page.status_code == 200 and 'id="file"' in page.text
    assert client.get("/static/app.js").status_code == 200
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")


def test_upload_over_the_limit_is_413(client: TestClient) -> None:
    big = b"\0" * 300_000
    r = client.post("/v1/segment", files=upload(big))
    assert r.status_code == 413 and "at most 200,000" in r.json()["detail"]


def test_chunked_upload_without_length_is_counted(client: TestClient) -> None:
    boundary = "sanetboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"'
        "\r\nContent-Type: image/png\r\n\r\n"
    ).encode()

    def body():  # a generator: httpx sends it chunked, with no Content-Length
        yield head
        for _ in range(40):
            yield b"\0" * 10_000

    r = client.post(
        "/v1/segment",
        content=body(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert r.status_code == 413, r.text
    assert "more than" in r.json()["detail"]


def test_decompression_bomb_is_413(client: TestClient) -> None:
    buf = io.BytesIO()
    Image.new("L", (1500, 1000)).save(buf, "PNG")  # 1.5 MP in a few kB
    assert len(buf.getvalue()) < 200_000
    r = client.post("/v1/segment", files=upload(buf.getvalue()))
    assert r.status_code == 413 and "1,500,000 pixels" in r.json()["detail"]


def test_not_an_image_is_415_in_plain_words(client: TestClient) -> None:
    r = client.post("/v1/segment", files=upload(b"hello, not a picture", "/home/me/notes.txt"))
    assert r.status_code == 415
    detail = r.json()["detail"]
    assert detail.startswith("notes.txt is not an image this server can read")
    assert "Error" not in detail and "/home" not in detail  # no exception names, no folders
    r = client.post("/v1/segment", files=upload(png_bytes(64, 64)[:300]))  # cut short
    assert r.status_code == 415 and "damaged or cut short" in r.json()["detail"]
    r = client.post("/v1/segment", content=png_bytes(8, 8), headers={"content-type": "image/png"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"]


def test_missing_field_is_422_and_a_bad_body_400(client: TestClient) -> None:
    r = client.post("/v1/segment", files={"picture": ("a.png", png_bytes(8, 8), "image/png")})
    assert r.status_code == 422 and "'image'" in r.json()["detail"]
    r = client.post(
        "/v1/segment",
        content=b"no boundary here",
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert r.status_code == 400 and "curl -F image=@photo.jpg" in r.json()["detail"]


def curl_text_field(value: str) -> dict:
    """What ``curl -F image=VALUE`` (no ``@``) sends: a multipart *text* field ``image``."""
    body = f'--b\r\nContent-Disposition: form-data; name="image"\r\n\r\n{value}\r\n--b--\r\n'
    return {
        "content": body.encode(),
        "headers": {"content-type": "multipart/form-data; boundary=b"},
    }


@pytest.mark.reliability("r86")
@pytest.mark.parametrize(
    "request_kwargs,words",
    [
        (curl_text_field(""), "The form field 'image' is empty, not a file."),
        (
            curl_text_field("photo.jpg"),
            "The form field 'image' holds the text 'photo.jpg', not a file.",
        ),
        ({"files": upload(b"", "empty.png")}, "empty.png is empty (0 bytes). Choose an image file"),
    ],
)
def test_an_empty_or_text_image_field_says_what_was_sent(client, request_kwargs, words) -> None:
    """Issue 28.9: ``curl -F image=`` got "no file field 'image' (fields: ['image'])"."""
    r = client.post("/v1/segment", **request_kwargs)
    assert r.status_code == 422 and words in r.json()["detail"], r.text
    assert "fields: ['image']" not in r.json()["detail"]
    if "form field" in words:
        assert "curl -F image=@photo.jpg (the @ attaches the file)" in r.json()["detail"]


@pytest.mark.reliability("r51")
@pytest.mark.parametrize(
    "method,path,status,words",
    [
        ("post", "/v1/segment?format=gif", 422, "'format'"),
        ("post", "/v1/segment?overlay=perhaps", 422, "'overlay'"),
        ("get", "/v2/segment", 404, "POST /v1/segment"),
        ("delete", "/healthz", 405, "DELETE is not allowed"),
        ("get", "/static/nothing.js", 404, "Nothing at /static/nothing.js"),
    ],
)
def test_every_error_body_is_one_string(client, method, path, status, words) -> None:
    kwargs = {"files": upload(png_bytes(8, 8))} if method == "post" else {}
    r = getattr(client, method)(path, **kwargs)
    assert r.status_code == status
    body = r.json()
    assert list(body) == ["detail"] and isinstance(body["detail"], str), body
    assert words in body["detail"]


@pytest.mark.reliability("r51")
def test_a_bug_is_a_500_with_a_string_and_no_path() -> None:
    class Broken(nn.Module):
        num_classes = 3

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            raise RuntimeError("kernel failed reading /opt/secret/weights.bin")

    app = create_app(Predictor.from_model(Broken()))
    with TestClient(app, base_url=BASE, raise_server_exceptions=False) as c:
        r = c.post("/v1/segment", files=upload(png_bytes(40, 40)))
    assert r.status_code == 500
    detail = r.json()["detail"]
    assert "RuntimeError" in detail and "/opt" not in detail and "server log" in detail


@pytest.mark.reliability("r51")
def test_openapi_documents_the_upload_and_every_error(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    post = spec["paths"]["/v1/segment"]["post"]
    form = post["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["image"] and form["properties"]["image"]["format"] == "binary"
    responses = post["responses"]
    assert {"200", "400", "408", "413", "415", "422", "500", "503", "504"} <= set(responses)
    error = "#/components/schemas/ErrorBody"
    for code in ("400", "408", "413", "415", "422", "500", "503", "504"):
        assert responses[code]["content"]["application/json"]["schema"]["$ref"] == error
    assert "HTTPValidationError" not in spec["components"]["schemas"]  # no list-shaped errors
    assert "image/png" in responses["200"]["content"]
    assert {"500", "503"} <= set(spec["paths"]["/healthz"]["get"]["responses"])


@pytest.mark.reliability("r49")
@pytest.mark.parametrize(
    "host,allowed,status",
    [
        ("127.0.0.1:8000", (), 200),
        ("localhost:8000", (), 200),
        ("[::1]:8000", (), 200),
        ("10.1.2.3", (), 200),  # an address: rebinding needs a name
        ("attacker.example:8000", (), 400),
        ("localhost.attacker.example", (), 400),
        ("proxy.internal", ("proxy.internal",), 200),
        ("anything.example", ("*",), 200),
    ],
)
def test_host_allow_list(host: str, allowed: tuple, status: int) -> None:
    with TestClient(create_app(hand_predictor(), allowed_hosts=allowed), base_url=BASE) as c:
        r = c.get("/healthz", headers={"host": host})
    assert r.status_code == status
    if status == 400:
        assert "--allowed-hosts" in r.json()["detail"]


@pytest.mark.reliability("r49")
@pytest.mark.parametrize("path", ["/", "/healthz", "/static/app.js", "/nothing"])
def test_security_headers_on_every_answer(client: TestClient, path: str) -> None:
    r = client.get(path)
    csp = r.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"


def wait_for(c: TestClient, status: str) -> dict:
    for _ in range(600):
        body = c.get("/healthz").json()
        if body["status"] == status:
            return body
        threading.Event().wait(0.05)
    raise AssertionError(f"/healthz never said {status!r}: {body}")


def test_health_is_503_until_the_model_is_loaded() -> None:
    ready = threading.Event()

    def load() -> Predictor:
        ready.wait(timeout=30)
        return hand_predictor()

    with TestClient(create_app(load), base_url=BASE) as c:
        r = c.get("/healthz")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        r = c.post("/v1/segment", files=upload(png_bytes(40, 40)))
        assert r.status_code == 503 and "retry-after" in r.headers
        ready.set()
        health = wait_for(c, "ok")
        assert health["seconds_per_window"] > 0  # the start-up check measured a window
        assert c.post("/v1/segment", files=upload(png_bytes(40, 40))).status_code == 200


@pytest.mark.reliability("r50")
def test_failed_load_is_a_500_state_without_paths() -> None:
    def load() -> Predictor:
        raise FileNotFoundError("/srv/models/secret-run/model.safetensors does not exist")

    with TestClient(create_app(load), base_url=BASE) as c:
        body = wait_for(c, "error")
        assert c.get("/healthz").status_code == 500
        answers = [c.post("/v1/segment", files=upload(png_bytes(40, 40))), c.get("/v1/model")]
    assert "/srv" not in body["detail"] and "does not exist" in body["detail"]
    assert "restart" in body["detail"]
    for r in answers:
        assert r.status_code == 500 and "retry-after" not in r.headers
        assert r.json()["detail"] == body["detail"]


def test_access_log_lines(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="sanet.access"):
        client.post("/v1/segment?format=png", files=upload(png_bytes(40, 40)))
        client.post("/v1/segment", files=upload(b"\0" * 300_000))
    lines = [json.loads(r.message) for r in caplog.records if r.name == "sanet.access"]
    ok, too_big = lines[-2:]
    assert ok["method"] == "POST" and ok["path"] == "/v1/segment" and ok["status"] == 200
    assert ok["bytes_out"] > 0 and ok["bytes_in"] > 0 and ok["ms"] >= 0
    assert too_big["status"] == 413


# --- A calibrated model: confidence and unsure pixels (docs/trust.md) ---------------------------

TEMPERATURE, THRESHOLD, ALPHA = 2.0, 0.6, 0.1


class RampModel(nn.Module):
    """Logits ``(0, 4·col/(W−1), 2 on the top 10 rows)``: the confidence varies across the
    image, so the unsure pixels (below ``THRESHOLD`` at ``TEMPERATURE``) form a known shape."""

    num_classes = 3

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        n, _, h, w = x.shape
        out = torch.zeros(n, 3, h, w)
        out[:, 1] = 4.0 * torch.arange(w) / (w - 1)
        out[:, 2, :10] = 2.0
        return {"out": out}


def ramp_reference(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """The mask and calibrated confidence of ``RampModel``, in float64 numpy."""
    logits = np.zeros((3, h, w))
    logits[1] = 4.0 * np.arange(w) / (w - 1)
    logits[2, :10] = 2.0
    e = np.exp(logits / TEMPERATURE)
    return logits.argmax(0), (e / e.sum(0)).max(0)


def calibrated(risk: bool = True) -> Predictor:
    from sanet.inference.confidence import ASSUMPTION, protocol_settings
    from sanet.inference.protocol import EvalProtocol

    record = {"temperature": TEMPERATURE, "protocol": protocol_settings(EvalProtocol())}
    if risk:
        record["risk"] = {"alpha": ALPHA, "threshold": THRESHOLD, "assumption": ASSUMPTION}
    return Predictor.from_model(RampModel(), metadata={"class_names": NAMES, "calibration": record})


def decode_png(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))


@pytest.mark.parametrize("h,w,max_side", [(37, 48, None), (74, 96, 48)])
def test_calibrated_answer_confidence_and_unsure_pixels(h: int, w: int, max_side) -> None:
    from sanet.inference.confidence import ASSUMPTION

    small = (37, 48)  # the working size: 74×96 is predicted at a long side of 48
    mask, conf = ramp_reference(*small)
    assert np.abs(conf - THRESHOLD).min() > 1e-3  # no pixel on the edge: the sets are exact
    assert np.abs((255 * conf) % 1 - 0.5).min() > 1e-2  # nor between two grey values
    rows = ((np.arange(h) + 0.5) * small[0] / h).astype(int)  # nearest, at pixel centres
    cols = ((np.arange(w) + 0.5) * small[1] / w).astype(int)
    mask, conf = mask[rows[:, None], cols], conf[rows[:, None], cols]
    unsure = conf < THRESHOLD
    assert 0.2 < unsure.mean() < 0.8  # a real shape, not all or nothing
    limits = ServeLimits(max_side=max_side)
    with TestClient(create_app(calibrated(), limits), base_url=BASE) as c:
        body = c.post("/v1/segment", files=upload(png_bytes(h, w))).json()
        marked = c.post("/v1/segment?unsure=true", files=upload(png_bytes(h, w))).json()
        png = c.post("/v1/segment?format=png&unsure=true", files=upload(png_bytes(h, w)))
    assert body["scale"] == pytest.approx(small[1] / w, abs=1e-6)
    assert body["unsure_share"] == pytest.approx(unsure.sum() / (h * w), abs=1e-6)
    assert (body["threshold"], body["alpha"], body["assumption"]) == (THRESHOLD, ALPHA, ASSUMPTION)
    np.testing.assert_array_equal(decode_png(body["mask_png_base64"]), mask)  # unchanged mask
    np.testing.assert_array_equal(decode_png(body["confidence_png_base64"]), np.rint(255 * conf))
    np.testing.assert_array_equal(decode_png(body["unsure_png_base64"]), 255 * unsure)
    # ?unsure=true: 255 on exactly the unsure pixels; the classes count the sure ones
    want = np.where(unsure, 255, mask)
    np.testing.assert_array_equal(decode_png(marked["mask_png_base64"]), want)
    counts = {k: int((want == k).sum()) for k in range(3) if (want == k).any()}
    assert {k["id"]: k["pixels"] for k in marked["classes"]} == counts
    assert png.status_code == 200 and png.headers["x-sanet-unsure-share"] == str(
        body["unsure_share"]
    )
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png.content))), want)


def test_calibrated_model_info_and_uncalibrated_answers_unchanged(client: TestClient) -> None:
    keys = {"width", "height", "scale", "classes", "mask_png_base64", "seconds", "queue_seconds"}
    assert set(client.post("/v1/segment", files=upload(png_bytes(30, 41))).json()) == keys
    r = client.post("/v1/segment?format=png", files=upload(png_bytes(30, 41)))
    assert "x-sanet-unsure-share" not in r.headers
    assert client.get("/v1/model").json()["calibration"] is None
    with TestClient(create_app(calibrated(risk=False)), base_url=BASE) as c:
        body = c.post("/v1/segment", files=upload(png_bytes(30, 41))).json()
        info = c.get("/v1/model").json()["calibration"]
    assert set(body) == keys | {"confidence_png_base64"}  # a temperature, no threshold
    assert info["temperature"] == TEMPERATURE and info["threshold"] is None
    with TestClient(create_app(calibrated()), base_url=BASE) as c:
        info = c.get("/v1/model").json()["calibration"]
        spec = c.get("/openapi.json").json()
    assert (info["temperature"], info["threshold"], info["alpha"]) == (2.0, THRESHOLD, ALPHA)
    assert info["record"]["risk"]["alpha"] == ALPHA
    answer = spec["components"]["schemas"]["SegmentAnswer"]["properties"]
    assert {"unsure_share", "confidence_png_base64", "assumption"} <= set(answer)
    params = spec["paths"]["/v1/segment"]["post"]["parameters"]
    assert "risk threshold" in next(p for p in params if p["name"] == "unsure")["description"]


@pytest.mark.reliability("r57")
@pytest.mark.parametrize("risk", [False, None])  # calibrated without --risk; not calibrated
def test_unsure_without_a_threshold_is_422_before_the_upload(risk) -> None:
    predictor = hand_predictor() if risk is None else calibrated(risk=False)
    with TestClient(create_app(predictor), base_url=BASE) as c:
        r = c.post("/v1/segment?unsure=true", files=upload(b"not even an image"))
    assert r.status_code == 422  # not 415: refused before the upload is read
    detail = r.json()["detail"]
    assert "sanet calibrate" in detail and "--risk" in detail
    assert ("without --risk" if risk is False else "no calibration") in detail
