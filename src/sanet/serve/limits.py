"""What bounds the work of ``sanet serve``: the limits, and the inference gate that admits a
request only when it can finish in time and stops work nobody waits for any more.

- :class:`ServeLimits` — every limit in one place (documented in docs/deploy.md).
- :class:`InferenceGate` — at most ``max_concurrent`` inferences run and ``max_queue`` more
  wait. A request is admitted *by estimated time*: its forward windows × the measured seconds
  per window, after the work queued ahead of it, must fit in ``timeout_s`` (else :class:`Busy`,
  503 with the estimated wait as ``Retry-After``; a request that alone cannot fit is
  :class:`TooSlow`). Work whose request timed out (:class:`TimedOut`, 504) or whose client left
  (:class:`ClientGone`, logged as 499) is stopped between two forward windows
  (:class:`~sanet.inference.protocol.Cancelled`), so its slot frees within one window.

The HTTP middleware (body limit, host allow-list, headers, access log) is ``middleware.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import numbers
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any, TypeVar

from sanet.errors import UsageError, arg
from sanet.inference.protocol import Cancelled

T = TypeVar("T")
#: Share of ``timeout_s`` an admitted request's estimate may fill: the rest absorbs the noise of
#: a shared CPU (the estimate is a moving average of recent requests).
ADMIT_SHARE = 0.8
#: How often a waiting request checks its deadline and whether its client is still there.
POLL_S = 0.2
_SMOOTHING = 0.3  # weight of the newest request in the seconds-per-window average


@dataclass(frozen=True)
class ServeLimits:
    """Limits of ``sanet serve`` (the defaults suit one CPU box).

    Attributes:
        max_upload_bytes: request body size (413 above it; 10 MB).
        max_pixels: decoded image size, read from the header before decoding (413 above it:
            a decompression-bomb guard; 40 MP).
        max_side: the working resolution: an image with a longer side is resized to this long
            side, predicted, and its mask resized back to the input's size (nearest), so the
            work per request is bounded. ``None``: what the protocol works at (``base_size`` ×
            its largest scale, else one sliding window, ``crop_size``); ``0``: every image at
            its own size (work grows with the image).
        max_concurrent: inferences running at once (1 on CPU: torch already uses every core
            for one image; raise it on a GPU).
        max_queue: requests admitted to wait for an inference slot (503 beyond them).
        timeout_s: per request, from admission to the end of inference (504 after it); a
            request is only admitted when its estimated wait and work fit in it.
        upload_timeout_s: reading the whole upload (408 after it); slow uploads never hold an
            inference place, this bounds how long they hold a connection and memory.
        retry_after_s: the least ``Retry-After`` sent with 503.
        exif_transpose: apply the EXIF orientation of uploads, so the mask lines up with the
            photo as a browser shows it.
    """

    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_side: int | None = None
    max_concurrent: int = 1
    max_queue: int = 8
    timeout_s: float = 60.0
    upload_timeout_s: float = 30.0
    retry_after_s: int = 2
    exif_transpose: bool = True

    def __post_init__(self) -> None:
        """Each value out of range is refused by its own name, as the caller spells it
        (``--timeout`` under ``sanet serve``, ``timeout_s`` from Python)."""
        for name in ("max_upload_bytes", "max_pixels", "max_concurrent", "retry_after_s"):
            _check_count(name, getattr(self, name), 1)
        _check_count("max_queue", self.max_queue, 0)
        for name in ("timeout_s", "upload_timeout_s"):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value) or value <= 0:
                raise UsageError(
                    f"{arg(name)} must be a number of seconds above 0, got {value!r}. "
                    f"Try {arg(name, _field_default(name))}."
                )
        side = self.max_side
        if side is not None and (not _is_count(side) or side < 0 or 0 < side < 32):
            raise UsageError(
                f"{arg('max_side')} must be 0 (native size) or ≥ 32 (the models' minimum input), "
                f"a whole number; got {side!r}."
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _field_default(name: str) -> Any:
    return next(f.default for f in fields(ServeLimits) if f.name == name)


def _check_count(name: str, value: Any, least: int) -> None:
    """Refuse ``value`` unless it is a whole number ``≥ least``."""
    if not _is_count(value) or value < least:
        raise UsageError(
            f"{arg(name)} must be a whole number ≥ {least}, got {value!r}. "
            f"Try {arg(name, _field_default(name))}."
        )


class Busy(Exception):
    """No room: every place is taken, or the work queued ahead would not leave this request
    time to finish. ``retry_after`` (seconds) estimates when there will be room."""

    def __init__(self, reason: str, retry_after: int) -> None:
        super().__init__(reason)
        self.reason, self.retry_after = reason, retry_after


class TooSlow(Exception):
    """The request alone would take longer than the timeout (``seconds`` estimated)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"about {seconds:.0f} s")
        self.seconds = seconds


class TimedOut(Exception):
    """The request waited and ran longer than ``timeout_s``; its work was stopped."""


class ClientGone(Exception):
    """The client closed the connection; its work was stopped."""


@dataclass(eq=False)
class Ticket:
    """One admitted request: its size in forward windows and its stop signal."""

    windows: int
    admitted: float = field(default_factory=time.monotonic)
    started: float | None = None  # set by the worker thread when the work begins
    stop: threading.Event = field(default_factory=threading.Event)


class InferenceGate:
    """Runs blocking inference in ``max_concurrent`` worker threads, admitting by estimated time.

    A slot is given back when its work really ends; since work is stopped between forward
    windows once nobody waits for it, that is within one window of a timeout or a disconnect.
    Admission state is only touched on the event loop's thread; the seconds-per-window average
    is written by worker threads under a lock.
    """

    def __init__(self, limits: ServeLimits) -> None:
        self.limits = limits
        self._executor = ThreadPoolExecutor(limits.max_concurrent, thread_name_prefix="infer")
        self._tickets: set[Ticket] = set()  # admitted, not finished
        self._lock = threading.Lock()
        self._per_window: float | None = None
        self._last: dict[str, Any] | None = None

    @property
    def capacity(self) -> int:
        return self.limits.max_concurrent + self.limits.max_queue

    @property
    def in_flight(self) -> int:
        """Requests admitted and not finished (running, or waiting for a slot)."""
        return len(self._tickets)

    @property
    def running(self) -> int:
        return sum(1 for t in self._tickets if t.started is not None)

    @property
    def seconds_per_window(self) -> float | None:
        """Moving average of recent inference seconds per forward window (None: no measure)."""
        with self._lock:
            return self._per_window

    def record(self, windows: int, seconds: float) -> None:
        """Fold one finished inference (or a start-up measurement) into the estimate."""
        per = seconds / max(1, windows)
        with self._lock:
            old = self._per_window
            self._per_window = per if old is None else (1 - _SMOOTHING) * old + _SMOOTHING * per
            self._last = {
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "seconds": round(seconds, 3),
                "windows": windows,
            }

    def last_inference(self) -> dict[str, Any] | None:
        with self._lock:
            return dict(self._last) if self._last else None

    def backlog_seconds(self) -> float:
        """Estimated seconds of work admitted and not done (0 before anything is measured)."""
        per, now = self.seconds_per_window or 0.0, time.monotonic()
        left = 0.0
        for t in self._tickets:
            done = now - t.started if t.started is not None else 0.0
            left += max(0.0, t.windows * per - done)
        return left

    def estimated_wait(self) -> float:
        """Seconds a request admitted now would wait for a slot."""
        return self.backlog_seconds() / self.limits.max_concurrent

    def admit(self, windows: int) -> Ticket:
        """A place for work of ``windows`` forward windows, or :class:`Busy` / :class:`TooSlow`."""
        lim = self.limits
        wait = self.estimated_wait()
        if len(self._tickets) >= self.capacity:
            raise Busy(
                f"{len(self._tickets)} requests are running or queued",
                max(lim.retry_after_s, math.ceil(wait / max(1, len(self._tickets)))),
            )
        per = self.seconds_per_window
        if per is not None:
            own, budget = windows * per, lim.timeout_s * ADMIT_SHARE
            if own > budget:
                raise TooSlow(own)
            if wait + own > budget:
                raise Busy(
                    f"about {wait:.0f} s of work is queued ahead, and this image needs about "
                    f"{own:.1f} s more: it would not finish within the {lim.timeout_s:g} s "
                    "timeout",
                    max(lim.retry_after_s, math.ceil(wait + own - budget)),
                )
        ticket = Ticket(windows)
        self._tickets.add(ticket)
        return ticket

    async def submit(
        self,
        windows: int,
        fn: Callable[..., T],
        *args: Any,
        disconnected: Callable[[], Awaitable[bool]] | None = None,
    ) -> T:
        """Admit, then run ``fn(should_stop, *args)`` in a worker thread.

        Raises:
            Busy, TooSlow: not admitted (nothing ran).
            TimedOut: not done ``timeout_s`` after admission; the work is stopped.
            ClientGone: ``disconnected()`` became true; the work is stopped.
        """
        ticket = self.admit(windows)
        loop = asyncio.get_running_loop()
        future = self._executor.submit(self._work, ticket, fn, *args)
        future.add_done_callback(lambda _: _call_soon(loop, self._tickets.discard, ticket))
        waiting = asyncio.wrap_future(future)
        # an exception nobody awaits any more (work stopped after a timeout) is not an error
        waiting.add_done_callback(lambda f: f.cancelled() or f.exception())
        deadline = ticket.admitted + self.limits.timeout_s
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimedOut
                done, _ = await asyncio.wait({waiting}, timeout=min(POLL_S, left))
                if done:
                    return waiting.result()
                if disconnected is not None and await disconnected():
                    raise ClientGone
        except BaseException:  # TimedOut, ClientGone, or this task cancelled
            ticket.stop.set()
            future.cancel()  # drops it from the queue if it has not started
            raise

    def _work(self, ticket: Ticket, fn: Callable[..., T], *args: Any) -> T:
        if ticket.stop.is_set():
            raise Cancelled("stopped before it started")
        ticket.started = time.monotonic()
        start = time.perf_counter()
        result = fn(ticket.stop.is_set, *args)
        self.record(ticket.windows, time.perf_counter() - start)
        return result

    def shutdown(self) -> None:
        for ticket in list(self._tickets):
            ticket.stop.set()
        self._executor.shutdown(wait=False, cancel_futures=True)


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    """Schedule ``fn(*args)`` on ``loop`` from any thread; a loop already closed (server
    stopped) has nobody left to account to."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn, *args)
