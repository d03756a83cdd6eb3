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

Exported files are peers too (``onnx:PATH``, run by onnxruntime, ``infer`` and ``eval`` only):
an fp32 and an int8 export side by side, on the same inputs, interleaved, with the same
``threads``. ``infer`` times the graph as a server runs it (:class:`OnnxGraph`: every output
fetched, so a ``--outputs logits,mask`` file computes its mask too, and a mask-only file is
timed like any other); ``eval`` runs sanet's protocol through
:class:`~sanet.inference.OnnxModel`, which averages logits and so needs a ``logits`` output.

The first call of each is timed apart (``first_step_s``: compilation, allocator and kernel
warm-up), then ``warmup`` more untimed calls; then ``steps`` timed rounds call every peer once
in turn (a device sync around each call), and a peer's latency is its median call. Interleaving
keeps the ratios fair when the machine's load changes during the run.

FLOPs come from ``torch.utils.flop_counter`` with ``meta`` stand-ins for the weights (nothing
runs, so counting is free): convolutions and matrix products of the forward (``infer``) or
forward + backward (``train``) of one image; the loss, the optimiser and the bilinear resizing
are not counted, so the figure is the network's and not the upsampling method's. The timing
and counting tools are in ``measure.py``.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sanet.errors import NotFoundError, UsageError, arg
from sanet.experiments.measure import count_flops, interleaved, profile_calls, warm_up
from sanet.inference.onnx_backend import OnnxModel, check_segmentation_graph, providers_for
from sanet.inference.protocol import EvalProtocol, predict_mask
from sanet.losses import SANetLoss
from sanet.models.registry import build_model, list_models
from sanet.models.resize import resize_bilinear
from sanet.models.segmentation import MIN_SIZE
from sanet.training.engine import autocast, train_step

logger = logging.getLogger(__name__)

MODES = ("infer", "train", "eval")
#: The dtype of the matrix products under each ``amp``: the roof a row is measured against.
AMP_DTYPES = {"none": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TORCHVISION = ("fcn_resnet50", "fcn_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101")


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
        threads: CPU threads of torch and onnxruntime (``None``: torch's current setting).
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
    threads: int | None = None

    def __post_init__(self) -> None:
        # validate-first: a bad value fails here, in a second, not after minutes of building
        # and warming up (steps 0 had no median, batch 0 divided by zero)
        least = {  # field: (least value, what it counts)
            "steps": (1, "timed calls per model and mode"),
            "batch": (1, "images per step"),
            "warmup": (0, "untimed calls after the first"),
            "classes": (1, "output classes"),
            "window_batch": (1, "windows per forward"),
            "size": (MIN_SIZE, "the input side; the models take no less"),
        }
        for name, (low, what) in least.items():
            value = getattr(self, name)
            if value < low:
                raise UsageError(f"{arg(name)} must be ≥ {low} ({what}), got {value}.")
        if min(self.image) < 1:
            h, w = self.image
            raise UsageError(f"{arg('image')} must be WxH with sides ≥ 1, got {w}x{h}.")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "image": list(self.image)}


def parse_spec(spec: str) -> tuple[str, str]:
    """``"sanet:resnet50s"`` → ``("sanet", "resnet50s")``; a clear error for anything else."""
    kind, sep, name = spec.partition(":")
    if kind == "onnx":
        return kind, check_onnx_path(spec, name)
    if not sep or not name or (kind != "tv" and kind not in list_models()):
        raise UsageError(
            f"Model {spec!r} is not KIND:BACKBONE or tv:NAME; e.g. sanet:resnet50s, "
            f"fcn:resnet101s, tv:fcn_resnet101 (KIND is one of {list_models()} or tv)."
        )
    if kind == "tv" and name not in TORCHVISION:
        raise UsageError(f"tv:{name} is not one of the torchvision peers {list(TORCHVISION)}.")
    return kind, name


def check_onnx_path(spec: str, path: str) -> str:
    """``onnx:PATH`` names an existing ``.onnx`` file."""

    if not path.lower().endswith(".onnx"):
        raise UsageError(f"{spec!r}: expected onnx:PATH to an .onnx file, e.g. onnx:model.onnx.")
    if not Path(path).is_file():
        raise NotFoundError(f"{spec!r}: {path!r} does not exist; export it with sanet export.")
    return path


def apply_threads(settings: BenchSettings) -> None:
    """Give torch ``settings.threads`` (onnxruntime peers get them when built)."""
    if settings.threads is not None:
        if settings.threads < 1:
            raise UsageError(f"{arg('threads')} must be at least 1, got {settings.threads}.")
        torch.set_num_threads(settings.threads)


class OnnxGraph(nn.Module):
    """An exported file as a server runs it: the whole graph on onnxruntime, every output
    fetched (``outputs``: their names), whatever they are (``logits``, ``mask``,
    ``confidence``); ``threads`` intra-op threads."""

    def __init__(self, path: str, device: str = "cpu", threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(path, options, providers=providers_for(device))
        except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph types
            raise UsageError(
                f"onnxruntime cannot load {path!r} ({type(err).__name__}: {err}); expected a "
                "file written by `sanet export`."
            ) from err
        self.path, self.input_name = path, self.session.get_inputs()[0].name
        self.outputs = [o.name for o in self.session.get_outputs()]
        if "logits" in self.outputs or not {"mask", "confidence"} & set(self.outputs):
            # the check of every command (OnnxModel's), on the logits or a foreign file's
            # first output; a file sanet exported with only a mask or confidence has no logits
            logits = "logits" if "logits" in self.outputs else self.outputs[0]
            check_segmentation_graph(self.session, logits, Path(path))

    def forward(self, x: torch.Tensor) -> list[Any]:
        batch = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return self.session.run(None, {self.input_name: batch})


def onnx_peer(path: str, device: str, threads: int | None, as_is: bool) -> nn.Module:
    """The file at ``path`` as it is (:class:`OnnxGraph`), or for sanet's protocol
    (``as_is=False``: :class:`~sanet.inference.OnnxModel`, which needs the ``logits``)."""
    graph = OnnxGraph(path, device, threads)
    if as_is:
        return graph
    if "logits" not in graph.outputs:
        raise UsageError(
            f"onnx:{path} has the outputs {graph.outputs} but no 'logits': {arg('mode', 'eval')} "
            "runs sanet's protocol, which averages the logits over windows, scales and flips. "
            f"Time the graph as a server runs it with {arg('mode', 'infer')}."
        )
    return OnnxModel(path, providers=providers_for(device), threads=threads)


def build_peer(
    spec: str,
    num_classes: int,
    threads: int | None = None,
    device: str = "cpu",
    as_is: bool = True,
) -> nn.Module:
    """``KIND:BACKBONE`` (one of our models on a timm backbone, e.g. ``sanet:resnet50s``) or
    ``tv:NAME`` (a torchvision segmentation model: output stride 8, no aux head), random weights;
    or ``onnx:PATH``, an exported file on onnxruntime (``threads`` intra-op threads; see
    :func:`onnx_peer` for ``as_is``).
    """
    kind, name = parse_spec(spec)
    if kind == "onnx":
        return onnx_peer(name, device, threads, as_is)
    if kind != "tv":
        return build_model(kind, backbone=name, num_classes=num_classes)
    import torchvision

    builder = getattr(torchvision.models.segmentation, name)
    return builder(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)


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


@dataclass
class Peer:
    """One model under test: ``net`` is ``model`` or its compiled wrapper."""

    spec: str
    model: nn.Module
    net: nn.Module

    @classmethod
    def build(cls, spec: str, settings: BenchSettings, as_is: bool = True) -> Peer:
        """``as_is``: an exported file is timed as it is (``infer``), not through sanet's
        protocol (``eval``)."""
        torch.manual_seed(0)
        threads = _threads(settings)
        model = build_peer(spec, settings.classes, threads, settings.device, as_is)
        if isinstance(model, (OnnxModel, OnnxGraph)):  # onnxruntime on the device's provider
            return cls(spec, model, model)
        model = model.to(settings.device)
        if settings.channels_last:
            model = model.to(memory_format=torch.channels_last)
        net = torch.compile(model, mode=settings.compile) if settings.compile else model
        return cls(spec, model, net)

    @property
    def is_onnx(self) -> bool:
        return isinstance(self.model, (OnnxModel, OnnxGraph))

    def nbytes(self) -> int:
        tensors = [*self.model.parameters(), *self.model.buffers()]
        return sum(t.numel() * t.element_size() for t in tensors)


def measure_mode(peers: list[Peer], mode: str, settings: BenchSettings, profile: bool) -> list:
    """One row per peer for ``mode``: first call and warm-up peer by peer, then the timed calls
    :func:`interleaved`; ``latency_ms`` is the median call. With ``profile``, each row also
    holds ``"profile"``, the :func:`profile_calls` table."""
    device = torch.device(settings.device)
    calls, infos = [], []
    for peer in peers:
        logger.info("bench %s %s: first call and warm-up", peer.spec, mode)
        make = lambda p=peer: step_function(p.net, p.model, mode, settings)  # noqa: E731
        call, info = warm_up(make, device, settings.warmup, peer.nbytes())
        calls.append(call)
        infos.append(info)
    logger.info("bench %s: %d timed rounds over %d models", mode, settings.steps, len(peers))
    seconds = interleaved(calls, device, settings.steps)
    rows = []
    for peer, call, info, times in zip(peers, calls, infos, seconds, strict=True):
        flops = None
        if mode != "eval" and not peer.is_onnx:  # no FLOP counter for an onnxruntime graph
            shape = (1, 3, settings.size, settings.size)
            flops = count_flops(peer.model, torch.empty(shape), train=mode == "train")
        batch = 1 if mode == "eval" else settings.batch
        rows.append(_row(peer, mode, batch, flops, info, times))
        if profile:
            rows[-1]["profile"] = profile_calls(call, device)
    return rows


def _row(peer: Peer, mode: str, batch: int, flops: int | None, info: dict, times: list) -> dict:
    latency = statistics.median(times)
    images_per_s = batch / latency
    return {
        "model": peer.spec,
        "mode": mode,
        "params_M": None
        if peer.is_onnx
        else round(sum(p.numel() for p in peer.model.parameters()) / 1e6, 2),
        "batch": batch,
        "gflops_per_image": None if flops is None else round(flops / 1e9, 2),
        "images_per_s": images_per_s,
        "latency_ms": latency * 1e3,
        "call_ms": [round(t * 1e3, 2) for t in times],
        "first_step_s": info["first_step_s"],
        "tflops": None if flops is None else flops * images_per_s / 1e12,
        "peak_memory_gb": info["peak_memory_gb"],
        **({"outputs": peer.model.outputs} if isinstance(peer.model, OnnxGraph) else {}),
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
    profile: bool = False,
) -> list[dict]:
    """Measure every peer in ``specs`` (the first is the reference) in every mode.

    All peers are built first and stay on the device; their timed calls are interleaved.
    Returns rows grouped by mode, peers in the order given, with ratios (:func:`add_ratios`).
    """
    modes = list(modes)
    for mode in modes:
        if mode not in MODES:
            raise UsageError(f"mode must be one of {MODES}, got {mode!r}.")
    for spec in specs:
        parse_spec(spec)  # every spec checked before the first (long) build
    onnx = [s for s in specs if s.startswith("onnx:")]
    if onnx and "train" in modes:
        raise UsageError(
            f"{onnx[0]} is an exported file: it can be timed in {arg('mode', 'infer')} or "
            f"{arg('mode', 'eval')}, not train ({arg('mode', 'both')} includes train). Add "
            f"{arg('mode', 'infer')}."
        )
    apply_threads(settings)
    peers = [Peer.build(spec, settings, as_is="eval" not in modes) for spec in specs]
    rows = []
    for mode in modes:
        rows += measure_mode(peers, mode, settings, profile)
    return add_ratios(rows)


def _threads(settings: BenchSettings) -> int:
    return settings.threads if settings.threads is not None else torch.get_num_threads()


def resize_timings(settings: BenchSettings) -> list[dict]:
    """``F.interpolate`` against the matrix form (:mod:`sanet.models.resize`) on this run's
    logit upsampling, ``(batch, classes, size/8, size/8) → (size, size)`` in the ``amp`` dtype:
    milliseconds forward only and forward + backward. The measurement behind the per-device
    choice of :func:`~sanet.models.resize.resize_bilinear`.
    """
    device = torch.device(settings.device)
    dtype = AMP_DTYPES[settings.amp]
    small, size = -(-settings.size // 8), (settings.size, settings.size)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(settings.batch, settings.classes, small, small, generator=gen)
    x = x.to(device, dtype).requires_grad_()
    grad = torch.randn(settings.batch, settings.classes, *size, generator=gen).to(device, dtype)
    methods = ("interpolate", "matmul")

    def forward(m: str) -> None:
        with torch.no_grad():
            resize_bilinear(x, size, m)

    def forward_backward(m: str) -> None:
        torch.autograd.grad(resize_bilinear(x, size, m), x, grad)

    rows = []
    for name, fn in (("forward", forward), ("forward+backward", forward_backward)):
        calls = [lambda m=m, fn=fn: fn(m) for m in methods]
        for call in calls:  # warm-up
            call()
        seconds = interleaved(calls, device, settings.steps)
        for method, times in zip(methods, seconds, strict=True):
            rows.append({"method": method, "pass": name, "ms": statistics.median(times) * 1e3})
    return rows
