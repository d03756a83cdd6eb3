"""Which backend ``sanet serve`` runs (``backend=``; docs/deploy.md, "Choosing the backend").

- ``None``: the checkpoint's own (PyTorch for a run, onnxruntime for an ``.onnx`` file), as
  before; ``"torch"`` and ``"onnxruntime"`` say it explicitly (``onnxruntime`` on a run serves
  its export given as ``onnx=`` or ``int8=``).
- ``"auto"``: the fastest backend that passes the accuracy gate
  (:func:`sanet.exporting.backends.choose`), measured now on ``gate_data``, else taken from
  the ``backends.json`` a ``sanet backends`` run saved next to the model, else measured now on
  noise images without a gate: then INT8 is not considered (nothing measured what it loses).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sanet.errors import NotFoundError, UsageError, arg, suggest
from sanet.inference.protocol import EvalProtocol

logger = logging.getLogger(__name__)

BACKEND_CHOICES = ("auto", "torch", "onnxruntime")
SERVE_ROUNDS = 5  # timed rounds of `auto` at start-up: a choice, not a benchmark


@dataclass(frozen=True)
class ServedBackend:
    """What ``serve`` loads: the file, its protocol, and the choice record (``/v1/model``'s
    ``backend_choice``; ``None`` when no ``backend`` was asked for)."""

    checkpoint: str | Path
    protocol: EvalProtocol
    choice: dict[str, Any] | None = None


@dataclass(frozen=True)
class BackendRequest:
    """``serve``'s backend arguments (:func:`check_backend_args`, :func:`served_backend`)."""

    backend: str | None = None
    onnx: str | Path | None = None
    int8: str | Path | None = None
    gate_data: str | None = None
    gate_split: str = "val"
    max_miou_drop: float = 0.01

    def check(self, checkpoint: str | Path, amp: str) -> None:
        """Refused now, before any model loads."""
        check_backend_args(checkpoint, self.backend, self.onnx, self.int8, self.gate_data, amp)

    def resolve(self, checkpoint: str | Path, protocol: EvalProtocol, device: str) -> ServedBackend:
        """What serves (measured now when ``auto`` has no record)."""
        given = dataclasses.asdict(self)
        backend = given.pop("backend")
        return served_backend(checkpoint, backend, protocol, device, **given)


def check_backend_args(
    checkpoint: str | Path,
    backend: str | None,
    onnx: str | Path | None,
    int8: str | Path | None,
    gate_data: str | None,
    amp: str,
) -> None:
    """Refuse contradictory backend arguments before any model loads."""
    from sanet.api.backends import check_files

    if backend is not None and backend not in BACKEND_CHOICES:
        raise UsageError(
            f"{arg('backend')} must be one of {', '.join(BACKEND_CHOICES)}, got {backend!r}."
            + suggest(str(backend), BACKEND_CHOICES)
        )
    given = [arg(n) for n, v in (("onnx", onnx), ("int8", int8), ("gate_data", gate_data)) if v]
    is_onnx = Path(checkpoint).suffix.lower() == ".onnx"
    if given and backend not in ("auto", "onnxruntime"):
        raise UsageError(
            f"{', '.join(given)} apply with {arg('backend', 'auto')} (or onnxruntime for the "
            "files); add it."
        )
    if backend == "onnxruntime" and (gate_data or (onnx and int8)):
        raise UsageError(
            f"{arg('backend', 'onnxruntime')} serves one file: give {arg('onnx')} or "
            f"{arg('int8')}; {arg('backend', 'auto')} chooses between them."
        )
    if backend == "onnxruntime" and not (is_onnx or onnx or int8):
        raise UsageError(
            f"{arg('backend', 'onnxruntime')} needs an exported file: {arg('checkpoint')} an "
            f".onnx file, or {arg('onnx')} / {arg('int8')} (sanet export)."
        )
    if backend in ("torch", "auto") and is_onnx:
        raise UsageError(
            f"{arg('backend', backend)} needs the PyTorch model as {arg('checkpoint')} (a run "
            f"directory or model folder), got the exported file {str(checkpoint)!r}"
            + (
                f"; give exported files as {arg('onnx')} and {arg('int8')}."
                if backend == "auto"
                else "."
            )
        )
    if backend == "auto" and amp != "none":
        raise UsageError(
            f"{arg('backend', 'auto')} chooses the precision itself (PyTorch float32 or bf16, "
            f"or an export); leave {arg('amp')} out, or serve {arg('backend', 'torch')} "
            f"{arg('amp', amp)}."
        )
    check_files(onnx, int8)


def served_backend(
    checkpoint: str | Path,
    backend: str | None,
    protocol: EvalProtocol,
    device: str,
    *,
    onnx: str | Path | None = None,
    int8: str | Path | None = None,
    gate_data: str | None = None,
    gate_split: str = "val",
    max_miou_drop: float = 0.01,
) -> ServedBackend:
    """The file ``serve`` loads and its protocol, for ``backend`` (arguments checked by
    :func:`check_backend_args`)."""
    if backend is None:
        return ServedBackend(checkpoint, protocol)
    if backend == "torch":
        name = "torch-bf16" if protocol.amp == "bf16" else "torch-fp32"
        return ServedBackend(checkpoint, protocol, _asked(name))
    if backend == "onnxruntime":
        path = onnx or int8 or checkpoint
        name = "onnxruntime-int8" if int8 else "onnxruntime-fp32"
        return ServedBackend(path, _plain(protocol), _asked(name, path))
    choice, files = _auto(
        checkpoint, protocol, device, onnx, int8, gate_data, gate_split, max_miou_drop
    )
    name = choice["backend"]
    if name == "torch-fp32":
        return ServedBackend(checkpoint, _plain(protocol), choice)
    if name == "torch-bf16":
        bf16 = dataclasses.replace(protocol, amp="bf16", channels_last=True)
        return ServedBackend(checkpoint, bf16, choice)
    return ServedBackend(files[name], _plain(protocol), choice)


def _plain(protocol: EvalProtocol) -> EvalProtocol:
    return dataclasses.replace(protocol, amp="none", channels_last=False)


def _asked(name: str, path: str | Path | None = None) -> dict[str, Any]:
    where = f" ({path})" if path else ""
    return {"backend": name, "reason": f"as asked{where}", "gated": False, "source": "asked"}


def _auto(
    checkpoint: str | Path,
    protocol: EvalProtocol,
    device: str,
    onnx: str | Path | None,
    int8: str | Path | None,
    gate_data: str | None,
    gate_split: str,
    max_drop: float,
) -> tuple[dict[str, Any], dict[str, Path]]:
    """The choice and the exported files it may name: measured on ``gate_data``, else the
    saved record, else measured on noise images without INT8."""
    from sanet.api.backends import compare_backends, read_record, record_path

    record = None if gate_data else read_record(checkpoint)
    if record is not None and _compared(record, onnx, int8):
        return _from_record(record, record_path(checkpoint))
    if record is not None:
        logger.warning(
            "%s compared other exported files than %s; measuring now instead.",
            record_path(checkpoint),
            ", ".join(str(Path(p).resolve()) for p in (onnx, int8) if p),
        )
    logger.info("backend auto: measuring %s", "on " + gate_data if gate_data else "speed only")
    result = compare_backends(
        checkpoint,
        onnx=onnx,
        int8=int8,
        data=gate_data,
        split=gate_split,
        rounds=SERVE_ROUNDS,
        max_miou_drop=max_drop,
        protocol=protocol,
        device=device,
        save=False,
    )
    files = {r.name: Path(r.source) for r in result.rows}
    choice = result.choice.to_dict() | {"source": "measured at start-up"}
    if gate_data is None:
        choice["reason"] += f" ({arg('gate_data')}, or a `sanet backends` record next to the model)"
    return choice, files


def _compared(record: dict[str, Any], onnx: str | Path | None, int8: str | Path | None) -> bool:
    """Whether the record compared the exported files given (any, when none is given)."""
    sources = {str(Path(str(r.get("source", ""))).resolve()) for r in record.get("rows") or []}
    return all(str(Path(p).resolve()) in sources for p in (onnx, int8) if p)


def _from_record(record: dict[str, Any], path: Path) -> tuple[dict[str, Any], dict[str, Path]]:
    """The choice a ``sanet backends`` run saved; its exported file must still be there."""
    try:
        choice = dict(record["choice"])
        files = {r["name"]: Path(r["source"]) for r in record["rows"]}
        chosen = files[choice["backend"]]
    except (KeyError, TypeError):
        raise UsageError(
            f"{str(path)!r} is not a backend comparison of this sanet version; run `sanet "
            f"backends ... {arg('overwrite', True)}` again, or delete it."
        ) from None
    if not chosen.exists():
        raise NotFoundError(
            f"{str(path)!r} chose {choice['backend']} on {chosen}, which no longer exists; run "
            f"`sanet backends` again, or give {arg('gate_data')} to choose now."
        )
    measured = record.get("measured", "?")
    _warn_if_elsewhere(record, path)
    choice["reason"] += f" (recorded {measured} in {path})"
    choice["source"] = str(path)
    return choice, files


def _warn_if_elsewhere(record: dict[str, Any], path: Path) -> None:
    """Speed depends on the machine: say so when the record was measured on another CPU."""
    from sanet.devices import cpu_features

    env = record.get("environment") or {}
    there, here = env.get("device_name"), cpu_features()["name"]
    if str(env.get("device", "cpu")).startswith("cpu") and there and there != here:
        logger.warning(
            "%s was measured on %s, this machine is %s: its speed ranking may not hold here; "
            "run `sanet backends ... --overwrite` here, or give %s.",
            path,
            there,
            here,
            arg("gate_data"),
        )


__all__ = [
    "BACKEND_CHOICES",
    "BackendRequest",
    "ServedBackend",
    "check_backend_args",
    "served_backend",
]
