"""What keeps ``sanet serve`` up under bad or heavy traffic: request limits, a bounded inference
gate with a short queue, and structured access logs.

- :class:`ServeLimits` — every limit in one place (documented in docs/deploy.md).
- :class:`BodyLimit` — ASGI middleware: 413 for a body over ``max_upload_bytes``, from the
  ``Content-Length`` header when there is one, and by counting when there is none (chunked).
- :class:`InferenceGate` — at most ``max_concurrent`` inferences run, ``max_queue`` more wait;
  beyond that :class:`Busy` (503 + ``Retry-After``); past ``timeout_s`` :class:`TimedOut` (504).
- :class:`AccessLog` — ASGI middleware: one JSON line per request (method, path, status, bytes
  in and out, milliseconds) on the ``sanet.access`` logger.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

from starlette.exceptions import HTTPException

access_logger = logging.getLogger("sanet.access")
T = TypeVar("T")
ASGIApp = Callable[[dict, Callable, Callable], Awaitable[None]]


@dataclass(frozen=True)
class ServeLimits:
    """Limits of ``sanet serve`` (the defaults suit one CPU box).

    Attributes:
        max_upload_bytes: request body size (413 above it; 10 MB).
        max_pixels: decoded image size, read from the header before decoding (413 above it:
            a decompression-bomb guard; 40 MP).
        max_concurrent: inferences running at once (1 on CPU: torch already uses every core
            for one image; raise it on a GPU).
        max_queue: requests admitted to wait for an inference slot (503 beyond them).
        timeout_s: per request, from admission to answer (504 after it).
        retry_after_s: the ``Retry-After`` sent with 503.
        exif_transpose: apply the EXIF orientation of uploads, so the mask lines up with the
            photo as a browser shows it.
    """

    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_concurrent: int = 1
    max_queue: int = 8
    timeout_s: float = 60.0
    retry_after_s: int = 2
    exif_transpose: bool = True

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "max_concurrent", "retry_after_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}.")
        if self.max_queue < 0 or self.timeout_s <= 0:
            raise ValueError(
                f"max_queue must be ≥ 0 and timeout_s > 0, got {self.max_queue}, {self.timeout_s}."
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Busy(Exception):
    """Every inference slot and queue place is taken."""


class TimedOut(Exception):
    """The request waited and ran longer than ``timeout_s``."""


class InferenceGate:
    """Runs blocking inference in ``max_concurrent`` worker threads with a short queue.

    A slot is given back when its work really ends: a timed-out request stops waiting (504) but
    its thread cannot be interrupted, so the slot stays counted until the thread finishes —
    otherwise timeouts would let more work pile onto the CPU than the limit allows.
    """

    def __init__(self, limits: ServeLimits) -> None:
        self.limits = limits
        self._executor = ThreadPoolExecutor(limits.max_concurrent, thread_name_prefix="infer")
        self._admitted = 0  # waiting + running; only touched on the event loop's thread

    @property
    def capacity(self) -> int:
        return self.limits.max_concurrent + self.limits.max_queue

    @property
    def in_flight(self) -> int:
        """Requests admitted and not finished (running, queued, or timed out but running)."""
        return self._admitted

    def admit(self) -> None:
        """Take a place, or raise :class:`Busy`; pair with :meth:`run` or :meth:`release`."""
        if self._admitted >= self.capacity:
            raise Busy
        self._admitted += 1

    def release(self) -> None:
        self._admitted -= 1

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker thread within ``timeout_s``; releases the admitted place
        when the work ends (raises :class:`TimedOut` if the caller stops waiting first)."""
        loop = asyncio.get_running_loop()
        future = self._executor.submit(fn, *args)
        future.add_done_callback(lambda _: _call_soon(loop, self.release))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.limits.timeout_s)
        except asyncio.TimeoutError:
            future.cancel()  # drops it from the queue if it has not started
            raise TimedOut from None

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes with 413."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _send_json(send, 413, self._message(int(declared)))
        received = 0

        async def counting_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    # raised inside the route's body parsing → Starlette answers 413
                    raise HTTPException(413, self._message(received, so_far=True))
            return message

        await self.app(scope, counting_receive, send)

    def _message(self, size: int, so_far: bool = False) -> str:
        what = f"more than {size:,}" if so_far else f"{size:,}"
        return (
            f"The upload is {what} bytes; this server accepts at most {self.limit:,}. "
            "Send a smaller image (e.g. a JPEG), or start the server with a larger "
            "--max-upload-mb."
        )


class AccessLog:
    """ASGI middleware: one JSON line per HTTP request on the ``sanet.access`` logger."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        record = {
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "method": scope["method"],
            "path": scope["path"],
            "status": 500,
            "bytes_in": 0,
            "bytes_out": 0,
        }

        async def counting_receive() -> dict:
            message = await receive()
            record["bytes_in"] += len(message.get("body", b""))
            return message

        async def recording_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                record["status"] = message["status"]
            elif message["type"] == "http.response.body":
                record["bytes_out"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counting_receive, recording_send)
        finally:
            record["ms"] = round((time.perf_counter() - start) * 1000, 1)
            client = scope.get("client")
            record["client"] = client[0] if client else None
            access_logger.info(json.dumps(record))


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[[], None]) -> None:
    """Schedule ``fn`` on ``loop`` from any thread; a loop already closed (server stopped) has
    nobody left to account to."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn)


async def _send_json(send: Callable, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
