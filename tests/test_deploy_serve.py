"""``sanet serve``'s HTTP API against the app (httpx, no sockets): the answers, every error
status and its reason, the limits, the gate's queue and timeout, and the access log.

Most tests use a stand-in model whose mask is known by hand (class 1 on the left half of the
image, class 2 on the top 10 rows, class 0 elsewhere), so pixel counts are checked exactly.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import threading

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from torch import nn

from sanet.deploy.limits import ServeLimits
from sanet.deploy.serve import create_app, serve
from sanet.inference import Predictor

NAMES = ["background", "disc", "square"]


class HandModel(nn.Module):
    """Logits that make class 1 win on columns ``< W // 2`` and class 2 on rows ``< 10``;
    ``gate`` (if set) blocks each forward until released."""

    num_classes = 3

    def __init__(self, gate: threading.Event | None = None) -> None:
        super().__init__()
        self.gate = gate
        self.entered: threading.Event | None = None

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.entered is not None:
            self.entered.set()
        if self.gate is not None:
            self.gate.wait(timeout=30)
        n, _, h, w = x.shape
        out = torch.zeros(n, 3, h, w)
        out[:, 1, :, : w // 2] = 1.0
        out[:, 2, :10] = 2.0
        return {"out": out}


def hand_counts(h: int, w: int) -> dict[int, int]:
    return {2: 10 * w, 1: (h - 10) * (w // 2), 0: (h - 10) * (w - w // 2)}


def hand_predictor(gate: threading.Event | None = None) -> Predictor:
    return Predictor.from_model(HandModel(gate), metadata={"class_names": NAMES})


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
    with TestClient(create_app(hand_predictor(), limits)) as c:
        yield c


def test_segment_json_counts_every_pixel(client: TestClient) -> None:
    h, w = 45, 77  # odd sizes: the mask must come back at exactly this size
    r = client.post("/v1/segment", files=upload(png_bytes(h, w)))
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"]) == (w, h)
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


def test_model_and_health(client: TestClient) -> None:
    info = client.get("/v1/model").json()
    assert info["class_names"] == NAMES and info["backend"] == "torch"
    assert len(info["palette"]) == 3 and info["limits"]["max_pixels"] == 1_000_000
    assert client.get("/healthz").json() == {"status": "ok", "backend": "torch"}
    page = client.get("/")
    assert page.status_code == 200 and 'id="file"' in page.text
    assert client.get("/static/app.js").status_code == 200


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


def test_not_an_image_is_415_with_the_reason(client: TestClient) -> None:
    r = client.post("/v1/segment", files=upload(b"hello, not a picture", "notes.txt"))
    assert r.status_code == 415
    assert "cannot identify image file 'notes.txt'" in r.json()["detail"]
    truncated = png_bytes(64, 64)[:300]
    r = client.post("/v1/segment", files=upload(truncated))
    assert r.status_code == 415
    r = client.post("/v1/segment", content=png_bytes(8, 8), headers={"content-type": "image/png"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"]


def test_missing_field_is_422(client: TestClient) -> None:
    r = client.post("/v1/segment", files={"picture": ("a.png", png_bytes(8, 8), "image/png")})
    assert r.status_code == 422 and "'image'" in r.json()["detail"]
    assert client.post("/v1/segment?format=gif", files=upload(png_bytes(8, 8))).status_code == 422


class Scenario:
    """Requests against the app in one event loop, with a model that blocks until released."""

    def __init__(self, limits: ServeLimits) -> None:
        self.release, self.entered = threading.Event(), threading.Event()
        model = HandModel(self.release)
        model.entered = self.entered
        self.app = create_app(Predictor.from_model(model, metadata={"class_names": NAMES}), limits)
        self.gate = self.app.state.gate

    async def until(self, condition, what: str) -> None:
        for _ in range(3000):  # event-driven: no wall-clock assumption beyond "eventually"
            if condition():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"timed out waiting for {what}")

    def run(self, steps) -> None:
        async def main() -> None:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                await steps(client)

        asyncio.run(main())


def post(client: httpx.AsyncClient):
    return asyncio.ensure_future(client.post("/v1/segment", files=upload(png_bytes(40, 40))))


def test_full_queue_is_503_with_retry_after() -> None:
    sc = Scenario(ServeLimits(max_concurrent=1, max_queue=1, retry_after_s=3))

    async def steps(client: httpx.AsyncClient) -> None:
        first = post(client)
        await asyncio.to_thread(sc.entered.wait, 30)  # the first one runs ...
        second = post(client)
        await sc.until(lambda: sc.gate.in_flight == 2, "the second request to queue")
        third = await client.post("/v1/segment", files=upload(png_bytes(40, 40)))
        assert third.status_code == 503 and third.headers["retry-after"] == "3"
        assert "2 requests are running or queued" in third.json()["detail"]
        sc.release.set()  # ... and both admitted ones finish
        assert [(await f).status_code for f in (first, second)] == [200, 200]

    sc.run(steps)


def test_slow_inference_is_504_and_frees_its_slot_when_done() -> None:
    sc = Scenario(ServeLimits(max_concurrent=1, max_queue=0, timeout_s=0.2))

    async def steps(client: httpx.AsyncClient) -> None:
        first = await client.post("/v1/segment", files=upload(png_bytes(40, 40)))
        assert first.status_code == 504 and "0.2 s" in first.json()["detail"]
        # the timed-out inference still runs (threads cannot be killed): its slot stays taken
        busy = await client.post("/v1/segment", files=upload(png_bytes(40, 40)))
        assert busy.status_code == 503
        sc.release.set()
        await sc.until(lambda: sc.gate.in_flight == 0, "the timed-out inference to end")
        done = await client.post("/v1/segment", files=upload(png_bytes(40, 40)))
        assert done.status_code == 200

    sc.run(steps)


def test_health_is_503_until_the_model_is_loaded() -> None:
    ready = threading.Event()

    def load() -> Predictor:
        ready.wait(timeout=30)
        return hand_predictor()

    with TestClient(create_app(load)) as c:
        assert c.get("/healthz").status_code == 503
        r = c.post("/v1/segment", files=upload(png_bytes(40, 40)))
        assert r.status_code == 503 and "retry-after" in r.headers
        ready.set()
        for _ in range(200):
            if c.get("/healthz").status_code == 200:
                break
            threading.Event().wait(0.05)
        assert c.post("/v1/segment", files=upload(png_bytes(40, 40))).status_code == 200


def test_failed_load_is_reported_by_health() -> None:
    def load() -> Predictor:
        raise FileNotFoundError("no such checkpoint")

    with TestClient(create_app(load)) as c:
        for _ in range(200):
            body = c.get("/healthz").json()
            if body["status"] != "loading":
                break
            threading.Event().wait(0.05)
        assert body == {"status": "error", "detail": "FileNotFoundError: no such checkpoint"}


def test_access_log_lines(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="sanet.access"):
        client.post("/v1/segment?format=png", files=upload(png_bytes(40, 40)))
        client.post("/v1/segment", files=upload(b"\0" * 300_000))
    lines = [json.loads(r.message) for r in caplog.records if r.name == "sanet.access"]
    ok, too_big = lines[-2:]
    assert ok["method"] == "POST" and ok["path"] == "/v1/segment" and ok["status"] == 200
    assert ok["bytes_out"] > 0 and ok["bytes_in"] > 0 and ok["ms"] >= 0
    assert too_big["status"] == 413


def test_public_host_warns(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    app = create_app(hand_predictor())
    with caplog.at_level(logging.WARNING, logger="sanet.deploy.serve"):
        serve(app)
        assert not caplog.records
        serve(app, host="0.0.0.0", port=9000)
    assert "no authentication" in caplog.text.lower()
    assert calls[0]["host"] == "127.0.0.1" and calls[1]["port"] == 9000
