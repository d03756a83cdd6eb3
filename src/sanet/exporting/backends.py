"""One served model on every inference backend, side by side (issue 35, part 5): speed, agreement
with PyTorch float32, and the INT8 gate's statistic for each; and the choice of ``sanet serve
--backend auto`` (docs/deploy.md, "Choosing the backend").

The backends (:data:`BACKENDS`) are the same model run four ways: PyTorch float32 (the
reference), PyTorch bf16 autocast + channels-last, onnxruntime on the fp32 export and on the
INT8 export. Each is a :class:`~sanet.inference.Predictor` under the same protocol, so the pre-
and post-processing are the same code and only the network call differs.

- Accuracy: every backend predicts every image through sanet's evaluation loop
  (:func:`~sanet.inference.evaluate_pairs`); its masks are compared with float32's (pixel
  agreement) and, on labelled images, its confusion matrices with float32's by the INT8 gate's
  statistic (:func:`~sanet.exporting.int8_gate.measured_drop`: the mIoU drop and its jackknife
  standard error). One gate decides for every backend: drop ≤ ``max_drop``.
- Speed: ``rounds`` rounds; each round every backend predicts the same image as a server does
  (``Predictor.predict``), in an order that rotates from round to round, so a change in the
  machine's load reaches every backend alike. Latency: the median call, in wall and process
  CPU time (on shared cores the CPU time is the work's, the wall time adds the waiting).
- The choice (:func:`choose`): the fastest backend that passed the gate; without labelled
  images no backend is gated, so INT8 (whose loss only labels can measure) is never chosen.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sanet.conventions import IGNORE_INDEX
from sanet.devices import cpu_bf16_units
from sanet.exporting.int8_gate import MIN_GATE_IMAGES, gate_warning, measured_drop
from sanet.inference.predictor import Predictor, evaluate_pairs
from sanet.inference.protocol import EvalProtocol

logger = logging.getLogger(__name__)

REFERENCE = "torch-fp32"
#: The backends in the order they are reported: name → (runtime, what it runs).
BACKENDS = {
    REFERENCE: ("torch", "PyTorch float32"),
    "torch-bf16": ("torch", "PyTorch bf16 autocast + channels-last"),
    "onnxruntime-fp32": ("onnxruntime", "onnxruntime, the fp32 export"),
    "onnxruntime-int8": ("onnxruntime", "onnxruntime, the INT8 export (QDQ)"),
}
DEFAULT_MAX_DROP = 0.01  # the INT8 export's default gate (exporting/quantize.py)


@dataclass
class Candidate:
    """One backend ready to run: its name (:data:`BACKENDS`), the predictor, the file it runs,
    and a note (``"emulated bf16"`` on a CPU without bf16 units)."""

    name: str
    predictor: Predictor
    source: str
    note: str | None = None


@dataclass
class BackendRow:
    """What one backend measured (one row of the table; :meth:`to_dict` is its JSON)."""

    name: str
    source: str
    note: str | None = None
    latency_ms: float | None = None
    cpu_ms: float | None = None
    images_per_s: float | None = None
    speedup: float | None = None
    speedup_cpu: float | None = None
    agreement: float | None = None
    miou: float | None = None
    drop: float | None = None
    drop_se: float | None = None
    passed: bool | None = None
    why: str = ""
    seconds: list[float] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("seconds")
        out["runtime"], out["runs"] = BACKENDS[self.name]
        return out


def torch_candidates(
    checkpoint: str | Path, device: str, protocol: EvalProtocol
) -> list[Candidate]:
    """PyTorch float32 and bf16 autocast + channels-last under ``protocol`` (its precision
    replaced). bf16 on a CPU without bf16 units is emulated (slow): measured, and marked."""
    fp32 = dataclasses.replace(protocol, amp="none", channels_last=False)
    bf16 = dataclasses.replace(protocol, amp="bf16", channels_last=True)
    note = None
    if torch.device(device).type == "cpu" and cpu_bf16_units() is None:
        note = "emulated bf16: this CPU has no bf16 units (AMX, AVX512_BF16)"
    source = str(checkpoint)
    return [
        Candidate(REFERENCE, Predictor(checkpoint, device, fp32), source),
        Candidate("torch-bf16", Predictor(checkpoint, device, bf16), source, note),
    ]


def onnx_candidate(
    name: str,
    path: str | Path,
    protocol: EvalProtocol,
    threads: int | None,
    device: str = "cpu",
) -> Candidate:
    """An exported file on onnxruntime (``device``'s execution provider, as ``sanet serve``
    runs it) with ``threads`` intra-op threads, under ``protocol`` (float32 glue: the file runs
    in its own precision)."""
    from sanet.inference.onnx_backend import OnnxModel, providers_for

    model = OnnxModel(path, providers=providers_for(device), threads=threads)
    plain = dataclasses.replace(protocol, amp="none", channels_last=False)
    predictor = Predictor.from_model(model, "cpu", plain, model.metadata)
    return Candidate(name, predictor, str(path))


def accuracy(
    candidates: Sequence[Candidate],
    pairs: Sequence[tuple[Any, Any]],
    num_classes: int,
    labelled: bool,
    max_drop: float,
) -> list[BackendRow]:
    """Agreement with the reference (the first candidate) and, with ``labelled`` pairs, the
    gate's statistic and verdict for every backend."""
    per: list[tuple[list[np.ndarray], list[np.ndarray]]] = []
    for c in candidates:
        masks: list[np.ndarray] = []
        matrices = []
        p = c.predictor
        keep = lambda _i, mask, into=masks: into.append(mask)  # noqa: E731 (on_image(i, mask))
        for pair in pairs:  # one matrix per image: the gate's jackknife needs them
            cm = evaluate_pairs(p.model, [pair], num_classes, p.protocol, p.device, keep)
            matrices.append(cm.matrix_cpu().numpy())
        per.append((masks, matrices))
    ref_masks, ref_matrices = per[0]
    total = sum(m.size for m in ref_masks)
    rows = []
    for c, (masks, matrices) in zip(candidates, per, strict=True):
        same = sum(int((a == b).sum()) for a, b in zip(masks, ref_masks, strict=True))
        row = BackendRow(c.name, c.source, c.note, agreement=same / max(total, 1))
        if labelled:
            measured = measured_drop(ref_matrices, matrices)  # "int8": the candidate's mIoU
            row.miou, row.drop = measured["int8"], measured["drop"]
            row.drop_se = measured["drop_se"]
            row.passed = bool(row.drop <= max_drop)  # `≤` is False for NaN: refused
            row.why = _verdict(row, measured, len(pairs), max_drop)
        rows.append(row)
    return rows


def _verdict(row: BackendRow, measured: Mapping[str, Any], n: int, max_drop: float) -> str:
    if row.name == REFERENCE:
        return "the reference"
    se = f" ± {row.drop_se:.4f}" if row.drop_se is not None else ""
    words = f"mIoU drop {row.drop:.4f}{se} {'≤' if row.passed else '>'} {max_drop} on {n} images"
    warning = gate_warning(measured, n, max_drop) if row.passed else None
    return words + ("; drop + 2 SE exceeds the bound" if warning and n >= MIN_GATE_IMAGES else "")


def timings(
    candidates: Sequence[Candidate], images: Sequence[Any], rounds: int, warmup: int = 1
) -> list[tuple[list[float], list[float]]]:
    """Wall and process-CPU seconds of ``Predictor.predict`` per backend over ``rounds``
    rounds: round ``r`` predicts image ``r mod len(images)`` on every backend, starting at
    backend ``r mod len(candidates)`` (the order rotates: no backend always runs first after
    the others warmed the caches). ``warmup`` untimed calls each first."""
    for c in candidates:
        for _ in range(warmup):
            c.predictor.predict(images[0])
    wall: list[list[float]] = [[] for _ in candidates]
    cpu: list[list[float]] = [[] for _ in candidates]
    for r in range(rounds):
        image = images[r % len(images)]
        for k in range(len(candidates)):
            i = (r + k) % len(candidates)
            start, start_cpu = time.perf_counter(), time.process_time()
            candidates[i].predictor.predict(image)
            wall[i].append(time.perf_counter() - start)
            cpu[i].append(time.process_time() - start_cpu)
    return list(zip(wall, cpu, strict=True))


def add_speed(rows: Sequence[BackendRow], times: Sequence[tuple[list[float], list[float]]]) -> None:
    """Median latency (wall and CPU), images per second and the speed-up over the reference
    (the first row) in wall and in CPU time, in place."""
    for row, (wall, cpu) in zip(rows, times, strict=True):
        row.seconds = wall
        latency = statistics.median(wall)
        row.latency_ms, row.cpu_ms = latency * 1e3, statistics.median(cpu) * 1e3
        row.images_per_s = 1.0 / latency if latency > 0 else None
    ref, ref_cpu = rows[0].latency_ms, rows[0].cpu_ms
    for row in rows:
        row.speedup = ref / row.latency_ms if ref and row.latency_ms else None
        row.speedup_cpu = ref_cpu / row.cpu_ms if ref_cpu and row.cpu_ms else None


@dataclass(frozen=True)
class Choice:
    """The backend ``auto`` picks and why (the start-up line's words; ``/v1/model``)."""

    backend: str
    reason: str
    gated: bool
    candidates: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def choose(rows: Sequence[BackendRow | Mapping[str, Any]], where: str | None) -> Choice:
    """The fastest backend allowed: on labelled images (``where`` names them) one that passed
    the gate; without (``where`` ``None``) any but INT8, since nothing measured what it loses.
    Speed is the median wall latency (``latency_ms``); the reference is always allowed.

    Raises:
        ValueError: no row has a latency (nothing was timed).
    """
    rows = [r.to_dict() if isinstance(r, BackendRow) else dict(r) for r in rows]
    if where is None:
        allowed = [r for r in rows if r["name"] != "onnxruntime-int8"]
    else:
        allowed = [r for r in rows if r["name"] == REFERENCE or r.get("passed")]
    timed = [r for r in allowed if r.get("latency_ms")]
    if not timed:
        raise ValueError("no backend was timed")
    best = min(timed, key=lambda r: r["latency_ms"])
    ref = next((r for r in rows if r["name"] == REFERENCE), None)
    speed = f"{best['latency_ms']:.1f} ms/image"
    if ref and ref.get("latency_ms") and best["name"] != REFERENCE:
        speed += f", {ref['latency_ms'] / best['latency_ms']:.2f}× {REFERENCE}"
    words = [f"the fastest allowed ({speed})"]
    if where is None:
        words.append("INT8 not considered: no labelled images to gate it on")
    else:
        refused = [f"{r['name']} ({r['why']})" for r in rows if r not in allowed]
        words.append(f"gated on {where}" + (f"; refused {', '.join(refused)}" if refused else ""))
        if best["name"] != REFERENCE and best.get("why"):
            words.append(best["why"])  # its drop, and whether drop + 2 SE exceeds the bound
    names = tuple(r["name"] for r in timed)
    return Choice(best["name"], "; ".join(words), where is not None, names)


def int8_kernels(cpu: Mapping[str, Any]) -> str:
    """The u8s8 GEMM onnxruntime's MLAS runs on a CPU described by
    :func:`~sanet.devices.cpu_features`. MLAS picks it once by CPUID (``platform.cpp``): AMX
    tiles where the CPU has AMX-INT8 and the OS enabled the tile state (small products fall back
    to AVX512-VNNI), else AVX512-VNNI, else AVX-VNNI, else AVX2/AVX-512 without VNNI. It does
    not report the choice, so this reads the same flags; ``benchmarks/bench_int8_path.py``
    measures the rate that tells the paths apart."""
    if cpu.get("amx"):
        return "AMX-INT8 tiles (if the OS enabled them; else AVX512-VNNI)"
    if cpu.get("avx512_vnni"):
        return "AVX512-VNNI (VPDPBUSDS)"
    if cpu.get("avx_vnni"):
        return "AVX-VNNI (VPDPBUSDS, 256-bit)"
    if cpu.get("vnni") is None:
        return "unknown (the CPU flags cannot be read)"
    return "no VNNI: VPMADDUBSW + VPMADDWD (7-bit weights: reduce_range)"


def unlabelled(images: Sequence[Any]) -> list[tuple[Any, np.ndarray]]:
    """``(image, all-ignore mask)`` pairs: masks compared with float32's, no matrix counted."""
    from sanet.inference.predictor import image_to_tensor

    pairs = []
    for image in images:
        h, w = image_to_tensor(image).shape[-2:]
        pairs.append((image, np.full((h, w), IGNORE_INDEX, np.uint8)))
    return pairs


def measure(
    candidates: Sequence[Candidate],
    pairs: Sequence[tuple[Any, Any]],
    num_classes: int,
    labelled: bool,
    rounds: int,
    max_drop: float = DEFAULT_MAX_DROP,
) -> list[BackendRow]:
    """:func:`accuracy` on every pair, then :func:`timings` on their images."""
    logger.info("backends: %d backends predict %d images", len(candidates), len(pairs))
    rows = accuracy(candidates, pairs, num_classes, labelled, max_drop)
    logger.info("backends: %d timed rounds", rounds)
    add_speed(rows, timings(candidates, [image for image, _ in pairs], rounds))
    return rows


__all__ = [
    "BACKENDS",
    "REFERENCE",
    "BackendRow",
    "Candidate",
    "Choice",
    "accuracy",
    "add_speed",
    "choose",
    "int8_kernels",
    "measure",
    "onnx_candidate",
    "timings",
    "torch_candidates",
    "unlabelled",
]
