"""``sanet bench``: our models and torchvision's side by side, in one process, same settings.

Every peer gets the same input size, batch, precision, memory format and compile mode, and is
measured in the same process, so the ratios to the first peer hold even on a busy machine
(absolute rates do not). What is measured, per peer and mode:

- ``infer``: a forward pass in eval mode under ``torch.no_grad`` (and autocast with ``amp``).
- ``train``: the trainer's own step (:func:`~sanet.training.engine.train_step`): forward,
  :class:`~sanet.losses.SANetLoss` (plain cross-entropy for models that return only ``"out"``,
  as torchvision's do), backward and an SGD update.
- ``eval``: one image through the paper's multi-scale + flip protocol (six scales of base 520,
  mirrors, 480 sliding windows) or at single scale (:func:`~sanet.inference.predict_mask`).

The first call of each is timed apart (``first_step_s``: compilation, allocator and kernel
warm-up), then ``warmup`` more untimed calls, then ``steps`` timed ones, with a device sync
before every clock read. FLOPs come from ``torch.utils.flop_counter`` on a ``meta``-device copy
of the model (nothing runs, so counting is free): convolutions and matrix products of the forward
(``infer``) or forward + backward (``train``); the loss, the optimiser and the bilinear
resizing are not counted, so the figure is the network's and not the upsampling method's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from sanet.inference.protocol import EvalProtocol, predict_mask
from sanet.losses import SANetLoss
from sanet.models.registry import build_model, list_models
from sanet.models.resize import resize_bilinear
from sanet.training.engine import autocast, train_step

logger = logging.getLogger(__name__)

MODES = ("infer", "train", "eval")
TORCHVISION = ("fcn_resnet50", "fcn_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101")
#: The GPU figures of docs/benchmarks.md (add ``--compile`` and ``--compile
#: max-autotune-no-cudagraphs`` for the compiled rows).
GPU_COMMAND = (
    "sanet bench --device cuda --models tv:fcn_resnet101 fcn:resnet101s sanet:resnet101s "
    "--size 512 --batch 16 --classes 59 --amp bf16 --channels-last --mode both --json bench.json"
)


@dataclass(frozen=True)
class BenchSettings:
    """What every peer of one run shares.

    Attributes:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...
        size: square input side for ``infer`` and ``train``.
        batch: images per step.
        classes: K, the output channels of every peer.
        steps: timed calls per peer and mode.
        warmup: untimed calls after the first one.
        amp: ``"none"``, ``"bf16"`` or ``"fp16"`` (autocast; fp16 trains with a GradScaler).
        channels_last: model and input in ``torch.channels_last``.
        compile: a ``torch.compile`` mode (``"default"``, ``"max-autotune-no-cudagraphs"``...)
            or ``None`` for eager.
        image: ``(H, W)`` of the ``eval`` image (VOC's typical 375×500).
        protocol: ``eval``'s protocol: ``"ms-flip"`` (the paper's) or ``"single"`` (native size).
        window_batch: windows per forward in ``eval``.
    """

    device: str = "cpu"
    size: int = 256
    batch: int = 4
    classes: int = 59
    steps: int = 3
    warmup: int = 1
    amp: str = "none"
    channels_last: bool = False
    compile: str | None = None
    image: tuple[int, int] = (375, 500)
    protocol: str = "ms-flip"
    window_batch: int = 4

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "image": list(self.image)}


def environment(device: str) -> dict[str, Any]:
    """Where the figures were measured: versions, device name, threads and the machine's load
    (1-minute load average; ratios survive a busy machine, absolute rates do not)."""
    import os
    import platform

    import timm
    import torchvision

    dev = torch.device(device)
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
    else:
        name = _cpu_model() or platform.processor() or platform.machine()
    return {
        "device": str(dev),
        "device_name": name,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def parse_spec(spec: str) -> tuple[str, str]:
    """``"sanet:resnet50s"`` → ``("sanet", "resnet50s")``; a clear error for anything else."""
    kind, sep, name = spec.partition(":")
    if not sep or not name or (kind != "tv" and kind not in list_models()):
        raise ValueError(
            f"Model {spec!r} is not KIND:BACKBONE or tv:NAME; e.g. sanet:resnet50s, "
            f"fcn:resnet101s, tv:fcn_resnet101 (KIND is one of {list_models()} or tv)."
        )
    if kind == "tv" and name not in TORCHVISION:
        raise ValueError(f"tv:{name} is not one of the torchvision peers {list(TORCHVISION)}.")
    return kind, name


def build_peer(spec: str, num_classes: int) -> nn.Module:
    """``KIND:BACKBONE`` (one of our models on a timm backbone, e.g. ``sanet:resnet50s``) or
    ``tv:NAME`` (a torchvision segmentation model: output stride 8, no aux head), random weights.
    """
    kind, name = parse_spec(spec)
    if kind != "tv":
        return build_model(kind, backbone=name, num_classes=num_classes)
    import torchvision

    builder = getattr(torchvision.models.segmentation, name)
    return builder(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)


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


def time_calls(fn: Callable[[], Any], device: torch.device, warmup: int, steps: int) -> dict:
    """``{"first_step_s", "latency_s", "peak_memory_gb"}`` of ``fn`` (module docstring)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    first = time.perf_counter() - start
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    latency = (time.perf_counter() - start) / max(steps, 1)
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    return {"first_step_s": first, "latency_s": latency, "peak_memory_gb": peak}


def step_function(
    net: nn.Module, model: nn.Module, mode: str, settings: BenchSettings
) -> Callable[[], Any]:
    """The call that ``mode`` times: ``net`` is ``model`` itself or its compiled wrapper."""
    device = torch.device(settings.device)
    fmt = torch.channels_last if settings.channels_last else torch.contiguous_format
    gen = torch.Generator().manual_seed(0)
    if mode == "eval":
        image = torch.randn(3, *settings.image, generator=gen).to(device)
        common = dict(window_batch=settings.window_batch, amp=settings.amp)
        protocol = (
            EvalProtocol.paper_ms_flip(**common)
            if settings.protocol == "ms-flip"
            else EvalProtocol(**common)
        )
        model.eval()
        return lambda: predict_mask(net, image, protocol)
    x = torch.randn(settings.batch, 3, settings.size, settings.size, generator=gen)
    x = x.to(device).contiguous(memory_format=fmt)
    if mode == "infer":
        model.eval()

        def infer() -> None:
            with torch.no_grad(), autocast(device, settings.amp):
                net(x)

        return infer
    model.train()
    y = torch.randint(0, settings.classes, (settings.batch, settings.size, settings.size))
    y = y.to(device)
    criterion = SANetLoss()
    opt = torch.optim.SGD(model.parameters(), lr=1e-9, momentum=0.9)  # tiny lr: weights stay sane
    scaler = torch.amp.GradScaler(device.type) if settings.amp == "fp16" else None
    return lambda: train_step(net, criterion, [(x, y)], opt, scaler, settings.amp)


def measure_peer(
    spec: str, settings: BenchSettings, modes: Iterable[str], profile: bool = False
) -> list[dict]:
    """One row per mode for the peer ``spec`` (ratios are added by :func:`add_ratios`); with
    ``profile``, each row also holds ``"profile"``, the :func:`profile_calls` table."""
    device = torch.device(settings.device)
    torch.manual_seed(0)
    model = build_peer(spec, settings.classes).to(device)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = torch.compile(model, mode=settings.compile) if settings.compile else model
    params = sum(p.numel() for p in model.parameters())
    rows = []
    for mode in modes:
        logger.info("bench %s %s", spec, mode)
        fn = step_function(net, model, mode, settings)
        timing = time_calls(fn, device, settings.warmup, settings.steps)
        batch = 1 if mode == "eval" else settings.batch
        flops = None
        if mode != "eval":
            shape = (1, 3, settings.size, settings.size)
            flops = count_flops(model, torch.empty(shape), train=mode == "train")
        rows.append(_row(spec, mode, params, batch, flops, timing))
        if profile:
            rows[-1]["profile"] = profile_calls(fn, device)
    return rows


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


def _row(spec: str, mode: str, params: int, batch: int, flops: int | None, timing: dict) -> dict:
    images_per_s = batch / timing["latency_s"]
    return {
        "model": spec,
        "mode": mode,
        "params_M": round(params / 1e6, 2),
        "batch": batch,
        "gflops_per_image": None if flops is None else round(flops / 1e9, 2),
        "images_per_s": images_per_s,
        "latency_ms": timing["latency_s"] * 1e3,
        "first_step_s": timing["first_step_s"],
        "tflops": None if flops is None else flops * images_per_s / 1e12,
        "peak_memory_gb": timing["peak_memory_gb"],
    }


def add_ratios(rows: list[dict]) -> list[dict]:
    """Per mode, ``ratio`` = images/s over the first peer's and ``ratio_per_flop`` = achieved
    FLOP/s over the first peer's (above 1: this peer does more work per second)."""
    first: dict[str, dict] = {}
    for row in rows:
        ref = first.setdefault(row["mode"], row)
        row["ratio"] = row["images_per_s"] / ref["images_per_s"]
        row["ratio_per_flop"] = (
            row["tflops"] / ref["tflops"] if row["tflops"] and ref["tflops"] else None
        )
    return rows


def run_bench(
    specs: list[str],
    settings: BenchSettings,
    modes: Iterable[str] = ("infer", "train"),
    on_row: Callable[[dict], None] | None = None,
    profile: bool = False,
) -> list[dict]:
    """Measure every peer in ``specs`` (the first is the reference) in every mode.

    Returns rows grouped by mode, peers in the order given, with ratios (:func:`add_ratios`).
    """
    modes = list(modes)
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    for spec in specs:
        parse_spec(spec)  # every spec checked before the first (long) measurement
    rows = []
    for spec in specs:
        for row in measure_peer(spec, settings, modes, profile):
            rows.append(row)
            if on_row:
                on_row(row)
    rows.sort(key=lambda r: modes.index(r["mode"]))  # stable: peers keep their order
    return add_ratios(rows)


def resize_timings(settings: BenchSettings) -> list[dict]:
    """``F.interpolate`` against the matrix form (:mod:`sanet.models.resize`) on this run's
    logit upsampling, ``(batch, classes, size/8, size/8) → (size, size)`` in the ``amp`` dtype:
    milliseconds forward only and forward + backward. The measurement behind the per-device
    choice of :func:`~sanet.models.resize.resize_bilinear`.
    """
    device = torch.device(settings.device)
    dtype = {"none": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[settings.amp]
    small, size = -(-settings.size // 8), (settings.size, settings.size)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(settings.batch, settings.classes, small, small, generator=gen)
    x = x.to(device, dtype).requires_grad_()
    grad = torch.randn(settings.batch, settings.classes, *size, generator=gen).to(device, dtype)
    rows = []
    for method in ("interpolate", "matmul"):
        with torch.no_grad():
            fwd = time_calls(
                lambda m=method: resize_bilinear(x, size, m), device, 1, settings.steps
            )

        def fwd_bwd(m: str = method) -> None:
            torch.autograd.grad(resize_bilinear(x, size, m), x, grad)

        both = time_calls(fwd_bwd, device, 1, settings.steps)
        for name, t in (("forward", fwd), ("forward+backward", both)):
            rows.append({"method": method, "pass": name, "ms": t["latency_s"] * 1e3})
    return rows
