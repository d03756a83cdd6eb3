"""INT8 export (``sanet.export(..., int8=True)``): onnxruntime's static quantization, checked on the user's own data.

INT8 conversions lose accuracy silently (the peers' trackers: "much worse masks"), and the same
QDQ file can lose points on one CPU and not on another. So the int8 file is written only after
the fp32 and int8 graphs were evaluated on images the calibration did not see, with sanet's own
protocol (:func:`~sanet.inference.evaluate_pairs` on :class:`~sanet.inference.OnnxModel`), and the mIoU
drop is within the user's bound; the file then records what was measured where.

How (:func:`quantize_graph`): ``onnxruntime.quantization.quantize_static`` in QDQ format,
per-channel int8 weights, MinMax calibration. The activation type and ``reduce_range`` follow
the CPU (:func:`choose_scheme`, onnxruntime's advice): x86 with VNNI (AVX512-VNNI, AVX-VNNI or
AMX) runs uint8 × int8 without saturation; without VNNI, AVX2/AVX-512's ``VPMADDUBSW`` can
saturate the sum of two uint8 × int8 products, and 7-bit weights (``reduce_range``) avoid that;
ARM uses int8 activations (S8S8, onnxruntime's default for QDQ).

Calibration inputs are what the network sees at inference (:func:`calibration_inputs`): each
image normalised and cut into the export protocol's windows by the protocol code itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sanet.devices import cpu_features
from sanet.errors import Int8Refused, UsageError, arg
from sanet.exporting.export import (
    ExportCheckError,
    ParityTolerance,
    check_parity,
    to_onnx_proto,
    write_onnx,
)
from sanet.exporting.int8_gate import gate_warning, image_matrices, measured_drop
from sanet.exporting.outputs import OUTPUTS, add_outputs, check_outputs
from sanet.inference.onnx_backend import INPUT_NAME
from sanet.inference.predictor import image_to_tensor, normalize
from sanet.inference.protocol import EvalProtocol, predict_mask

logger = logging.getLogger(__name__)

DEFAULT_MAX_DROP = 0.01
SPEED_ROUNDS = 7  # interleaved fp32/int8 calls; the median ratio is recorded


@dataclass(frozen=True)
class QuantScheme:
    """How weights and activations are quantized (:func:`choose_scheme`).

    Attributes:
        activations: ``"uint8"`` or ``"int8"``.
        weights: ``"int8"`` (symmetric, per output channel).
        reduce_range: 7-bit weights, for x86 CPUs without VNNI.
        reason: why, in one sentence (recorded in the file).
    """

    activations: str
    weights: str = "int8"
    per_channel: bool = True
    reduce_range: bool = False
    reason: str = ""


def choose_scheme(cpu: Mapping[str, Any]) -> QuantScheme:
    """The scheme for a CPU described by :func:`sanet.devices.cpu_features`."""
    arch = str(cpu.get("arch", "")).lower()
    if arch not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return QuantScheme("int8", reason=f"{arch or 'non-x86'}: S8S8, onnxruntime's QDQ default")
    if cpu.get("vnni"):
        return QuantScheme("uint8", reason="x86 with VNNI: uint8 × int8 without saturation")
    return QuantScheme(
        "uint8",
        reduce_range=True,
        reason="x86 without VNNI (or flags unknown): 7-bit weights keep VPMADDUBSW from saturating",
    )


class _WindowRecorder(nn.Module):
    """Stands in for the network inside the protocol: keeps every batch of windows it is given
    and answers zero logits (the protocol's averaging does not matter here)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.seen.extend(x.detach().cpu().float().split(1))
        return {"out": x.new_zeros(x.shape[0], self.num_classes, *x.shape[-2:])}


def calibration_inputs(
    images: Iterable[Any], protocol: EvalProtocol, num_classes: int
) -> list[np.ndarray]:
    """The ``(1, 3, h, w)`` float32 windows the network receives when ``protocol`` predicts
    ``images`` (anything :func:`~sanet.inference.image_to_tensor` reads): normalised, scaled,
    padded and cut by the protocol code itself, flips included."""
    recorder = _WindowRecorder(num_classes)
    for image in images:
        predict_mask(recorder, normalize(image_to_tensor(image)), protocol)
    return [w.numpy() for w in recorder.seen]


class _Reader:
    """onnxruntime's ``CalibrationDataReader`` protocol over a list of inputs."""

    def __init__(self, inputs: Sequence[np.ndarray]) -> None:
        self._it = iter(inputs)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        return None if x is None else {INPUT_NAME: x}


def quantize_graph(fp32: bytes, inputs: Sequence[np.ndarray], scheme: QuantScheme) -> bytes:
    """The QDQ int8 graph of ``fp32`` (a serialized ONNX model), calibrated on ``inputs``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not inputs:
        raise UsageError("Static quantization needs at least one calibration image.")
    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    with tempfile.TemporaryDirectory(prefix="sanet-int8-") as tmp, _no_preprocess_hint():
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(fp32)
        quantize_static(
            str(src),
            str(dst),
            _Reader(inputs),  # type: ignore[arg-type]  (duck-typed by onnxruntime)
            quant_format=QuantFormat.QDQ,
            per_channel=scheme.per_channel,
            reduce_range=scheme.reduce_range,
            activation_type=types[scheme.activations],
            weight_type=types[scheme.weights],
            calibrate_method=CalibrationMethod.MinMax,
        )
        return dst.read_bytes()


@contextlib.contextmanager
def _no_preprocess_hint() -> Iterator[None]:
    """onnxruntime logs a hint to pre-process on the root logger: the exporter already folded
    batch norms and constants, so the hint is noise in ``sanet export``'s output."""

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "pre-process" not in record.getMessage()

    drop = _Drop()
    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def gate(fp32: float, int8: float, max_drop: float, where: str) -> float:
    """The mIoU drop ``fp32 − int8``; :class:`Int8Refused` in one line when above ``max_drop``."""
    drop = fp32 - int8
    if not drop <= max_drop:  # `not ≤` also refuses NaN
        raise Int8Refused(
            f"int8 mIoU {int8:.4f} vs fp32 {fp32:.4f} on {where}: a drop of {drop:.4f} exceeds "
            f"{arg('max_miou_drop', max_drop)}; nothing written. Calibrate on more or more "
            f"typical images ({arg('calib_images')}, {arg('calib_data')}), or ship the fp32 "
            "export."
        )
    return drop


def time_speedup(
    fp32: bytes, int8: bytes, size: tuple[int, int], threads: int, rounds: int = SPEED_ROUNDS
) -> dict[str, Any]:
    """Median seconds of one ``(1, 3, *size)`` forward of each graph, calls interleaved (a load
    change on a shared machine reaches both), and their ratio."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    sessions = [
        ort.InferenceSession(g, options, providers=["CPUExecutionProvider"]) for g in (fp32, int8)
    ]
    x = {INPUT_NAME: np.random.default_rng(0).standard_normal((1, 3, *size)).astype(np.float32)}
    for s in sessions:  # the first call builds kernels
        s.run(None, x)
    seconds: list[list[float]] = [[], []]
    for _ in range(rounds):
        for s, out in zip(sessions, seconds, strict=True):
            start = time.perf_counter()
            s.run(None, x)
            out.append(time.perf_counter() - start)
    fp32_s, int8_s = (statistics.median(t) for t in seconds)
    return {
        "ratio": round(fp32_s / int8_s, 3),
        "fp32_ms": round(fp32_s * 1e3, 2),
        "int8_ms": round(int8_s * 1e3, 2),
        "size": list(size),
        "threads": threads,
        "rounds": rounds,
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


@dataclass(frozen=True)
class Int8Data:
    """The images of an int8 export and where they come from (recorded in the file).

    Attributes:
        calibration: images (anything ``image_to_tensor`` reads) to calibrate on.
        evaluation: ``(image, mask)`` pairs the gate evaluates both graphs on.
        calibration_source, evaluation_source: e.g. ``{"data": "synthetic:", "split":
            "train"}``.
        max_drop: the largest mIoU drop accepted (``max_miou_drop``).
    """

    calibration: Sequence[Any]
    evaluation: Sequence[tuple[Any, Any]]
    calibration_source: Mapping[str, Any]
    evaluation_source: Mapping[str, Any]
    max_drop: float = DEFAULT_MAX_DROP


def quantize_checked(
    fp32: bytes, data: Int8Data, protocol: EvalProtocol, num_classes: int
) -> tuple[bytes, dict[str, Any]]:
    """Quantize the fp32 graph on ``data.calibration`` and gate it on ``data.evaluation``.

    Returns:
        ``(int8 graph, record)``; the record is the file's ``quantization`` metadata: method,
        scheme, calibration, ``miou`` (fp32, int8, drop, where), ``speedup``, ``cpu``,
        ``onnxruntime``.

    Raises:
        Int8Refused: the mIoU drop exceeds ``data.max_drop``.
    """
    import onnxruntime as ort

    cpu = cpu_features()
    scheme = choose_scheme(cpu)
    inputs = calibration_inputs(data.calibration, protocol, num_classes)
    logger.info("int8: calibrating on %d windows of %d images", len(inputs), len(data.calibration))
    int8 = quantize_graph(fp32, inputs, scheme)
    pairs = list(data.evaluation)
    with tempfile.TemporaryDirectory(prefix="sanet-int8-") as tmp:
        paths = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        for path, graph in zip(paths, (fp32, int8), strict=True):
            path.write_bytes(graph)
        logger.info("int8: evaluating fp32 and int8 on %d images", len(pairs))
        measured = measured_drop(*(image_matrices(p, pairs, num_classes, protocol) for p in paths))
    where = _describe(data.evaluation_source, len(pairs))
    drop = gate(measured["fp32"], measured["int8"], data.max_drop, where)
    warning = gate_warning(measured, len(pairs), data.max_drop)
    if warning is not None:
        logger.warning("int8: %s", warning)
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    record = {
        "method": "onnxruntime.quantization.quantize_static",
        "format": "QDQ",
        **asdict(scheme),
        "calibrate_method": "MinMax",
        "calibration": {**data.calibration_source, "images": len(data.calibration)},
        "calibration_windows": len(inputs),
        "miou": {
            "fp32": measured["fp32"],
            "int8": measured["int8"],
            "drop": drop,
            "drop_se": measured["drop_se"],
            "max_drop": data.max_drop,
            "warning": warning,
            **data.evaluation_source,
            "images": len(pairs),
            "protocol": protocol.to_dict(),
        },
        "speedup": time_speedup(fp32, int8, (protocol.crop_size,) * 2, int(threads or 1)),
        "cpu": cpu,
        "onnxruntime": ort.__version__,
    }
    return int8, record


def export_int8(
    model: nn.Module,
    out: str | Path,
    metadata: Mapping[str, Any],
    data: Int8Data,
    protocol: EvalProtocol,
    example_size: tuple[int, int],
    opset: int,
    parity_sizes: Sequence[tuple[int, int]],
    check: bool = True,
    outputs: Sequence[str] = OUTPUTS[:1],
    temperature: float | None = None,
) -> dict[str, Any]:
    """Export ``model`` to fp32 ONNX (checked against PyTorch), quantize and gate it
    (:func:`quantize_checked`), and write the int8 file at ``out`` only when the gate passed;
    ``outputs`` are added last and checked against the int8 graph's own logits.

    Returns:
        the metadata written, with ``quantization`` and ``parity`` (the fp32 graph against
        PyTorch; the int8 graph's distance to PyTorch is ``quantization["vs_pytorch"]``).

    Raises:
        Int8Refused: the drop is too large (nothing written).
        ExportCheckError: onnxruntime disagrees with PyTorch on the fp32 graph.
    """
    import onnx
    import onnxruntime as ort

    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise UsageError(
            f"{arg('out')} must name an .onnx file, got {str(out)!r}; e.g. "
            f"{arg('out', 'model.onnx')}"
        )
    model = model.eval()
    proto = to_onnx_proto(model, example_size, opset)
    # the metadata rides along so that the gate's OnnxModel reads a sanet file (no warning)
    onnx.helper.set_model_props(proto, {k: json.dumps(v) for k, v in metadata.items()})
    fp32 = proto.SerializeToString()
    parity = check_parity(model, fp32, parity_sizes) if check else None
    int8, record = quantize_checked(fp32, data, protocol, int(model.num_classes))  # type: ignore[arg-type]
    if check:  # recorded, not enforced: the mIoU gate is the int8 file's check
        anything = ParityTolerance(atol=float("inf"), argmax=0.0)
        record["vs_pytorch"] = check_parity(model, int8, parity_sizes, anything)["sizes"]
    final = add_outputs(onnx.load_from_string(int8), outputs, temperature)
    meta = {**metadata, "outputs": list(outputs), "quantization": record, "parity": parity}
    if parity is not None and list(outputs) != OUTPUTS[:1]:
        session = ort.InferenceSession(int8, providers=["CPUExecutionProvider"])

        def int8_logits(x: np.ndarray) -> np.ndarray:
            return session.run(None, {INPUT_NAME: x})[0]

        rows = check_outputs(
            final.SerializeToString(), int8_logits, parity_sizes, outputs, temperature
        )
        meta["parity"] = {**parity, "outputs": rows, "outputs_reference": "the int8 logits"}
    write_onnx(final, meta, out)
    return meta


def _describe(source: Mapping[str, Any], images: int) -> str:
    data, split = str(source.get("data", "?")).rstrip(":"), source.get("split", "?")
    return f"{data} {split} ({images} images)"  # "synthetic val (100 images)"


__all__ = [
    "DEFAULT_MAX_DROP",
    "ExportCheckError",
    "Int8Data",
    "Int8Refused",
    "QuantScheme",
    "calibration_inputs",
    "choose_scheme",
    "export_int8",
    "gate",
    "quantize_checked",
    "quantize_graph",
    "time_speedup",
]
