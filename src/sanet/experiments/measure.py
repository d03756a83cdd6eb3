"""Measuring tools of ``sanet bench`` that know nothing of segmentation: where a figure was
measured, FLOPs without arithmetic, first-call and warm-up timing, interleaved timed rounds and
the profiler's top-kernel table."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from sanet.devices import cpu_features


def environment(device: str) -> dict[str, Any]:
    """Where the figures were measured: versions, device name, threads, the CPU's int8 flags
    (VNNI, AMX: what an int8 file's speed depends on), onnxruntime's version when installed,
    and the machine's load (1-minute load average; ratios survive a busy machine, absolute
    rates do not)."""
    import os

    import timm
    import torchvision

    dev = torch.device(device)
    cpu = cpu_features()
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu["name"]
    return {
        "device": str(dev),
        "device_name": name,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "cpu_int8_flags": {k: cpu[k] for k in ("avx512_vnni", "avx_vnni", "amx")},
        "onnxruntime": _onnxruntime_version(),
    }


def _onnxruntime_version() -> str | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return str(onnxruntime.__version__)


def count_flops(model: nn.Module, images: torch.Tensor, train: bool) -> int:
    """FLOPs (a multiply-add = 2) of a forward, or forward + backward, of ``images``.

    The model runs with ``meta`` stand-ins for its parameters and buffers: shapes only, no
    arithmetic and no copy of the weights; the model itself is left as it was.
    """
    from torch.func import functional_call

    state = {
        name: torch.empty_like(t, device="meta", requires_grad=t.requires_grad)
        for name, t in [*model.named_parameters(), *model.named_buffers()]
    }
    x = torch.empty(images.shape, device="meta")
    was_training = model.training
    model.train(train)
    try:
        with FlopCounterMode(display=False) as counter, torch.set_grad_enabled(train):
            out = functional_call(model, state, (x,))
            if train:
                sum(v.float().sum() for v in out.values()).backward()
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def warm_up(
    make_call: Callable[[], Callable[[], Any]], device: torch.device, warmup: int, resident: int
) -> tuple[Callable[[], Any], dict]:
    """Make a peer's call, run it once (timed: ``first_step_s``) and ``warmup`` more times.

    ``peak_memory_gb`` (CUDA) is what this peer alone would have needed: the peak during these
    calls above what was allocated before its inputs and optimiser existed (other peers'
    models, this one's included), plus its own ``resident`` model bytes.
    """
    peak = None
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    call = make_call()
    _sync(device)
    start = time.perf_counter()
    call()
    _sync(device)
    first = time.perf_counter() - start
    for _ in range(warmup):
        call()
    _sync(device)
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(device) - base + resident) / 1e9
    return call, {"first_step_s": first, "peak_memory_gb": peak}


def interleaved(calls: list[Callable[[], Any]], device: torch.device, steps: int) -> list[list]:
    """Seconds of each call over ``steps`` rounds, every round calling each peer once in turn,
    so that a change in the machine's load during the run reaches every peer alike."""
    seconds: list[list[float]] = [[] for _ in calls]
    for _ in range(steps):
        for call, out in zip(calls, seconds, strict=True):
            _sync(device)
            start = time.perf_counter()
            call()
            _sync(device)
            out.append(time.perf_counter() - start)
    return seconds


def profile_calls(fn: Callable[[], Any], device: torch.device, calls: int = 2) -> str:
    """``torch.profiler``'s table of the top kernels (by self time on ``device``) over
    ``calls`` calls of ``fn``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        for _ in range(calls):
            fn()
        _sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=25)


#: The side of the square matrix product that measures the roof: large enough that a CPU or a
#: GPU runs its GEMM kernel at full speed, small enough to take a second on 2 CPU cores.
ROOF_SIZE = 2048
_ROOFS: dict[tuple[str, str, int, int], float] = {}


def gemm_roof(
    device: str | torch.device, dtype: torch.dtype, size: int = ROOF_SIZE, calls: int = 3
) -> float:
    """The machine's roof in TFLOP/s for ``dtype``: ``torch.matmul`` of two ``size × size``
    matrices (``2·size³`` FLOPs), the fastest of ``calls`` timed calls after one untimed, with
    torch's current thread count. Measured once per process for each device, dtype, size and
    thread count (then cached): what a model's achieved FLOP/s is a fraction of."""
    dev = torch.device(device)
    key = (str(dev), str(dtype), size, torch.get_num_threads())
    if key not in _ROOFS:
        gen = torch.Generator().manual_seed(0)
        a, b = (torch.randn(size, size, generator=gen).to(dev, dtype) for _ in range(2))
        torch.matmul(a, b)
        best = float("inf")
        for _ in range(calls):
            _sync(dev)
            start = time.perf_counter()
            torch.matmul(a, b)
            _sync(dev)
            best = min(best, time.perf_counter() - start)
        _ROOFS[key] = 2 * size**3 / best / 1e12
    return _ROOFS[key]


def add_roof(rows: list[dict[str, Any]], device: str, dtype: torch.dtype) -> dict[str, Any]:
    """Give each row ``roof_tflops`` (:func:`gemm_roof` of ``dtype`` on ``device``) and
    ``roof_fraction`` (its ``tflops`` over that; ``None`` where no FLOPs were counted); returns
    the roof's record."""
    roof = gemm_roof(device, dtype)
    for row in rows:
        tflops = row.get("tflops")
        row["roof_tflops"], row["roof_fraction"] = roof, None if tflops is None else tflops / roof
    gemm = f"torch.matmul {ROOF_SIZE}³, fastest of 3"
    return {"dtype": str(dtype).removeprefix("torch."), "tflops": roof, "gemm": gemm}
