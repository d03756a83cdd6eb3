"""What ``sanet serve`` checks before it says "Serving on": each problem that would make every
request fail is refused at start-up as a ``UsageError`` (one line and exit 2 in the CLI).

- :func:`check_dependencies` — the ``[serve]`` extra is installed.
- :func:`bind_socket` — the port is valid and free and the host is this machine's, checked by
  binding it (before the model loads; the server then runs on this very socket, so nothing can
  take the port in between).
- :func:`check_model` — the model is a segmentation model (``(N, 3, H, W)`` in, ``(N, K, H, W)``
  logits out, any H and W), checked by running it (an ONNX file's declared shapes were checked
  when it loaded: :func:`~sanet.inference.onnx_backend.check_segmentation_graph`, the check
  ``sanet predict`` and ``eval`` share); returns the measured seconds of one forward window,
  the first estimate for admission.

Nothing here imports FastAPI, so the CLI can call it to say what is missing.
"""

from __future__ import annotations

import errno
import importlib.util
import logging
import socket
import time
from typing import Any

import torch

from sanet.errors import UsageError, arg
from sanet.inference.onnx_backend import SEGMENTATION_GRAPH
from sanet.inference.predictor import Predictor

logger = logging.getLogger(__name__)
#: ``import name`` → ``pip`` name of what ``sanet serve`` needs besides sanet itself.
SERVE_DEPENDENCIES = {
    "fastapi": "fastapi",
    "uvicorn": "uvicorn",
    "multipart": "python-multipart",
    "prometheus_client": "prometheus-client",  # /metrics
}
LOOPBACK = ("127.0.0.1", "localhost", "::1")
CHECK_SIZE = (65, 97)  # odd: where a model that only works at its export size fails


def check_dependencies() -> None:
    """Raise ``UsageError`` naming the missing packages of the ``[serve]`` extra."""
    missing = []
    for module, package in SERVE_DEPENDENCIES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a broken or stubbed-out package
            found = False
        if not found:
            missing.append(package)
    if missing:
        raise UsageError(
            f"sanet serve needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'}"
            " not installed. Install the extra: pip install 'sanet[serve]'."
        )


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port), or ``UsageError`` saying
    why not: a port out of range, a port in use, a privileged port, an unknown host."""
    if not 0 <= port <= 65535:
        raise UsageError(
            f"{arg('port')} must be between 1 and 65535, got {port}. Try {arg('port', 8000)}."
        )
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise UsageError(
            f"{arg('host')} {host!r} is not an address or name this machine can listen on "
            f"({err}). Use 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)."
        ) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: TIME_WAIT is fine
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as err:
        sock.close()
        raise UsageError(_bind_error(host, port, err)) from None
    sock.setblocking(False)
    if host not in LOOPBACK:
        logger.warning(
            "Listening on %s: anyone who can reach this machine on port %d can use the model. "
            "There is no authentication or TLS; put a reverse proxy in front (docs/deploy.md).",
            host,
            sock.getsockname()[1],
        )
    return sock


def default_allowed_hosts(host: str) -> list[str]:
    """Host names a server on ``host`` answers to besides IP addresses and ``localhost``: none
    on loopback; this machine's names (and ``host`` if it is one) on other interfaces."""
    if host in LOOPBACK:
        return []
    names = [socket.gethostname(), socket.getfqdn()]
    if host not in ("0.0.0.0", "::"):
        names.append(host)
    return sorted(set(names))


def _bind_error(host: str, port: int, err: OSError) -> str:
    if err.errno == errno.EADDRINUSE:
        return (
            f"Port {port} on {host} is already in use (another server, or an earlier sanet "
            f"serve still running). Stop it, or choose another {arg('port')}."
        )
    if err.errno == errno.EACCES:
        return (
            f"Port {port} needs administrator rights on this system; choose {arg('port', 1024)} "
            "or above."
        )
    if err.errno == errno.EADDRNOTAVAIL:
        return (
            f"{arg('host', host)} is not an address of this machine. Use 127.0.0.1 (this machine "
            "only) or 0.0.0.0 (every interface)."
        )
    return f"Cannot listen on {host}:{port}: {err.strerror or err}."


def check_model(predictor: Predictor, side: int | None = None) -> float:
    """Refuse a model that cannot serve segmentation, then time one forward window.

    Runs the model on a ``65 × 97`` image (odd: a graph fixed to one size fails here) and checks
    that it returns ``(1, K, 65, 97)`` logits, K the number of classes; then times one window of
    ``side`` (default: the protocol's crop size; the faster of two runs).

    Returns:
        seconds of one forward window at ``side`` (the gate's first estimate).

    Raises:
        UsageError: what the model is instead, and what ``sanet serve`` expects.
    """
    model = predictor.model  # an ONNX graph's declared shapes were checked when it loaded
    expected = SEGMENTATION_GRAPH
    k = int(getattr(model, "num_classes", 0) or 0)
    out = _forward(model, CHECK_SIZE, predictor.device, expected)
    classes = k or (out.shape[1] if out.ndim == 4 else 0)
    want = (1, classes, *CHECK_SIZE)
    if tuple(out.shape) != want:
        raise UsageError(
            f"The model returned logits of shape {tuple(out.shape)} for a 65×97 image; expected "
            f"{want} ({k} classes). {expected}."
        )
    side = min(side or predictor.protocol.crop_size, predictor.protocol.crop_size)
    times = []
    for _ in range(2):  # the first forward at a new size also builds kernels: time the second
        start = time.perf_counter()
        _forward(model, (side, side), predictor.device, expected)
        times.append(time.perf_counter() - start)
    return min(times)


def _forward(model: Any, size: tuple[int, int], device: Any, expected: str) -> torch.Tensor:
    x = torch.zeros(1, 3, *size, device=device)
    try:
        with torch.no_grad():
            out = model(x)
        return out["out"] if isinstance(out, dict) else out
    except UsageError:  # the ONNX backend's own refusal says it all
        raise
    except Exception as err:  # a foreign graph fails inside onnxruntime in many ways
        raise UsageError(
            f"The model cannot run on a {size[0]}×{size[1]} image "
            f"({type(err).__name__}: {str(err).splitlines()[0][:300]}). {expected}."
        ) from None
