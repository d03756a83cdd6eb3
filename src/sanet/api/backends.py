"""``sanet.compare_backends``: one model on PyTorch float32, PyTorch bf16, onnxruntime fp32 and
onnxruntime INT8, side by side in one process on the same images (``sanet backends``;
docs/deploy.md, "Choosing the backend"), and the choice ``sanet serve --backend auto`` makes.

The measuring is in :mod:`sanet.exporting.backends`; here the arguments are checked before
any model loads, the images are opened, and the record is written next to the model
(``backends.json``), where ``serve --backend auto`` finds it.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sanet._files import atomic_write_text, ensure_new_file
from sanet.api.common import ProtocolArg, check_classes, device_of, expand_inputs, protocol_of
from sanet.errors import NotFoundError, UsageError, arg
from sanet.exporting import backends as measuring
from sanet.exporting.int8_gate import MIN_GATE_IMAGES

logger = logging.getLogger(__name__)

RECORD = "backends.json"  # next to the model: what `serve --backend auto` reads
DEFAULT_IMAGES = 24  # ≥ MIN_GATE_IMAGES, so the gate can say how uncertain a drop is
DEFAULT_ROUNDS = 10


@dataclass
class BackendComparison:
    """What :func:`compare_backends` measured.

    Attributes:
        rows: one per backend, the reference (PyTorch float32) first
            (:class:`~sanet.exporting.backends.BackendRow`).
        choice: the backend ``serve --backend auto`` would pick, and why.
        report: the JSON document (``backends.json``).
        json: the file written, or ``None``.
    """

    rows: list[measuring.BackendRow]
    choice: measuring.Choice
    report: dict[str, Any]
    json: Path | None = None


def compare_backends(
    checkpoint: str | Path,
    *,
    onnx: str | Path | None = None,
    int8: str | Path | None = None,
    data: str | Path | None = None,
    split: str = "val",
    data_options: Mapping[str, Any] | None = None,
    images: int | None = None,
    rounds: int = DEFAULT_ROUNDS,
    threads: int | None = None,
    max_miou_drop: float = measuring.DEFAULT_MAX_DROP,
    protocol: ProtocolArg = None,
    device: str | None = None,
    out: str | Path | None = None,
    save: bool = True,
    overwrite: bool = False,
) -> BackendComparison:
    """Run ``checkpoint`` on every backend, on the same images, in one process: PyTorch
    float32 (the reference), PyTorch bf16 autocast + channels-last (emulated, and marked, on a
    CPU without bf16 units), and onnxruntime on ``onnx`` and ``int8`` when given
    (:mod:`sanet.exporting.backends` says how each is measured).

    Args:
        checkpoint: a run directory, a ``save_pretrained`` folder or a ``.pt`` checkpoint.
        onnx, int8: ``.onnx`` files from ``sanet export`` and ``sanet export --int8``.
        data: labelled images ``"KIND:ROOT"`` whose ``split`` gates every backend (at least
            20); or a folder, files or a glob of unlabelled images (no gate: INT8 cannot be
            chosen); ``None``: speed on noise images at the protocol's window, no gate.
        images: how many (default 24 of a dataset, every given file otherwise); rounds: timed
            rounds, each predicting one image on every backend in turn.
        threads: CPU threads of PyTorch and onnxruntime alike (default: PyTorch's current).
        max_miou_drop: the gate: the largest mIoU drop against PyTorch float32 accepted.
        protocol: ``None``: the run's own, one window per forward as ``sanet serve`` runs it.
        out: the record (default: ``backends.json`` next to the model, which ``sanet serve
            --backend auto`` reads); refused when it exists, unless ``overwrite``; ``save=False``
            writes nothing.
    """
    _check_numbers(images, rounds, threads, max_miou_drop)
    files = check_files(onnx, int8)
    record = _record(checkpoint, out, save, overwrite)
    chosen = _serving_protocol(checkpoint, protocol, device := device_of(device))
    pairs, where, dataset = gate_pairs(data, split, data_options, images, chosen, checkpoint)
    candidates, threads = _candidates(checkpoint, device, chosen, files, threads)
    if dataset is not None:
        check_classes(candidates[0].predictor.model, dataset, checkpoint)
    k, labelled = int(candidates[0].predictor.model.num_classes), where is not None
    rows = measuring.measure(candidates, pairs, k, labelled, rounds, max_miou_drop)
    choice = measuring.choose(rows, where)
    settings = {"threads": threads, "rounds": rounds, "images": len(pairs)}
    settings["gate"] = {"data": where, "max_miou_drop": max_miou_drop}
    report = _report(checkpoint, device, files, chosen, settings, rows, choice)
    if record is not None:
        atomic_write_text(record, json.dumps(report, indent=1) + "\n")
    return BackendComparison(rows, choice, report, record)


def _report(
    checkpoint: str | Path,
    device: str,
    files: Mapping[str, Path],
    protocol: Any,
    settings: dict[str, Any],
    rows: list[measuring.BackendRow],
    choice: measuring.Choice,
) -> dict[str, Any]:
    """The record (``backends.json``): what was compared where, each row, the choice."""
    from sanet.experiments.measure import environment

    return {
        "checkpoint": str(Path(checkpoint).resolve()),
        "measured": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "environment": environment(device) | {"int8_path": int8_path(files)},
        **settings,
        "protocol": protocol.to_dict(),
        "rows": [r.to_dict() for r in rows],
        "choice": choice.to_dict(),
    }


def _record(
    checkpoint: str | Path, out: str | Path | None, save: bool, overwrite: bool
) -> Path | None:
    """Where the record goes (``None``: not saved), refused before any model loads; the
    checkpoint must be the PyTorch model."""
    if Path(checkpoint).suffix.lower() == ".onnx" or not Path(checkpoint).exists():
        raise UsageError(_not_torch(checkpoint))
    if not save:
        return None
    path = Path(out) if out else record_path(checkpoint)
    return ensure_new_file(path, arg("out"), overwrite, RECORD)


def _serving_protocol(checkpoint: str | Path, protocol: ProtocolArg, device: str) -> Any:
    """The protocol as ``sanet serve`` runs it: one window per forward on a CPU."""
    chosen = protocol_of(checkpoint, protocol, device)
    if chosen.window_batch > 1 and device == "cpu":
        chosen = dataclasses.replace(chosen, window_batch=1)
    return chosen


def _candidates(
    checkpoint: str | Path,
    device: str,
    protocol: Any,
    files: Mapping[str, Path],
    threads: int | None,
) -> tuple[list[measuring.Candidate], int]:
    """Every backend loaded, with ``threads`` CPU threads for both runtimes (default: torch's
    current count); an export of another model (another K) is refused."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    candidates = measuring.torch_candidates(checkpoint, device, protocol)
    k = int(candidates[0].predictor.model.num_classes)
    for name, path in files.items():
        candidate = measuring.onnx_candidate(name, path, protocol, threads, device)
        if candidate.predictor.model.num_classes != k:
            raise UsageError(
                f"{path} predicts {candidate.predictor.model.num_classes} classes, the "
                f"checkpoint {k}: export it from this checkpoint (sanet export)."
            )
        candidates.append(candidate)
    return candidates, threads


def record_path(checkpoint: str | Path) -> Path:
    """``backends.json`` next to the model: in its run directory, its ``save_pretrained``
    folder, or beside a ``.pt`` file."""
    from sanet.rundir import RunDir

    path = Path(checkpoint)
    run = RunDir.containing(path)
    if run is not None:
        return Path(run.root) / RECORD
    return (path if path.is_dir() else path.parent) / RECORD


def _not_torch(checkpoint: str | Path) -> str:
    return (
        f"{arg('checkpoint')} {str(checkpoint)!r} must be the PyTorch model (a run directory, a "
        f"save_pretrained folder or a .pt file): it is the reference every backend is compared "
        f"with. Give exported files as {arg('onnx')} and {arg('int8')}."
    )


def _check_numbers(images: int | None, rounds: int, threads: int | None, max_drop: float) -> None:
    for name, value in (("images", images), ("rounds", rounds), ("threads", threads)):
        if value is not None and value < 1:
            raise UsageError(f"{arg(name)} must be at least 1, got {value}.")
    if not -1.0 <= max_drop <= 1.0:  # `not` also refuses NaN
        raise UsageError(
            f"{arg('max_miou_drop')} must be an mIoU difference between -1 and 1, got {max_drop} "
            f"(e.g. {arg('max_miou_drop', 0.01)}: one point)."
        )


def check_files(onnx: str | Path | None, int8: str | Path | None) -> dict[str, Path]:
    """The exported files by backend name, each an existing ``.onnx`` file of the right kind:
    ``int8`` an INT8 export (its metadata records ``quantization``), ``onnx`` not one."""
    from sanet.inference.onnx_backend import read_onnx_metadata

    files = {}
    for name, path, key in (("onnxruntime-fp32", onnx, "onnx"), ("onnxruntime-int8", int8, "int8")):
        if path is None:
            continue
        path = Path(path)
        if path.suffix.lower() != ".onnx" or not path.is_file():
            what = "does not exist" if not path.exists() else "is not an .onnx file"
            raise NotFoundError(
                f"{arg(key)} {str(path)!r} {what}. Expected the file of `sanet export"
                f"{' --int8' if key == 'int8' else ''}`; write it first, or leave "
                f"{arg(key)} out to compare without it."
            )
        quantized = "quantization" in read_onnx_metadata(path)
        if quantized != (key == "int8"):
            raise UsageError(
                f"{arg(key)} {str(path)!r} is {'an INT8' if quantized else 'not an INT8'} "
                f"export; give it as {arg('int8' if quantized else 'onnx')}."
            )
        files[name] = path.resolve()  # the record names them wherever serve runs from
    return files


def gate_pairs(
    data: str | Path | None,
    split: str,
    options: Mapping[str, Any] | None,
    images: int | None,
    protocol: Any,
    checkpoint: str | Path,
) -> tuple[list[tuple[Any, Any]], str | None, Any]:
    """The ``(image, mask)`` pairs the backends run on, what labels them (``None``:
    unlabelled: masks all ignore, nothing gated) and their dataset (``None`` for files)."""
    from sanet.api.common import open_dataset, run_data_options

    if data is None:  # speed only: noise at the working window
        side = protocol.crop_size
        rng = np.random.default_rng(0)
        noise = [rng.integers(0, 256, (side, side, 3), np.uint8) for _ in range(images or 4)]
        return measuring.unlabelled(noise), None, None
    if _is_images(data):
        files = expand_inputs(str(data))[: images or None]
        return measuring.unlabelled(files), None, None
    if options is None:  # the run's own dataset at its size and seed (as the INT8 export)
        options = run_data_options(str(data), checkpoint)
    dataset = open_dataset(str(data), split, options)
    n = min(images or DEFAULT_IMAGES, len(dataset))
    if n < MIN_GATE_IMAGES:
        raise UsageError(
            f"The gate's data {data} split {split!r} gives {n} labelled image"
            f"{'s' * (n != 1)}; the gate needs at least {MIN_GATE_IMAGES} to say how uncertain "
            f"a backend's mIoU drop is. Give more labelled images ({arg('images')}, another "
            f"{arg('split')}), or unlabelled images (a folder) to compare without INT8."
        )
    spread = sorted({round(i * (len(dataset) - 1) / max(n - 1, 1)) for i in range(n)})
    pairs = [dataset[i] for i in spread]  # spread over the split, as the INT8 export's gate
    return pairs, f"{data} {split} ({n} images)", dataset


def _is_images(data: str | Path) -> bool:
    """A folder, a file or a glob of images (not ``KIND:ROOT``)."""
    text = str(data)
    return isinstance(data, Path) or Path(text).exists() or ":" not in text


def int8_path(files: Mapping[str, Path]) -> dict[str, Any]:
    """The int8 kernels onnxruntime can use here (:func:`~sanet.exporting.backends.
    int8_kernels`) and the INT8 file compared."""
    from sanet.devices import cpu_features

    kernels = measuring.int8_kernels(cpu_features())
    return {"int8_kernels": kernels, "int8_file": str(files.get("onnxruntime-int8") or "")}


def read_record(checkpoint: str | Path) -> dict[str, Any] | None:
    """The ``backends.json`` next to the model (``None`` when there is none)."""
    path = record_path(checkpoint)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UsageError(
            f"{str(path)!r} cannot be read as a backend comparison ({err}); run `sanet backends "
            f"... {arg('overwrite', True)}` again, or delete it."
        ) from None


__all__ = ["BackendComparison", "compare_backends", "read_record", "record_path"]
