"""What bounds ``sanet serve``'s work (no sockets): the working resolution, admission by
estimated time, work stopped between windows when a request times out or its client leaves,
and uploads read and decoded before they may take an inference place.

Models here block in ``forward`` until the test hands out a permit, so each test decides exactly
how many forward windows run; raw ASGI calls play clients that disconnect or upload slowly.
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
from PIL import Image
from torch import nn

from sanet.inference import EvalProtocol, Predictor
from sanet.inference.predictor import resize_mask, working_size
from sanet.serve.app import create_app
from sanet.serve.limits import Busy, InferenceGate, ServeLimits, TooSlow

NAMES = ["background", "disc", "square"]
BOUNDARY = "gateboundary"


class StepModel(nn.Module):
    """Class 1 on the left half, class 2 on the top 10 rows; each forward records its input
    size and, when ``permits`` is set, waits for one."""

    num_classes = 3

    def __init__(self, permits: threading.Semaphore | None = None) -> None:
        super().__init__()
        self.permits, self.sizes, self.entered = permits, [], threading.Event()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.sizes.append(tuple(x.shape[-2:]))
        self.entered.set()
        if self.permits is not None and not self.permits.acquire(timeout=30):
            raise RuntimeError("test model: no permit within 30 s")
        n, _, h, w = x.shape
        out = torch.zeros(n, 3, h, w)
        out[:, 1, :, : w // 2] = 1.0
        out[:, 2, :10] = 2.0
        return {"out": out}


def jpeg(h: int, w: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), 120, np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def multipart(data: bytes, name: str = "photo.jpg") -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def app_with(model: nn.Module, protocol: EvalProtocol | None = None, **limits):
    predictor = Predictor.from_model(model, metadata={"class_names": NAMES}, protocol=protocol)
    return create_app(predictor, ServeLimits(**limits))


async def until(condition, what: str, seconds: float = 20) -> None:
    """Wait for ``condition()`` (the work it waits for takes milliseconds; the bound only keeps
    a broken build from hanging the suite)."""
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def run(steps) -> None:
    asyncio.run(steps())


async def post(app, data: bytes) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        return await client.post("/v1/segment", files={"image": ("a.jpg", data, "image/jpeg")})


async def raw_call(app, chunks: list, after_body=None) -> list[dict]:
    """Call ``app`` as a server would, with a body sent in ``chunks`` (bytes; a float waits that
    long; ``None`` never sends more; ``"leave"`` disconnects). After the body, ``after_body()`` (awaited) decides when the
    client disconnects; without it the client waits for the answer. Returns what was sent."""
    size = sum(len(c) for c in chunks if isinstance(c, bytes)) + 1000 * ("leave" in chunks)
    headers = [
        (b"host", b"127.0.0.1:8000"),
        (b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode()),
        (b"content-length", str(size).encode()),
    ]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/segment", "raw_path": b"/v1/segment", "root_path": "",
        "query_string": b"", "headers": headers, "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }  # fmt: skip
    pending = list(chunks)
    sent: list[dict] = []
    gone = asyncio.Event()  # set once the client has left (a server's receive then says so)

    async def receive() -> dict:
        while pending and isinstance(pending[0], float):
            await asyncio.sleep(pending.pop(0))
        if pending and pending[0] is None:
            await asyncio.Event().wait()  # a client that stopped sending
        if pending and pending[0] == "leave":
            return {"type": "http.disconnect"}  # a client that left mid-upload
        if pending:
            return {"type": "http.request", "body": pending.pop(0), "more_body": bool(pending)}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    async def leave() -> None:
        await after_body()
        gone.set()

    leaving = asyncio.ensure_future(leave()) if after_body is not None else None
    await app(scope, receive, send)
    if leaving is not None:
        leaving.cancel()
    return sent


# --- Working resolution -------------------------------------------------------------------------


def test_working_size_by_hand() -> None:
    assert working_size(3000, 4000, 480) == (360, 480)
    assert working_size(4000, 3000, 480) == (480, 360)
    assert working_size(333, 501, 96) == (64, 96)  # 333 · 96 / 501 = 63.8
    assert working_size(50, 60, 96) == (50, 60) and working_size(5000, 9, None) == (5000, 9)


def test_resize_mask_samples_pixel_centres_like_pillow() -> None:
    mask = np.random.default_rng(0).integers(0, 7, (7, 11), dtype=np.uint8)
    for size in [(23, 30), (3, 5), (7, 11)]:
        got = resize_mask(torch.from_numpy(mask), size).numpy()
        want = np.asarray(Image.fromarray(mask).resize(size[::-1], Image.NEAREST))
        np.testing.assert_array_equal(got, want)


@pytest.mark.reliability("r40")
def test_a_large_photo_is_predicted_at_working_resolution() -> None:
    model = StepModel()
    app = app_with(model, max_side=96)
    r = asyncio.run(post(app, jpeg(1125, 1500)))
    assert r.status_code == 200, r.text
    body = r.json()
    assert model.sizes == [(72, 96)]  # one window at the working size, not 1500 × 1125
    assert (body["width"], body["height"], body["scale"]) == (1500, 1125, 0.064)
    small = np.zeros((72, 96), np.uint8)  # the hand mask at the working size ...
    small[:, :48], small[:10] = 1, 2
    want = np.asarray(Image.fromarray(small).resize((1500, 1125), Image.NEAREST))
    got = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask_png_base64"]))))
    np.testing.assert_array_equal(got, want)  # ... resized back to the photo's size


@pytest.mark.parametrize(
    "max_side,protocol,seen",
    [
        (0, None, [(200, 300)]),  # 0: the image's own size (one 480 window)
        (None, EvalProtocol(crop_size=64, stride=64), [(43, 64)]),  # default: one window
        (None, EvalProtocol(base_size=50, crop_size=64, stride=64), [(33, 50)]),
    ],
)
def test_the_default_working_side_comes_from_the_protocol(max_side, protocol, seen) -> None:
    model = StepModel()
    r = asyncio.run(post(app_with(model, protocol, max_side=max_side), jpeg(200, 300)))
    assert r.status_code == 200 and model.sizes == seen
    assert (r.json()["width"], r.json()["height"]) == (300, 200)


# --- Admission by estimated time ------------------------------------------------------------


@pytest.mark.reliability("r45")
def test_admission_arithmetic_by_hand() -> None:
    gate = InferenceGate(ServeLimits(timeout_s=10, max_queue=8))  # budget 0.8 · 10 = 8 s
    gate.record(1, 1.0)  # 1 s per window
    gate.admit(3)  # waits 0, needs 3
    gate.admit(4)  # waits 3, needs 4: 7 ≤ 8
    with pytest.raises(Busy) as busy:
        gate.admit(2)  # waits 7, needs 2: 9 > 8
    assert busy.value.retry_after == 2 and "about 7 s of work is queued" in busy.value.reason
    gate.admit(1)  # 7 + 1 = 8 fits
    with pytest.raises(TooSlow) as slow:
        gate.admit(9)  # alone over the budget
    assert slow.value.seconds == 9.0
    gate.record(2, 4.0)  # 2 s per window, smoothed: 0.7 · 1 + 0.3 · 2
    assert gate.seconds_per_window == pytest.approx(1.3)
    assert gate.last_inference()["windows"] == 2 and gate.last_inference()["seconds"] == 4.0
    two = InferenceGate(ServeLimits(timeout_s=10, max_concurrent=2, max_queue=1))
    two.record(1, 2.0)
    two.admit(2), two.admit(2)  # 8 s of work over 2 slots: the next one would wait 4 s
    assert two.estimated_wait() == 4.0
    two.admit(1)  # 4 + 2 ≤ 8
    with pytest.raises(Busy, match="3 requests are running or queued"):
        two.admit(1)  # time would allow it, places do not


@pytest.mark.reliability("r45")
def test_admission_over_http_503_with_the_estimated_wait_and_413_alone() -> None:
    permits = threading.Semaphore(0)
    model = StepModel(permits)
    protocol = EvalProtocol(crop_size=32, stride=32, window_batch=1)
    app = app_with(model, protocol, max_side=0, timeout_s=60)
    app.state.gate.record(1, 20.0)  # 20 s per window: 48 s of budget holds two 1-window images

    async def steps() -> None:
        alone = await post(app, jpeg(32, 96))  # 3 windows × 20 s > 48 s, even alone
        assert alone.status_code == 413 and "would take about 60 s" in alone.json()["detail"]
        first = asyncio.ensure_future(post(app, jpeg(32, 32)))
        await asyncio.to_thread(model.entered.wait, 30)
        second = asyncio.ensure_future(post(app, jpeg(32, 32)))
        await until(lambda: app.state.gate.in_flight == 2, "the second request to queue")
        third = await post(app, jpeg(32, 32))  # waits ~40 s, needs 20: over 48
        assert third.status_code == 503 and third.headers["retry-after"] in ("11", "12")
        assert "would not finish within the 60 s timeout" in third.json()["detail"]
        permits.release(2)
        assert [(await f).status_code for f in (first, second)] == [200, 200]

    run(steps)


def test_full_queue_is_503_with_retry_after() -> None:
    permits = threading.Semaphore(0)
    model = StepModel(permits)
    app = app_with(model, max_concurrent=1, max_queue=1, retry_after_s=3)

    async def steps() -> None:
        first = asyncio.ensure_future(post(app, jpeg(40, 40)))
        await asyncio.to_thread(model.entered.wait, 30)
        second = asyncio.ensure_future(post(app, jpeg(40, 40)))
        await until(lambda: app.state.gate.in_flight == 2, "the second request to queue")
        third = await post(app, jpeg(40, 40))
        assert third.status_code == 503 and int(third.headers["retry-after"]) >= 3
        assert "2 requests are running or queued" in third.json()["detail"]
        permits.release(2)
        assert [(await f).status_code for f in (first, second)] == [200, 200]

    run(steps)


# --- Work nobody waits for is stopped -----------------------------------------------------------

WINDOWS4 = EvalProtocol(crop_size=32, stride=32, window_batch=1)  # a 32×128 image: 4 windows


@pytest.mark.reliability("r41")
def test_timed_out_work_stops_between_windows() -> None:
    permits = threading.Semaphore(0)
    model = StepModel(permits)
    app = app_with(model, WINDOWS4, max_side=0, max_queue=0, timeout_s=0.3)
    gate = app.state.gate

    async def steps() -> None:
        r = await post(app, jpeg(32, 128))
        assert r.status_code == 504 and "work was stopped" in r.json()["detail"]
        assert gate.in_flight == 1  # the first window is still in its forward pass
        permits.release()  # let that one window finish: the next one is never started
        await until(lambda: gate.in_flight == 0, "the stopped work to give its place back")
        assert len(model.sizes) == 1  # 1 of 4 windows ran
        permits.release(4)  # the place is free again: a new request is admitted (not 503)
        assert (await post(app, jpeg(32, 128))).status_code in (200, 504)

    run(steps)


def test_a_calibrated_model_runs_one_set_of_windows_and_stops_on_timeout() -> None:
    """Confidence and unsure pixels come from the mask's own forward windows (the second
    temperature replays them), and a timed-out request stops its work as a plain one does."""
    from sanet.inference.confidence import protocol_settings

    record = {"temperature": 2.0, "protocol": protocol_settings(WINDOWS4)}
    record["risk"] = {"alpha": 0.1, "threshold": 0.5}
    permits = threading.Semaphore(0)
    model = StepModel(permits)
    meta = {"class_names": NAMES, "calibration": record}
    predictor = Predictor.from_model(model, metadata=meta, protocol=WINDOWS4)
    patient = create_app(predictor, ServeLimits(max_side=0))
    hasty = create_app(predictor, ServeLimits(max_side=0, max_queue=0, timeout_s=0.3))

    async def steps() -> None:
        permits.release(4)
        r = await post(patient, jpeg(32, 128))
        assert r.status_code == 200 and "unsure_share" in r.json()
        assert model.sizes == [(32, 32)] * 4  # one forward per window, not one per temperature
        model.sizes.clear()
        assert (await post(hasty, jpeg(32, 128))).status_code == 504
        permits.release()  # the window in progress may finish; no other one starts
        await until(lambda: hasty.state.gate.in_flight == 0, "the stopped work to end")
        assert len(model.sizes) == 1  # 1 of 4 windows ran

    run(steps)


@pytest.mark.reliability("r42")
def test_client_disconnect_mid_inference(caplog: pytest.LogCaptureFixture) -> None:
    permits = threading.Semaphore(0)
    model = StepModel(permits)
    app = app_with(model, WINDOWS4, max_side=0)

    async def leave_once_inference_runs() -> None:
        await asyncio.to_thread(model.entered.wait, 30)

    async def steps() -> list[dict]:
        sent = await raw_call(app, [multipart(jpeg(32, 128))], leave_once_inference_runs)
        permits.release()  # the window in progress may finish; no other window starts
        await until(lambda: app.state.gate.in_flight == 0, "the stopped work to end")
        return sent

    with caplog.at_level(logging.INFO):
        sent = asyncio.run(steps())
    assert sent[0]["status"] == 499 and len(model.sizes) == 1  # 1 of 4 windows ran
    access = [json.loads(r.message) for r in caplog.records if r.name == "sanet.access"]
    assert [a["status"] for a in access] == [499]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no traceback


@pytest.mark.reliability("r43")
def test_client_disconnect_mid_upload(caplog: pytest.LogCaptureFixture) -> None:
    model = StepModel()
    app = app_with(model)
    body = multipart(jpeg(64, 64))

    async def steps() -> list[dict]:
        return await raw_call(app, [body[: len(body) // 2], "leave"])  # half, then gone

    with caplog.at_level(logging.INFO):
        sent = asyncio.run(steps())
    assert sent[0]["status"] == 499 and model.sizes == []
    access = [json.loads(r.message) for r in caplog.records if r.name == "sanet.access"]
    assert [a["status"] for a in access] == [499]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.reliability("r44")
def test_a_slow_upload_is_408_and_holds_no_place() -> None:
    model = StepModel()
    app = app_with(model, max_concurrent=1, max_queue=0, upload_timeout_s=0.5)
    body = multipart(jpeg(40, 40))

    async def steps() -> None:
        slow = asyncio.ensure_future(raw_call(app, [body[:100], None]))  # stalls after 100 B
        await asyncio.sleep(0.1)
        other = await post(app, jpeg(40, 40))  # the only inference place is free
        assert other.status_code == 200
        sent = await slow
        assert sent[0]["status"] == 408 and (b"connection", b"close") in sent[0]["headers"]
        assert "did not finish within 0.5 s" in json.loads(sent[1]["body"])["detail"]

    run(steps)


@pytest.mark.reliability("r52")
def test_bad_uploads_are_refused_before_taking_a_place() -> None:
    permits = threading.Semaphore(0)
    model = StepModel(permits)
    app = app_with(model, max_concurrent=1, max_queue=0, max_pixels=1_000_000)

    async def steps() -> None:
        busy = asyncio.ensure_future(post(app, jpeg(40, 40)))  # holds the only place
        await asyncio.to_thread(model.entered.wait, 30)
        bomb = io.BytesIO()
        Image.new("L", (1500, 1000)).save(bomb, "PNG")
        answers = [await post(app, data) for data in (b"not an image", bomb.getvalue())]
        assert [a.status_code for a in answers] == [415, 413]  # decoded first: not 503
        assert (await post(app, jpeg(40, 40))).status_code == 503  # a good one waits its turn
        permits.release()
        assert (await busy).status_code == 200

    run(steps)
