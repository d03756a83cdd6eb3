"""``sanet.serving_app`` and ``sanet.serve``: the web page and HTTP API of a checkpoint under its
run's protocol (``sanet serve``; docs/deploy.md).

:func:`serving_app` builds the FastAPI app (for TestClient, Ray Serve or any ASGI server) after
the checks that would make every request fail; :func:`serve` binds the port first (a busy port
fails before the model loads), builds the app and runs it until Ctrl-C.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sanet.api.common import ProtocolArg, device_of, protocol_of
from sanet.api.serve_backend import BackendRequest, ServedBackend
from sanet.errors import NotFoundError, UsageError, arg, suggest
from sanet.inference.runs import run_config
from sanet.serve.drift import FALSE_ALARM, WINDOW, check_settings
from sanet.serve.limits import ServeLimits

if TYPE_CHECKING:
    from fastapi import FastAPI

    from sanet.inference.predictor import Predictor

_LIMIT_FIELDS = tuple(f.name for f in dataclasses.fields(ServeLimits))


@dataclass
class ServingApp:
    """What :func:`serving_app` built.

    Attributes:
        app: the FastAPI app (``TestClient(served.app)``, ``uvicorn.run(served.app)``).
        predictor: the model behind it, under the run's protocol.
        limits: the limits it enforces (``max_side``: the run's working size when not given).
        window_seconds: the measured seconds of one forward window (admission's first
            estimate).
    """

    app: FastAPI
    predictor: Predictor
    limits: ServeLimits
    window_seconds: float

    @property
    def description(self) -> str:
        """The model in one line: what it is, its backend, whether it is calibrated (T, the
        risk threshold and its guarantee) and its drift reference (the start-up line)."""
        from sanet.serve.slot import describe_model

        return describe_model(self.predictor, self.app.state.slot.drift)

    @property
    def working_side(self) -> int | None:
        """The longest side images are predicted at (``None``: every image at its own size)."""
        from sanet.serve.slot import working_side

        return working_side(self.limits, self.predictor)


def serving_app(
    checkpoint: str | Path,
    *,
    protocol: ProtocolArg = None,
    device: str | None = None,
    amp: str = "none",
    window_batch: int | None = None,
    limits: ServeLimits | None = None,
    allowed_hosts: Iterable[str] = (),
    drift_window: int = WINDOW,
    drift_false_alarm: float = FALSE_ALARM,
    backend: str | None = None,
    onnx: str | Path | None = None,
    int8: str | Path | None = None,
    gate_data: str | None = None,
    gate_split: str = "val",
    max_miou_drop: float = 0.01,
    **limit_fields: Any,
) -> ServingApp:
    """The app serving ``checkpoint``, once the model passed the start-up checks.

    Args:
        checkpoint: a run directory, a ``save_pretrained`` folder, a ``.pt`` checkpoint or an
            ``.onnx`` file from :func:`sanet.export`.
        protocol: ``None``: the run's own (its ``eval`` section); ``"paper"``, ``"single"`` or
            an :class:`~sanet.inference.EvalProtocol`.
        device: ``cpu``, ``cuda`` ... (default: ``cuda`` when there is one).
        amp: the precision (``"auto"`` ...: :func:`~sanet.api.common.precision_of`).
        window_batch: windows per forward pass (default: 1 on a CPU, so that a request that
            timed out stops after one window; the protocol's on a GPU).
        limits: a :class:`~sanet.serve.limits.ServeLimits`, or its fields as keywords
            (``max_side=1024, timeout_s=30``). Without ``max_side``, images are predicted at
            most at the run's ``data.base_size`` (or what the protocol works at).
        allowed_hosts: host names answered besides IP addresses and ``localhost`` (``"*"``: any).
        drift_window: the last this many answered requests of a calibrated model are compared
            with the calibration images' statistics stored with it (docs/deploy.md, "Drift").
        drift_false_alarm: at most this share of windows of requests like the calibration
            images is flagged as drifting.
        backend, onnx, int8, gate_data, gate_split, max_miou_drop: the backend, e.g. ``"auto"``:
            the fastest that passes the accuracy gate (:mod:`sanet.api.serve_backend`; why:
            ``ServingApp.description``, ``/v1/model``).

    Returns:
        a :class:`ServingApp`.

    Raises:
        sanet.errors.UsageError: a model that cannot serve segmentation, a missing ``[serve]``
            dependency, unknown limit fields, drift settings out of range.
    """
    from sanet.serve.startup import check_dependencies

    check_dependencies()
    limits = _limits(limits, limit_fields)
    drift = _drift(drift_window, drift_false_alarm)
    _check_checkpoint(checkpoint)
    request = BackendRequest(backend, onnx, int8, gate_data, gate_split, max_miou_drop)
    request.check(checkpoint, amp)
    protocol = protocol_of(checkpoint, protocol, device := device_of(device), amp)
    served = request.resolve(checkpoint, protocol, device)
    return _build(served, device, window_batch, limits, allowed_hosts, drift)


def serve(
    checkpoint: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    protocol: ProtocolArg = None,
    device: str | None = None,
    amp: str = "none",
    window_batch: int | None = None,
    limits: ServeLimits | None = None,
    allowed_hosts: Iterable[str] = (),
    drift_window: int = WINDOW,
    drift_false_alarm: float = FALSE_ALARM,
    on_ready: Callable[[ServingApp, str], None] | None = None,
    backend: str | None = None,
    onnx: str | Path | None = None,
    int8: str | Path | None = None,
    gate_data: str | None = None,
    gate_split: str = "val",
    max_miou_drop: float = 0.01,
    **limit_fields: Any,
) -> None:
    """Serve ``checkpoint`` on ``http://host:port/`` until Ctrl-C (:func:`serving_app`'s
    arguments). The port is bound before the model loads, so a busy or invalid port fails in a
    second; the server then runs on that very socket.

    Args:
        host: the interface (default loopback only; another logs that there is no
            authentication). Its own host names are allowed besides ``allowed_hosts``.
        port: the TCP port (0: any free port).
        on_ready: called with the app and its URL once the model is loaded and checked, just
            before the server starts answering (the ``sanet`` command prints "Serving ...":
            :func:`~sanet.serve.slot.describe_model` of ``ServingApp.description``).
    """
    from sanet.serve.app import serve as run_app
    from sanet.serve.startup import bind_socket, check_dependencies, default_allowed_hosts

    check_dependencies()
    limits = _limits(limits, limit_fields)
    drift = _drift(drift_window, drift_false_alarm)
    _check_checkpoint(checkpoint)
    request = BackendRequest(backend, onnx, int8, gate_data, gate_split, max_miou_drop)
    request.check(checkpoint, amp)
    device = device_of(device)
    protocol = protocol_of(checkpoint, protocol, device, amp)
    sock = bind_socket(host, port)  # before the model loads: a busy port fails fast
    try:
        names = [*default_allowed_hosts(host), *allowed_hosts]
        chosen = request.resolve(checkpoint, protocol, device)  # `auto` may measure here
        served = _build(chosen, device, window_batch, limits, names, drift)
        _access_log_as_json_lines()
        shown = f"[{host}]" if ":" in host else host
        if on_ready is not None:
            on_ready(served, f"http://{shown}:{sock.getsockname()[1]}/")
        run_app(served.app, sock=sock)
    finally:
        sock.close()


def _limits(limits: ServeLimits | None, fields: dict[str, Any]) -> ServeLimits:
    """``limits``, or a :class:`ServeLimits` of ``fields``; unknown fields are refused."""
    unknown = [name for name in fields if name not in _LIMIT_FIELDS]
    if unknown:
        raise UsageError(
            f"Unknown serving limit {unknown[0]!r}; the limits are {', '.join(_LIMIT_FIELDS)}."
            + suggest(unknown[0], _LIMIT_FIELDS)
        )
    if limits is not None and fields:
        raise UsageError(
            f"Give {arg('limits')} or its fields ({', '.join(fields)}), not both: e.g. "
            f"dataclasses.replace(limits, {next(iter(fields))}=...)."
        )
    return limits if limits is not None else ServeLimits(**fields)


def _drift(window: int, false_alarm: float) -> dict[str, Any]:
    """The drift settings, checked before the model loads."""
    check_settings(window, false_alarm)
    return {"drift_window": window, "drift_false_alarm": false_alarm}


def _check_checkpoint(checkpoint: str | Path) -> None:
    if not Path(checkpoint).exists():
        raise NotFoundError(f"{arg('checkpoint')} {str(checkpoint)!r} does not exist.")


def _build(
    served: ServedBackend,
    device: str,
    window_batch: int | None,
    limits: ServeLimits,
    allowed_hosts: Iterable[str],
    drift: dict[str, Any],
) -> ServingApp:
    """The predictor of the chosen backend under the run's protocol, checked
    (:func:`~sanet.serve.startup.check_model`), and the app around it."""
    from sanet.serve.app import create_app

    checkpoint, chosen = served.checkpoint, served.protocol
    if window_batch is None and not device.startswith("cuda"):
        # one window per forward on a CPU (batches barely help there): a request that timed out
        # or was abandoned stops after one window, not after a batch of them
        window_batch = 1
    if window_batch is not None:
        chosen = dataclasses.replace(chosen, window_batch=window_batch)
    if limits.max_side is None and chosen.base_size is None:  # the size the run trained at
        base_size = (run_config(checkpoint).get("data") or {}).get("base_size")
        limits = dataclasses.replace(limits, max_side=base_size or None)
    predictor, seconds = _load_checked(checkpoint, device, chosen, limits)
    predictor.backend_choice = served.choice  # the start-up line and /v1/model say it
    app = create_app(predictor, limits, allowed_hosts=list(allowed_hosts), **drift)
    app.state.gate.record(1, seconds)  # the first estimate for admission
    return ServingApp(app, predictor, limits, seconds)


def _load_checked(
    checkpoint: str | Path, device: str, protocol: Any, limits: ServeLimits
) -> tuple[Predictor, float]:
    """The predictor, once it passed ``check_model`` (its load-time warnings are shown only
    then: a refused model is one line); and the seconds of one forward window."""
    from sanet import inference
    from sanet.serve.slot import working_side
    from sanet.serve.startup import check_model

    held = _Held()
    backend = logging.getLogger("sanet.inference")
    backend.addHandler(held)
    backend.propagate = False
    try:
        predictor = inference.Predictor(checkpoint, device=device, protocol=protocol)
        seconds = check_model(predictor, working_side(limits, predictor))
    finally:
        backend.removeHandler(held)
        backend.propagate = True
    for record in held.records:
        logging.getLogger(record.name).handle(record)
    return predictor, seconds


class _Held(logging.Handler):
    """Keeps log records to show later."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class _JsonLines(logging.StreamHandler):
    """The access log's handler: each record's message (a JSON object) alone on a line."""


def _access_log_as_json_lines() -> None:
    """Access records as bare JSON lines on stderr (one per request), for log collectors; added
    once per process."""
    access = logging.getLogger("sanet.access")
    if any(isinstance(h, _JsonLines) for h in access.handlers):
        return
    handler = _JsonLines()
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(handler)
    access.propagate = False
