"""The model behind ``sanet serve``'s app: the predictor (or the promise of one while it loads),
its drift monitor, the working resolution, and what ``/v1/model`` and ``/metrics`` read."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from typing import Any

from fastapi import HTTPException

from sanet.inference.confidence import CALIBRATION_KEY
from sanet.inference.predictor import Predictor
from sanet.serve.drift import DriftMonitor, read_reference
from sanet.serve.limits import InferenceGate, ServeLimits
from sanet.serve.middleware import Refused
from sanet.serve.payload import class_table, redact_paths
from sanet.serve.startup import check_model
from sanet.serve.unsure import calibration_words, model_calibration

logger = logging.getLogger(__name__)


class ModelSlot:
    """The predictor, or the promise of one: a loader runs in a thread at start-up (then
    :func:`~sanet.serve.startup.check_model`), so ``/healthz`` answers 503 while a large model
    loads, and 500 for good if it cannot be loaded. ``drift``: its drift monitor, once loaded."""

    def __init__(
        self,
        source: Predictor | Callable[[], Predictor],
        gate: InferenceGate,
        drift: dict[str, Any] | None = None,
    ) -> None:
        self.predictor: Predictor | None = None
        self.drift: DriftMonitor | None = None
        self.error: str | None = None
        self._loader = None if isinstance(source, Predictor) else source
        self._gate = gate
        self._drift_settings = drift or {}
        if isinstance(source, Predictor):
            self._ready(source)

    def _ready(self, predictor: Predictor) -> None:
        """The drift monitor of ``predictor`` (its calibration's reference), then the model."""
        calibration = predictor.calibration
        names = class_table(predictor)[0]
        record = calibration.record if calibration is not None else None
        threshold = calibration is not None and calibration.threshold is not None
        reference, reason = read_reference(record, names, unsure=threshold)
        if calibration is None and predictor.metadata.get(CALIBRATION_KEY):
            reason = "the model is served without its calibration (calibrated=False)"
        self.drift = DriftMonitor(reference, names, reason=reason, **self._drift_settings)
        self.predictor = predictor

    def start(self) -> None:
        if self._loader is not None and self.predictor is None:
            threading.Thread(target=self._load, name="load-model", daemon=True).start()

    def _load(self) -> None:
        try:
            predictor = self._loader()  # type: ignore[misc]
            side = working_side(self._gate.limits, predictor)
            self._gate.record(1, check_model(predictor, side))
            self._ready(predictor)
            logger.info("Model loaded: %s", describe_model(predictor, self.drift))
        except Exception as err:  # reported by /healthz; the server stays up to say so
            logger.exception("Loading the model failed")
            self.error = (
                f"The model failed to load ({type(err).__name__}: {redact_paths(str(err))}). "
                "This does not pass by retrying: fix the model file and restart sanet serve "
                "(the server log has the details)."
            )

    def require(self, retry_after: int) -> Predictor:
        if self.predictor is not None:
            return self.predictor
        if self.error:
            raise HTTPException(500, self.error)
        raise Refused(
            503,
            f"The model is still loading. Retry in {retry_after} s.",
            "loading",
            headers={"Retry-After": str(retry_after)},
        )


def working_side(limits: ServeLimits, predictor: Predictor) -> int | None:
    """The longest side images are predicted at (None: their own size), see ``ServeLimits``:
    ``max_side``, else what the protocol works at — ``base_size`` × its largest scale, or one
    sliding window (``crop_size``) when it has no base size."""
    if limits.max_side == 0:
        return None
    if limits.max_side:
        return limits.max_side
    protocol = predictor.protocol
    if protocol.base_size:
        return math.ceil(protocol.base_size * max(protocol.scales))
    return protocol.crop_size


def model_info(
    predictor: Predictor, limits: ServeLimits, drift: DriftMonitor | None = None
) -> dict[str, Any]:
    """``GET /v1/model``: the checkpoint's metadata plus what the server adds."""
    names, palette = class_table(predictor)
    info = dict(predictor.metadata)
    model = predictor.model
    if "model" not in info and hasattr(model, "config"):
        info["model"] = {"name": model.name, **model.config}
    info.update(
        backend=predictor.backend,
        backend_choice=getattr(predictor, "backend_choice", None),
        num_classes=len(names),
        class_names=names,
        palette=palette,
        protocol=predictor.protocol.to_dict(),
        limits={**limits.to_dict(), "max_side": working_side(limits, predictor)},
        calibration=model_calibration(predictor),
        drift=drift.state() if drift is not None else None,
    )
    return info


def server_state(slot: ModelSlot, gate: InferenceGate) -> dict[str, Any]:
    """What ``/metrics`` reads at each scrape."""
    return {
        "loaded": slot.predictor is not None,
        "queue": {
            "running": gate.running,
            "waiting": gate.in_flight - gate.running,
            "capacity": gate.capacity,
        },
        "seconds_per_window": gate.seconds_per_window,
        "drift": slot.drift.state() if slot.drift is not None else None,
    }


def describe_model(predictor: Predictor, drift: DriftMonitor | None = None) -> str:
    """The model in one line (``sanet serve``'s start-up line, the load log): what it is, its
    backend, whether it is calibrated (T, the risk threshold and its guarantee) and the drift
    reference."""
    spec = predictor.metadata.get("model") or {}
    model = predictor.model
    name = spec.get("name") or getattr(model, "name", None) or type(model).__name__
    backbone = spec.get("backbone") or (getattr(model, "config", None) or {}).get("backbone")
    what = "/".join(str(w) for w in (name, backbone) if w)
    backend = f"{predictor.backend} backend"
    choice = getattr(predictor, "backend_choice", None)
    if choice is not None:  # sanet serve --backend: which and why
        backend += f" ({choice['backend']}; {choice['reason']})"
    words = [f"{what} ({len(class_table(predictor)[0])} classes)", backend]
    words.append(calibration_words(predictor))
    if drift is not None:
        words.append(drift.summary())
    return "; ".join(words)
