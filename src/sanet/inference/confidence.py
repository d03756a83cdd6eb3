"""Calibrated confidence at inference time: the calibration a model carries, and the protocol's
probabilities at several temperatures from one set of forward passes (docs/trust.md).

``sanet.calibrate`` (``sanet calibrate``) fits one temperature ``T`` (and, given a risk level, a
confidence threshold) and stores them in the model's ``config.json`` under
``metadata["calibration"]`` (:mod:`sanet.trust.store`); ``sanet export`` copies the record into
the ONNX metadata under the same key. A calibrated probability
map is what the protocol gives when every forward's softmax is ``softmax(logits / T)``
(:func:`~sanet.inference.protocol.predict_proba`'s ``temperature``).

Arg-max masks stay the plain protocol's (``T = 1``); the *confidence* of a pixel is the largest
calibrated probability. With one forward per pixel the two share their arg-max (dividing logits
by ``T > 0`` keeps their order); when windows, flips or scales are averaged they can differ on a
few pixels, so both views are computed from the same forwards (:class:`ReplayModel`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sanet.errors import UsageError, arg, speaks_cli
from sanet.inference.protocol import EvalProtocol, combine_bands, scale_probs

logger = logging.getLogger(__name__)

CALIBRATION_KEY = "calibration"  # in config.json's metadata and in the ONNX metadata
#: What a stored calibration keeps under :data:`CALIBRATION_KEY`, the one list of it: written by
#: ``sanet.calibrate`` (:func:`sanet.trust.store.stored_record`), read back by
#: :func:`read_calibration` (``Predictor``, the server), copied whole by ``sanet export``; the
#: bulky tables stay in calibration.json. ``risk`` only when a risk level was given (without the
#: per-image values of its ``per_image`` view); ``reference``: the calibration images'
#: statistics the server compares requests with (docs/trust.md).
STORED_KEYS = (
    "temperature",
    "bins",
    "ece_before",
    "ece_after",
    "nll_before",
    "nll_after",
    "images",
    "protocol",
    "data",
    "split",
    "risk",
    "reference",
)
#: What the guarantee of a risk threshold assumes, printed wherever the guarantee is.
ASSUMPTION = (
    "holds in expectation over new images exchangeable with the calibration images (drawn "
    "from the same distribution, e.g. the same camera, classes and annotators)"
)
#: The same for the per-image guarantee (``sanet calibrate --per-image``), a bound that holds
#: with a stated probability over the calibration draw.
ASSUMPTION_WITH_CONFIDENCE = (
    "holds with the stated probability over the draw of the calibration images, when they and "
    "the new images are independent draws from the same distribution (e.g. the same camera, "
    "classes and annotators)"
)
#: The protocol settings a calibration depends on (window batching and bands change nothing).
PROTOCOL_FIELDS = ("scales", "flip", "base_size", "crop_size", "stride")


@dataclass(frozen=True)
class Calibration:
    """A model's calibration, as ``sanet calibrate`` stored it.

    Attributes:
        temperature: ``T > 0``; calibrated probabilities use ``softmax(logits / T)``.
        threshold: pixels whose calibrated confidence is below it are *unsure* (``None``
            when no risk level was given).
        alpha: the risk level the threshold was chosen for (expected share of sure-and-wrong
            labelled pixels per image).
        protocol: the protocol settings it was fitted under (:data:`PROTOCOL_FIELDS`).
        record: the whole stored record (data, split, ECE, ...).
        class_thresholds: with ``sanet calibrate --per-class``, the threshold applied to the
            pixels predicted as each class (by class id; ``inf``: every such pixel unsure);
            ``None``: ``threshold`` for every pixel.
    """

    temperature: float
    threshold: float | None = None
    alpha: float | None = None
    protocol: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)
    class_thresholds: tuple[float, ...] | None = None

    def guarantee(self) -> str | None:
        """What the risk threshold promises and what it assumes, in one sentence, as ``sanet
        calibrate`` stored them (a record without them: the mean-risk sentence); ``None``
        without a threshold."""
        if self.threshold is None:
            return None
        risk = self.record.get("risk") or {}
        text = risk.get("guarantee") or (
            f"expected share of sure-and-wrong labelled pixels per image ≤ {self.alpha}"
        )
        if self.class_thresholds is not None:
            text = f"each class has its own threshold, at least {self.threshold:.6g}: {text}"
        return f"{text}; the guarantee {risk.get('assumption') or ASSUMPTION}"

    def eval_protocol(self, **overrides: Any) -> EvalProtocol:
        """The :class:`EvalProtocol` this calibration was fitted under."""
        settings = {k: self.protocol[k] for k in PROTOCOL_FIELDS if k in self.protocol}
        if "scales" in settings:
            settings["scales"] = tuple(settings["scales"])
        return EvalProtocol(**{**settings, **overrides})

    def matches(self, protocol: EvalProtocol) -> bool:
        """Whether ``protocol`` has the settings this calibration was fitted under (True when
        the record names none: a hand-written calibration has nothing to compare)."""
        if not self.protocol:
            return True
        mine = {k: self.protocol.get(k) for k in PROTOCOL_FIELDS}
        mine["scales"] = [float(s) for s in mine["scales"] or ()]
        theirs = {k: getattr(protocol, k) for k in PROTOCOL_FIELDS}
        theirs["scales"] = [float(s) for s in theirs["scales"]]
        return mine == theirs


def protocol_settings(protocol: EvalProtocol) -> dict[str, Any]:
    """The settings of ``protocol`` a calibration records (:data:`PROTOCOL_FIELDS`)."""
    d = protocol.to_dict()
    return {k: d[k] for k in PROTOCOL_FIELDS}


def calibrate_hint(risk: float | None = None) -> str:
    """How the caller calibrates a model, in their words: the ``sanet calibrate`` command under
    the command line, ``sanet.calibrate(...)`` from Python (with ``risk``: a risk level too)."""
    if speaks_cli():
        words = ["sanet calibrate", arg("checkpoint", "RUN"), arg("data", "KIND:ROOT")]
        return "`" + " ".join(words + ([arg("risk", risk)] if risk is not None else [])) + "`"
    given = f", {arg('risk', risk)}" if risk is not None else ""
    return f"sanet.calibrate(run, data{given})"


def read_calibration(metadata: dict[str, Any] | None) -> Calibration | None:
    """The calibration in a model's metadata, or ``None`` for an uncalibrated model."""
    record = (metadata or {}).get(CALIBRATION_KEY)
    if not record:
        return None
    temperature = record.get("temperature")
    if not isinstance(temperature, (int, float)) or not temperature > 0:
        raise UsageError(
            f"The model's calibration holds temperature {temperature!r}; expected a number > 0. "
            f"Calibrate the model again to rewrite it ({calibrate_hint()})."
        )
    risk = record.get("risk") or {}
    per_class = risk.get("class_thresholds")
    return Calibration(
        temperature=float(temperature),
        threshold=float(risk["threshold"]) if risk.get("threshold") is not None else None,
        alpha=float(risk["alpha"]) if risk.get("alpha") is not None else None,
        protocol=dict(record.get("protocol") or {}),
        record=dict(record),
        class_thresholds=(
            None
            if per_class is None
            else tuple(math.inf if t is None else float(t) for t in per_class)
        ),
    )


class ReplayModel(nn.Module):
    """Runs ``model`` once per input and replays the outputs: the protocol's views at several
    temperatures of one image cost one set of forward passes.

    Call :meth:`record` before the first pass over an image and :meth:`replay` before each
    further pass; the passes must feed the same inputs in the same order (the protocol does).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self._outputs: list[torch.Tensor] = []
        self._shapes: list[tuple[int, ...]] = []
        self._next: int | None = None  # None: recording

    def record(self) -> None:
        self._outputs, self._shapes, self._next = [], [], None

    def replay(self) -> None:
        self._next = 0

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self._next is None:
            out = self.model(x)["out"]
            self._outputs.append(out)
            self._shapes.append(tuple(x.shape))
            return {"out": out}
        i = self._next
        assert self._shapes[i] == tuple(x.shape), "replayed inputs differ from the recorded ones"
        self._next += 1
        return {"out": self._outputs[i]}


#: ``reduce(band, rows)``: a band ``(K, b, W)`` of the probability map and its rows in the image
#: → per-pixel values ``(..., b, W)``.
BandReduce = Callable[[torch.Tensor, slice], torch.Tensor]


@torch.no_grad()
def protocol_views(
    model: nn.Module,
    image: torch.Tensor,
    protocol: EvalProtocol,
    views: Sequence[tuple[float, BandReduce]],
    store: torch.device | str | None = None,
    *,
    should_stop: Callable[[], bool] | None = None,
) -> list[torch.Tensor]:
    """Per-pixel values of the protocol's probability map at several temperatures, band by band
    (the full ``(K, H, W)`` map is never held), from one set of forward passes.

    Args:
        model: a model returning ``{"out": logits}``, in eval mode.
        image: one normalised image ``(3, H, W)``.
        views: ``(temperature, reduce)`` pairs; ``reduce(band, rows)`` maps a band ``(K, b, W)``
            of the map at that temperature (``rows``: its rows in the image) to ``(..., b, W)``.
        should_stop: as in :func:`~sanet.inference.protocol.scale_probs` (asked before every
            recorded forward pass).

    Returns:
        one tensor ``(..., H, W)`` per view.
    """
    hw = (int(image.shape[-2]), int(image.shape[-1]))
    temperatures = list(dict.fromkeys(t for t, _ in views))
    replay = ReplayModel(model) if len(temperatures) > 1 else None
    out: list[torch.Tensor | None] = [None] * len(views)
    for i, temperature in enumerate(temperatures):  # one temperature's maps held at a time
        if replay is not None:
            replay.record() if i == 0 else replay.replay()
        net = replay if replay is not None else model
        stop = should_stop if i == 0 else None  # replays cost no forward pass
        maps = scale_probs(net, image, protocol, store, should_stop=stop, temperature=temperature)
        for j, (t, reduce) in enumerate(views):
            if t == temperature:
                out[j] = torch.cat(_banded(maps, hw, protocol.band_rows, reduce), dim=-2)
    return out  # type: ignore[return-value]


def _banded(
    maps: list[torch.Tensor], hw: tuple[int, int], band_rows: int, reduce: BandReduce
) -> list[torch.Tensor]:
    """:func:`combine_bands` with each band's rows passed to ``reduce``."""
    start = [0]

    def with_rows(band: torch.Tensor) -> torch.Tensor:
        rows = slice(start[0], start[0] + band.shape[1])
        start[0] = rows.stop
        return reduce(band, rows)

    return combine_bands(maps, hw, band_rows, with_rows)


def arg_max(band: torch.Tensor, rows: slice) -> torch.Tensor:
    """``reduce``: each pixel's arg-max class ``(b, W)``."""
    return band.argmax(dim=0)


def largest(band: torch.Tensor, rows: slice) -> torch.Tensor:
    """``reduce``: each pixel's largest probability ``(b, W)``."""
    return band.amax(dim=0)


def label_stats(labels: torch.Tensor) -> BandReduce:
    """``reduce`` giving ``(arg-max, largest probability, p[label])`` per pixel, ``(3, b, W)``,
    for ``labels`` ``(H, W)`` (ids and 255; p[label] is meaningless where 255)."""

    def reduce(band: torch.Tensor, rows: slice) -> torch.Tensor:
        conf, pred = band.max(dim=0)
        p = band.gather(0, labels[rows].clamp(max=band.shape[0] - 1)[None])[0]
        return torch.stack([pred.to(band.dtype), conf, p])

    return reduce
