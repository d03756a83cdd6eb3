"""What several verbs share: datasets from ``"KIND:ROOT"``, the protocol argument, image inputs,
and the check that a model and a dataset agree on the classes."""

from __future__ import annotations

import dataclasses
import glob
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from sanet.data import SegmentationDataset, build_dataset, parse_data_spec
from sanet.devices import Precision, resolve_device
from sanet.errors import NotFoundError, UsageError, arg
from sanet.inference.protocol import EvalProtocol
from sanet.inference.runs import Mode, inference_precision, run_config, run_protocol

logger = logging.getLogger(__name__)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

#: ``protocol=`` of the verbs: an exact :class:`EvalProtocol`, or a mode of the run's own
#: (``None`` = ``"run"``: the run's ``eval`` section; ``"paper"``; ``"single"``).
ProtocolArg = EvalProtocol | Mode | None


def device_of(device: str | torch.device | None) -> str:
    """``device``, else ``cuda`` when there is one, else ``cpu``; a device this machine does not
    have is refused before any work."""
    return str(resolve_device(device))


def protocol_of(
    checkpoint: str | Path, protocol: ProtocolArg, device: str, amp: str = "none"
) -> EvalProtocol:
    """The protocol a verb runs ``checkpoint`` under (:func:`~sanet.inference.runs.
    run_protocol`): ``protocol`` itself when it is one, else the run's own in that mode. An
    ``amp`` other than ``"none"`` (``"auto"``, ``"bf16"``, ``"fp16"``) sets its precision
    (:func:`~sanet.inference.runs.inference_precision`); ``"none"`` keeps the protocol's."""
    if not isinstance(protocol, EvalProtocol):
        return run_protocol(checkpoint, mode=protocol or "run", device=device, amp=amp)
    if amp == "none":
        return protocol
    chosen = inference_precision(checkpoint, amp, device, protocol.channels_last)
    return dataclasses.replace(protocol, amp=chosen.amp, channels_last=chosen.channels_last)


def precision_of(
    checkpoint: str | Path, protocol: ProtocolArg, device: str, amp: str = "none"
) -> tuple[EvalProtocol, Precision]:
    """:func:`protocol_of` and the precision it runs, logged at start-up as training logs it
    (``Precision: bf16 autocast, channels-last (auto: this CPU has bf16 units: ...)``) and
    recorded by ``evaluate``, ``calibrate`` and ``predict_files`` in what they return.

    ``amp``: ``"none"`` keeps the protocol's precision (float32 unless an ``EvalProtocol`` says
    otherwise); ``"auto"``: bf16 autocast + channels-last on a CPU with bf16 units or a bf16
    GPU, else float32; ``"bf16"``, ``"fp16"``: autocast (docs/benchmarks.md, CPU precision).
    """
    chosen = protocol_of(checkpoint, protocol, device)
    if amp == "none":  # the protocol's own precision (float32 unless an EvalProtocol says)
        asked, why = ("none", "as asked") if chosen.amp == "none" else ("protocol", "as given")
        precision = Precision(chosen.amp, chosen.channels_last, asked, why)
    else:
        precision = inference_precision(checkpoint, amp, device, chosen.channels_last, log=False)
        chosen = dataclasses.replace(
            chosen, amp=precision.amp, channels_last=precision.channels_last
        )
    logger.info("Precision: %s", precision.describe())
    return chosen, precision


def open_dataset(
    data: str | SegmentationDataset, split: str, options: Mapping[str, Any] | None = None
) -> SegmentationDataset:
    """``data`` as a dataset: ``"KIND:ROOT"`` (``"synthetic"`` needs no root) with ``split`` and
    dataset ``options`` (a recipe's ``data.options``), or a dataset object as it is."""
    if not isinstance(data, str):
        if options:
            raise UsageError(
                f"{arg('data_options')} applies to a 'KIND:ROOT' {arg('data')}; build the dataset "
                "with them instead (sanet.data.build_dataset(kind, root, split, **options))."
            )
        return data
    kind, root = parse_data_spec(data)
    return build_dataset(kind, root, split=split, **dict(options or {}))


def run_data_options(spec: str, checkpoint: str | Path) -> dict[str, Any]:
    """The run's ``data.options`` when ``spec`` (``"KIND:ROOT"``) is of the run's dataset kind
    (the demo's synthetic scenes at their size and seed), else ``{}``."""
    kind, _ = parse_data_spec(spec)
    data = run_config(checkpoint).get("data") or {}
    return dict(data.get("options") or {}) if data.get("dataset") == kind else {}


def data_name(data: str | SegmentationDataset) -> str:
    """How a report names ``data``: its ``"KIND:ROOT"``, or the dataset's name."""
    return data if isinstance(data, str) else str(getattr(data, "name", type(data).__name__))


def check_classes(model: Any, dataset: Any, checkpoint: str | Path) -> None:
    """Refuse to use a model on a dataset with another number of classes."""
    if model.num_classes != dataset.num_classes:
        raise UsageError(
            f"The checkpoint {str(checkpoint)!r} predicts {model.num_classes} classes but the "
            f"dataset has {dataset.num_classes}. Use it on the dataset it was trained for."
        )


def expand_inputs(inputs: str | Path | list[str | Path]) -> list[Path]:
    """Files, folders (their images, not recursive) and globs → a sorted, de-duplicated list."""
    found: list[Path] = []
    for item in [inputs] if isinstance(inputs, (str, Path)) else inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.is_file():
            found.append(path)
        elif glob.has_magic(str(item)):
            matches = sorted(Path(p) for p in glob.glob(str(item), recursive=True))
            found += [p for p in matches if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
        else:
            raise NotFoundError(f"Input {str(item)!r} is not a file, a folder or a glob pattern.")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise NotFoundError(
            f"No images found in {[str(i) for i in inputs] if isinstance(inputs, list) else inputs}"
            f"; expected files with extensions {', '.join(IMAGE_EXTENSIONS)}."
        )
    return unique
