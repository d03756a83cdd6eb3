"""``sanet serve``: a FastAPI app around a :class:`~sanet.inference.Predictor`, and its runner.

Routes (docs/deploy.md has curl examples; ``/openapi.json`` the schema):

- ``GET /`` — the page (``static/``: choose or drop an image, overlay, legend, class table).
- ``POST /v1/segment`` — multipart field ``image``; ``?format=json`` (default) answers
  :class:`~sanet.serve.schema.SegmentAnswer` (``?overlay=1`` adds ``overlay_png_base64``);
  ``?format=png`` the index mask PNG (palette attached) at the input's size, or with
  ``overlay=1`` the overlay PNG. A calibrated model's JSON adds its confidence map and, with a
  risk threshold, its unsure pixels and their share; ``?unsure=true`` puts 255 on the unsure
  pixels of the mask (``unsure.py``, docs/trust.md).
- ``GET /v1/model`` — what the model is (metadata, backend, protocol, limits, calibration).
- ``GET /healthz`` — 200 with the queue, the last inference and the drift state once the model
  is loaded; 503 while it loads; 500 when loading failed (a restart is needed).
- ``GET /metrics`` — the Prometheus text format (``metrics.py``).

A calibrated model's answered requests feed the drift monitor (``drift.py``): ``/healthz``,
``/v1/model``, ``/metrics`` and the page say whether the last requests are still like the
calibration images.

A request is read whole (``upload_timeout_s``, ``max_upload_bytes``) and decoded
(``max_pixels``) before it asks the :class:`~sanet.serve.limits.InferenceGate` for a place, so
slow or bad uploads never hold one. The image is predicted at its working resolution
(``max_side``) and its mask returned at the input's size. Every error answer is
``{"detail": "<reason and fix>"}`` (schema: ``schema.py``); a client that leaves is logged as
499 and its work stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from sanet.inference.predictor import Predictor, working_size
from sanet.inference.protocol import window_count
from sanet.serve import schema
from sanet.serve.drift import FALSE_ALARM, WINDOW, check_settings
from sanet.serve.limits import Busy, ClientGone, InferenceGate, ServeLimits, TimedOut, TooSlow
from sanet.serve.metrics import CONTENT_TYPE, ServerMetrics
from sanet.serve.middleware import AccessLog, BodyLimit, HostAllowList, Refused, SecurityHeaders
from sanet.serve.payload import decode, encode, read_upload
from sanet.serve.slot import ModelSlot, model_info, server_state, working_side
from sanet.serve.startup import bind_socket
from sanet.serve.unsure import check_unsure, predict, share

logger = logging.getLogger(__name__)
STATIC = Path(__file__).with_name("static")
API_HINT = (
    "POST /v1/segment (multipart field 'image'), GET /v1/model, GET /healthz, GET /metrics; "
    "the page is /"
)


def _gone() -> Response:
    """What a request whose client left 'answers': nobody reads it; the access log says 499."""
    return Response(status_code=499)


def create_app(
    predictor: Predictor | Callable[[], Predictor],
    limits: ServeLimits | None = None,
    *,
    allowed_hosts: Iterable[str] = (),
    drift_window: int = WINDOW,
    drift_false_alarm: float = FALSE_ALARM,
) -> FastAPI:
    """The app. ``predictor`` may be a loader (``lambda: Predictor(path)``): it then loads in a
    thread at start-up and ``/healthz`` answers 503 until it is ready (500 if it fails).
    ``allowed_hosts``: host names answered besides IP addresses and ``localhost`` (``"*"``:
    any; see :class:`~sanet.serve.middleware.HostAllowList`). ``drift_window`` requests are
    compared with the model's reference statistics, flagged as drifting at a false-alarm rate
    of at most ``drift_false_alarm`` per window (``drift.py``). ``sanet.api.serving.
    serving_app`` builds it for a checkpoint with the run's protocol and working size."""
    limits = limits or ServeLimits()
    check_settings(drift_window, drift_false_alarm)
    gate = InferenceGate(limits)
    settings = {"window": drift_window, "false_alarm": drift_false_alarm}
    slot = ModelSlot(predictor, gate, settings)
    metrics = ServerMetrics(lambda: server_state(slot, gate))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        slot.start()
        yield
        gate.shutdown()

    # no /docs page: FastAPI's Swagger UI loads its assets from a CDN; /openapi.json stays
    app = FastAPI(title="sanet", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(BodyLimit, limit=limits.max_upload_bytes, on_refuse=metrics.reject)
    app.add_middleware(HostAllowList, names=allowed_hosts)
    app.add_middleware(SecurityHeaders)
    # added last = outermost: it sees every answer
    app.add_middleware(AccessLog, on_answer=metrics.observe_request)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.state.slot, app.state.gate, app.state.limits = slot, gate, limits
    app.state.metrics = metrics
    _error_handlers(app, metrics)
    _page_routes(app)
    _status_routes(app, slot, gate, limits, metrics)
    _segment_route(app, slot, gate, limits, metrics)
    return app


def _page_routes(app: FastAPI) -> None:
    """``GET /`` (the page) and ``GET /favicon.ico``."""

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")


def _status_routes(
    app: FastAPI, slot: ModelSlot, gate: InferenceGate, limits: ServeLimits, metrics: ServerMetrics
) -> None:
    """``GET /healthz``, ``GET /v1/model`` and ``GET /metrics``."""

    @app.get("/healthz", response_model=schema.Health, responses=schema.HEALTH_RESPONSES)
    async def healthz() -> JSONResponse:
        return _health(slot, gate, limits)

    @app.get("/v1/model", responses=schema.MODEL_RESPONSES)
    async def model() -> dict[str, Any]:
        return model_info(slot.require(limits.retry_after_s), limits, slot.drift)

    @app.get("/metrics", response_class=Response, responses=schema.METRICS_RESPONSES)
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)


def _health(slot: ModelSlot, gate: InferenceGate, limits: ServeLimits) -> JSONResponse:
    """200 with the queue and the last inference once loaded; 503 loading; 500 failed."""
    if slot.predictor is None:
        if slot.error:
            return JSONResponse({"status": "error", "detail": slot.error}, status_code=500)
        retry = {"Retry-After": str(limits.retry_after_s)}
        body = {"status": "loading", "detail": "The model is still loading."}
        return JSONResponse(body, status_code=503, headers=retry)
    per = gate.seconds_per_window
    return JSONResponse(
        {
            "status": "ok",
            "backend": slot.predictor.backend,
            "queue": {
                "running": gate.running,
                "waiting": gate.in_flight - gate.running,
                "capacity": gate.capacity,
            },
            "estimated_wait_s": round(gate.estimated_wait(), 2),
            "seconds_per_window": None if per is None else round(per, 4),
            "last_inference": gate.last_inference(),
            "drift": slot.drift.state() if slot.drift is not None else None,
        }
    )


def _segment_route(
    app: FastAPI, slot: ModelSlot, gate: InferenceGate, limits: ServeLimits, metrics: ServerMetrics
) -> None:
    """``POST /v1/segment``: read and decode the upload, predict it through the gate at its
    working size, answer JSON or PNG; a calibrated model's answer feeds the drift monitor."""
    codec = asyncio.Semaphore(max(2, limits.max_concurrent))  # decodes/encodes at once

    @app.post(
        "/v1/segment",
        response_model=schema.SegmentAnswer,
        responses=schema.SEGMENT_RESPONSES,
        openapi_extra=schema.UPLOAD_BODY,
    )
    async def segment(
        request: Request,
        fmt: Literal["json", "png"] = Query("json", alias="format"),
        overlay: bool = False,
        unsure: bool = Query(False, description=schema.UNSURE_QUERY),
    ) -> Response:
        ready = slot.require(limits.retry_after_s)
        check_unsure(ready, unsure)  # before the upload is read
        try:
            upload = await read_upload(request, limits)
            async with codec:
                rgb = await asyncio.to_thread(decode, upload, limits)
        except ClientGone:
            return _gone()
        side = working_side(limits, ready)
        h, w = rgb.shape[:2]
        small = working_size(h, w, side)
        admitted = time.perf_counter()
        try:
            prediction, started, seconds = await _through_gate(
                gate, request, ready, rgb, small, side, unsure
            )
        except ClientGone:
            return _gone()
        async with codec:
            content = await asyncio.to_thread(encode, ready, rgb, prediction, fmt, overlay)
        if prediction.stats is not None and slot.drift is not None:
            slot.drift.add(prediction.stats)
        metrics.observe_answer(prediction.stats)
        scale = max(small) / max(h, w)
        return _answer(content, prediction, scale, seconds, started - admitted)


async def _through_gate(
    gate: InferenceGate,
    request: Request,
    ready: Predictor,
    rgb: Any,
    small: tuple[int, int],
    side: int | None,
    unsure: bool,
) -> tuple[Any, float, float]:
    """Predict ``rgb`` in the gate: ``(prediction, start, seconds)``; the gate's refusals as
    HTTP errors (503 busy, 413 too slow alone, 504 timed out); :class:`ClientGone` passes."""
    limits = gate.limits
    try:
        return await gate.submit(
            window_count(*small, ready.protocol),
            _timed(predict),
            ready,
            rgb,
            side,
            unsure,
            disconnected=request.is_disconnected,
        )
    except Busy as err:
        raise Refused(
            503,
            f"The server is busy: {err.reason}. Retry in {err.retry_after} s.",
            "busy",
            headers={"Retry-After": str(err.retry_after)},
        ) from None
    except TooSlow as err:
        h, w = rgb.shape[:2]
        raise Refused(
            413,
            f"This {w}×{h} image would take about {err.seconds:.0f} s on this server, more "
            f"than its {limits.timeout_s:g} s timeout allows. Send a smaller image, or start "
            "the server with a smaller --max-side or a longer --timeout.",
            "too_slow",
        ) from None
    except TimedOut:
        raise HTTPException(
            504,
            f"The image was not done within the {limits.timeout_s:g} s timeout (the server "
            "was slower than it estimated); its work was stopped. Retry in a moment.",
        ) from None


def _answer(
    content: Any, prediction: Any, scale: float, seconds: float, queue_seconds: float
) -> Response:
    """The PNG (timings in headers) or the JSON answer (timings in the body)."""
    timings = {"scale": round(scale, 6), "seconds": round(seconds, 4)}
    if isinstance(content, bytes):
        headers = {"X-Sanet-Scale": str(timings["scale"]), "X-Sanet-Seconds": str(seconds)}
        if prediction.unsure is not None:
            headers["X-Sanet-Unsure-Share"] = str(share(prediction.unsure))
        return Response(content, media_type="image/png", headers=headers)
    timings["queue_seconds"] = round(queue_seconds, 4)
    return JSONResponse({**content, **timings})


def _timed(fn: Callable[..., Any]) -> Callable[..., tuple[Any, float, float]]:
    """``fn``'s result with the time it started (``perf_counter``) and its seconds."""

    def timed(*args: Any) -> tuple[Any, float, float]:
        start = time.perf_counter()
        return fn(*args), start, time.perf_counter() - start

    return timed


def _error_handlers(app: FastAPI, metrics: ServerMetrics) -> None:
    """Every error answer is ``{"detail": "<reason and fix>"}`` — also 404, 405, query errors
    and bugs (whose detail names no file: the traceback goes to the server log). A refused
    upload is counted by its reason."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        if isinstance(err, Refused):
            metrics.reject(err.reason)
        detail = str(err.detail)
        if err.status_code == 404:
            detail = f"Nothing at {request.url.path}. This server has {API_HINT}."
        elif err.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}. Use {API_HINT}."
        return JSONResponse({"detail": detail}, err.status_code, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        problems = [
            f"{e['loc'][0]} parameter {e['loc'][-1]!r}: {e['msg']} (got {e.get('input')!r})"
            for e in err.errors()
        ]
        detail = "Invalid " + "; ".join(problems) + ". Use e.g. /v1/segment?format=png&overlay=1."
        return JSONResponse({"detail": detail}, 422)

    @app.exception_handler(Exception)
    async def bug(request: Request, err: Exception) -> JSONResponse:
        detail = (
            f"Internal error ({type(err).__name__}) while answering {request.url.path}: a bug in "
            "sanet serve, not in your request. The server log has the traceback; please report it."
        )
        return JSONResponse({"detail": detail}, 500)


def serve(
    app: FastAPI, host: str = "127.0.0.1", port: int = 8000, *, sock: socket.socket | None = None
) -> None:
    """Run ``app`` under uvicorn until interrupted (our access log replaces uvicorn's), on
    ``sock`` (from :func:`~sanet.serve.startup.bind_socket`) or a socket bound here."""
    import uvicorn

    sock = sock or bind_socket(host, port)
    config = uvicorn.Config(app, access_log=False, log_level="warning", timeout_graceful_shutdown=5)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
