"""ASGI middleware of ``sanet serve``: what every request passes through before the routes.

- :class:`HostAllowList` — 400 for a ``Host`` header the server does not answer to, so that a
  web page cannot reach a loopback server through DNS rebinding (its requests carry the
  attacker's name as ``Host``). IP literals always pass (rebinding needs a name).
- :class:`SecurityHeaders` — ``Content-Security-Policy`` (own scripts, styles and images only;
  no framing), ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY``,
  ``Referrer-Policy: no-referrer`` on every answer.
- :class:`BodyLimit` — 413 for a body over ``max_upload_bytes``, from the ``Content-Length``
  header when there is one, and by counting when there is none (chunked).
- :class:`AccessLog` — one JSON line per request (method, path, status, bytes in and out,
  milliseconds) on the ``sanet.access`` logger; a client that left is status 499. It also
  tells ``/metrics`` (``metrics.py``) of every answer.
- :class:`Refused` — an upload refused before inference, with the reason ``/metrics`` counts.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timezone

from starlette.exceptions import HTTPException

access_logger = logging.getLogger("sanet.access")
ASGIApp = Callable[[dict, Callable, Callable], Awaitable[None]]
LOOPBACK_NAMES = ("localhost",)
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


def host_name(header: str) -> str:
    """``Host`` header → its name or address, without the port (``[::1]:80`` → ``::1``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class Refused(HTTPException):
    """An upload refused before inference; ``reason`` is its label in ``/metrics``
    (``sanet_rejected_uploads``, :data:`~sanet.serve.metrics.REJECT_REASONS`)."""

    def __init__(
        self, status_code: int, detail: str, reason: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status_code, detail, headers)
        self.reason = reason


class HostAllowList:
    """ASGI middleware: answer only requests whose ``Host`` is an IP address, a loopback name or
    one of ``names`` (``"*"`` allows any)."""

    def __init__(self, app: ASGIApp, names: Iterable[str] = ()) -> None:
        self.app = app
        self.names = {n.strip().lower().rstrip(".") for n in (*LOOPBACK_NAMES, *names) if n}

    def allows(self, header: str | None) -> bool:
        if header is None or "*" in self.names:
            return True  # no Host (HTTP/1.0): not a browser, nothing to rebind
        name = host_name(header).rstrip(".")
        return _is_ip(name) or name in self.names

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        raw = dict(scope.get("headers") or []).get(b"host")
        header = raw.decode("latin-1") if raw is not None else None
        if self.allows(header):
            return await self.app(scope, receive, send)
        allowed = ", ".join(sorted(self.names))
        await send_json(
            send,
            400,
            f"This server does not answer to the host name {host_name(header or '')!r} (it "
            f"answers to IP addresses and {allowed}). Open it by address, e.g. "
            "http://127.0.0.1:PORT/, or start it with --allowed-hosts NAME.",
        )


class SecurityHeaders:
    """ASGI middleware: the headers of :data:`SECURITY_HEADERS` on every HTTP answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in names]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes with 413 (``on_refuse`` is
    told the refusal's reason when this middleware answers itself)."""

    def __init__(
        self, app: ASGIApp, limit: int, on_refuse: Callable[[str], None] | None = None
    ) -> None:
        self.app, self.limit, self.on_refuse = app, limit, on_refuse

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            if self.on_refuse is not None:
                self.on_refuse("too_large")
            return await send_json(send, 413, self._message(int(declared)))
        received = 0

        async def counting_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    # raised inside the route's body reading → answered 413 by the app
                    raise Refused(
                        413,
                        self._message(received, so_far=True),
                        "too_large",
                        {"Connection": "close"},
                    )
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
    """ASGI middleware: one JSON line per HTTP request on the ``sanet.access`` logger, and
    ``on_answer(path, status, seconds)`` (the ``/metrics`` counts)."""

    def __init__(
        self, app: ASGIApp, on_answer: Callable[[str, int, float], None] | None = None
    ) -> None:
        self.app, self.on_answer = app, on_answer

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
            seconds = time.perf_counter() - start
            record["ms"] = round(seconds * 1000, 1)
            if self.on_answer is not None:
                self.on_answer(scope["path"], record["status"], seconds)
            client = scope.get("client")
            record["client"] = client[0] if client else None
            access_logger.info(json.dumps(record))


async def send_json(send: Callable, status: int, detail: str) -> None:
    """Answer ``{"detail": detail}`` from a middleware, closing the connection (the body may be
    unread)."""
    body = json.dumps({"detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
