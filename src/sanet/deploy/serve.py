"""``sanet serve``: a FastAPI app around a :class:`~sanet.inference.Predictor`, and its runner.

Routes (docs/deploy.md has curl examples):

- ``GET /`` — the page (``static/``: choose or drop an image, overlay, legend, class table).
- ``POST /v1/segment`` — multipart field ``image``; ``?format=json`` (default) answers
  ``{width, height, classes: [{id, name, pixels, fraction}], mask_png_base64, seconds}``
  (``?overlay=1`` adds ``overlay_png_base64``); ``?format=png`` answers the index mask PNG
  (palette attached) at the input's size, or with ``overlay=1`` the overlay PNG.
- ``GET /v1/model`` — what the model is (metadata, backend, protocol, limits).
- ``GET /healthz`` — 200 once the model is loaded, 503 before.

Status codes for bad requests: 413 (body over ``max_upload_bytes``, image over ``max_pixels``),
415 (not an image, or not multipart), 422 (no ``image`` field), 503 + ``Retry-After`` (loading,
or every inference slot and queue place taken), 504 (over ``timeout_s``). Limits:
:class:`~sanet.deploy.limits.ServeLimits`.
"""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile

from sanet.data.io import DataError, TooManyPixels, load_image
from sanet.deploy.limits import AccessLog, BodyLimit, Busy, InferenceGate, ServeLimits, TimedOut
from sanet.inference.predictor import Predictor
from sanet.viz.visualize import default_palette, mask_to_pil, overlay_with_legend

logger = logging.getLogger(__name__)
STATIC = Path(__file__).with_name("static")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ModelSlot:
    """The predictor, or the promise of one: loaded in a thread at start-up when given as a
    loader, so that ``/healthz`` can answer 503 while a large model loads."""

    def __init__(self, source: Predictor | Callable[[], Predictor]) -> None:
        self.predictor = source if isinstance(source, Predictor) else None
        self.error: str | None = None
        self._loader = None if isinstance(source, Predictor) else source

    def start(self) -> None:
        if self._loader is not None and self.predictor is None:
            threading.Thread(target=self._load, name="load-model", daemon=True).start()

    def _load(self) -> None:
        try:
            self.predictor = self._loader()  # type: ignore[misc]
            logger.info("Model loaded (%s backend)", self.predictor.backend)
        except Exception as err:  # reported by /healthz; the server stays up to say so
            logger.exception("Loading the model failed")
            self.error = f"{type(err).__name__}: {err}"

    def require(self, retry_after: int) -> Predictor:
        if self.predictor is None:
            detail = f"The model failed to load ({self.error})." if self.error else "Loading."
            raise HTTPException(503, detail, headers={"Retry-After": str(retry_after)})
        return self.predictor


def class_table(predictor: Predictor) -> tuple[list[str], list[list[int]]]:
    """Class names and colours, with defaults when the checkpoint has none."""
    k = int(predictor.model.num_classes)
    names = list(predictor.class_names or [f"class {i}" for i in range(k)])
    palette = predictor.palette or default_palette(k)
    return names, [list(map(int, c)) for c in palette[:k]]


def model_info(predictor: Predictor, limits: ServeLimits) -> dict[str, Any]:
    """``GET /v1/model``: the checkpoint's metadata plus what the server adds."""
    names, palette = class_table(predictor)
    info = dict(predictor.metadata)
    model = predictor.model
    if "model" not in info and hasattr(model, "config"):
        info["model"] = {"name": model.name, **model.config}
    info.update(
        backend=predictor.backend,
        num_classes=len(names),
        class_names=names,
        palette=palette,
        protocol=predictor.protocol.to_dict(),
        limits=limits.to_dict(),
    )
    return info


def _png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)  # speed over a few % of size
    return buf.getvalue()


class Upload(io.BytesIO):
    """An uploaded file in memory; named by its file name in error messages."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.name = name

    def __repr__(self) -> str:
        return repr(self.name)


def segment_bytes(
    predictor: Predictor, upload: Upload, limits: ServeLimits, fmt: str, overlay: bool
) -> tuple[bytes | dict[str, Any], str]:
    """Decode, predict and encode one upload (runs in an inference thread).

    Returns:
        ``(content, media type)``: PNG bytes, or the JSON-ready dict of the module docstring.
    """
    rgb = load_image(upload, exif_transpose=limits.exif_transpose, max_pixels=limits.max_pixels)
    start = time.perf_counter()
    mask = predictor.predict(rgb)  # (H, W) at the image's size
    seconds = time.perf_counter() - start
    names, palette = class_table(predictor)
    if fmt == "png":
        picture = overlay_with_legend(rgb, mask, names, palette) if overlay else None
        return _png(picture or mask_to_pil(mask, palette)), "image/png"
    counts = np.bincount(mask.ravel(), minlength=len(names))
    present = sorted(np.flatnonzero(counts), key=lambda k: -counts[k])  # largest first
    body: dict[str, Any] = {
        "width": int(mask.shape[1]),
        "height": int(mask.shape[0]),
        "classes": [
            {
                "id": int(k),
                "name": names[k],
                "pixels": int(counts[k]),
                "fraction": round(float(counts[k] / mask.size), 6),
            }
            for k in present
        ],
        "mask_png_base64": _base64(_png(mask_to_pil(mask, palette))),
        "seconds": round(seconds, 4),
    }
    if overlay:
        body["overlay_png_base64"] = _base64(_png(overlay_with_legend(rgb, mask, names, palette)))
    return body, "application/json"


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def read_upload(request: Request) -> Upload:
    """The multipart field ``image``, read into memory; 415 or 422 with the fix otherwise."""
    kind = request.headers.get("content-type", "")
    if not kind.startswith("multipart/form-data"):
        raise HTTPException(
            415,
            f"Expected multipart/form-data with a file field 'image', got {kind or 'none'!r}. "
            "Send e.g.: curl -F image=@photo.jpg http://HOST:PORT/v1/segment",
        )
    async with request.form(max_files=1, max_fields=4) as form:
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise HTTPException(
                422,
                f"The form has no file field 'image' (fields: {sorted(form.keys())}). "
                "Send the image as: -F image=@photo.jpg",
            )
        return Upload(await upload.read(), upload.filename or "upload")


def create_app(
    predictor: Predictor | Callable[[], Predictor], limits: ServeLimits | None = None
) -> FastAPI:
    """The app. ``predictor`` may be a loader (``lambda: Predictor(path)``): it then loads in a
    thread at start-up and ``/healthz`` answers 503 until it is ready."""
    limits = limits or ServeLimits()
    slot, gate = ModelSlot(predictor), InferenceGate(limits)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        slot.start()
        yield
        gate.shutdown()

    # no /docs page: FastAPI's Swagger UI loads its assets from a CDN; /openapi.json stays
    app = FastAPI(title="sanet", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(BodyLimit, limit=limits.max_upload_bytes)
    app.add_middleware(AccessLog)  # added last = outermost: it also sees BodyLimit's 413s
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.state.slot, app.state.gate, app.state.limits = slot, gate, limits

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        if slot.predictor is not None:
            return JSONResponse({"status": "ok", "backend": slot.predictor.backend})
        status = "error" if slot.error else "loading"
        return JSONResponse({"status": status, "detail": slot.error}, status_code=503)

    @app.get("/v1/model")
    async def model() -> dict[str, Any]:
        return model_info(slot.require(limits.retry_after_s), limits)

    @app.post("/v1/segment")
    async def segment(
        request: Request,
        fmt: Literal["json", "png"] = Query("json", alias="format"),
        overlay: bool = False,
    ) -> Response:
        ready = slot.require(limits.retry_after_s)
        try:
            gate.admit()
        except Busy:
            raise HTTPException(
                503,
                f"Busy: {gate.capacity} requests are running or queued. Retry shortly.",
                headers={"Retry-After": str(limits.retry_after_s)},
            ) from None
        try:
            upload = await read_upload(request)
        except BaseException:
            gate.release()  # never reached the gate's worker, which would release it
            raise
        try:
            content, media = await gate.run(segment_bytes, ready, upload, limits, fmt, overlay)
        except TimedOut:
            raise HTTPException(504, f"No answer within {limits.timeout_s:g} s.") from None
        except TooManyPixels as err:
            raise HTTPException(413, f"{err.problem}. Send a smaller image.") from None
        except DataError as err:
            raise HTTPException(415, f"Not a readable image: {err.problem}.") from None
        if isinstance(content, bytes):
            return Response(content, media_type=media)
        return JSONResponse(content)

    return app


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run ``app`` under uvicorn until interrupted (our access log replaces uvicorn's)."""
    import uvicorn

    if host not in LOOPBACK:
        logger.warning(
            "Listening on %s: anyone who can reach this machine on port %d can use the model. "
            "There is no authentication or TLS; put a reverse proxy in front (docs/deploy.md).",
            host,
            port,
        )
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="info")
