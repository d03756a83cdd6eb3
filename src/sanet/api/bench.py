"""``sanet.bench``: speed of our models against torchvision's (and exported files), in one
process with the same settings (``sanet bench``; docs/benchmarks.md documents the JSON)."""

from __future__ import annotations

import inspect
import json as jsonlib
import logging
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sanet._files import atomic_write_text, ensure_new_file
from sanet.api.common import device_of
from sanet.conventions import AMP_CHOICES
from sanet.devices import choose_precision
from sanet.errors import UsageError, arg, speaks_cli, suggest
from sanet.version import __version__

if TYPE_CHECKING:
    from sanet.experiments.bench import BenchSettings

logger = logging.getLogger(__name__)

#: Defaults per device type: the paper-sized setting on a GPU, a small one a CPU finishes.
DEVICE_DEFAULTS: dict[str, dict[str, Any]] = {
    "cuda": dict(
        models=["tv:fcn_resnet101", "sanet:resnet101s"], size=512, batch=16, steps=20, warmup=5
    ),
    "cpu": dict(
        models=["tv:fcn_resnet50", "sanet:resnet50s"], size=256, batch=4, steps=3, warmup=1
    ),
}
#: ``mode`` → the modes measured.
MODES = {"infer": ["infer"], "train": ["train"], "both": ["infer", "train"], "eval": ["eval"]}
PROFILE = "bench_profile.txt"  # the profile file's name in examples
_CHOICES = {
    "amp": AMP_CHOICES,
    "upsample": ("auto", "matmul", "interpolate"),
    "protocol": ("ms-flip", "single"),
}


@dataclass
class BenchResult:
    """What :func:`bench` measured.

    Attributes:
        rows: one row per model and mode (``images_per_s``, ``latency_ms``, ``call_ms``,
            ``gflops_per_image``, ``tflops``, ``peak_memory_gb``, ``ratio`` to the first model
            of the mode, ``ratio_per_flop``); with ``resize``, one per method and pass (``ms``).
        settings: what every model shared (:class:`~sanet.experiments.bench.BenchSettings`).
        environment: where it was measured (versions, device, threads, CPU flags, load).
        report: the JSON document (written to ``json`` when given).
        models: the models measured, the reference first (empty with ``resize``).
        mode: the ``mode`` asked for.
        json: the JSON file written, or ``None``.
        profile: the profiler tables' file written, or ``None``.
    """

    rows: list[dict[str, Any]]
    settings: BenchSettings
    environment: dict[str, Any]
    report: dict[str, Any]
    models: list[str] = field(default_factory=list)
    mode: str = "both"
    json: Path | None = None
    profile: Path | None = None


def bench(
    models: str | list[str] | None = None,
    *,
    device: str | None = None,
    mode: str = "both",
    size: int | None = None,
    batch: int | None = None,
    classes: int = 59,
    steps: int | None = None,
    warmup: int | None = None,
    amp: str = "none",
    channels_last: bool = False,
    compile: str | None = None,
    upsample: str = "auto",
    image: str = "500x375",
    protocol: str = "ms-flip",
    window_batch: int = 4,
    threads: int | None = None,
    json: str | Path | None = None,
    profile: str | Path | None = None,
    overwrite: bool = False,
    resize: bool = False,
    roof: bool = True,
) -> BenchResult:
    """Time ``models`` side by side in one process: same input, batch, precision, memory format
    and compile mode, timed calls interleaved, so the ratios to the first model hold on a busy
    machine. Random weights: speed does not depend on them. Every argument and output file is
    checked before a model is built.

    Args:
        models: ``KIND:BACKBONE`` (``sanet:resnet50s``), ``tv:NAME`` (``tv:fcn_resnet101``) or
            ``onnx:PATH`` (infer and eval only); the first is the reference (default: the R50
            pair on a CPU, the R101 pair on CUDA).
        device: ``cpu``, ``cuda``, ``cuda:1`` ... (default: ``cuda`` when there is one).
        mode: ``"infer"``, ``"train"``, ``"both"`` or ``"eval"`` (one ``image`` through the
            paper's multi-scale + flip ``protocol``, or ``"single"`` scale).
        size, batch, steps, warmup: square input side, images per step, timed calls, untimed
            calls after the first (defaults: 256, 4, 3, 1 on a CPU; 512, 16, 20, 5 on CUDA).
        classes: output classes of the built models (``onnx:`` files keep their own).
        amp: ``"none"``, ``"bf16"`` or ``"fp16"`` (autocast), or ``"auto"``: bf16 +
            channels-last on a CPU with bf16 units or a bf16 GPU, else float32 (the choice is
            in ``report["precision"]``).
        compile: a ``torch.compile`` mode for every model, or ``None`` (eager).
        upsample: how our models resize bilinearly (``"auto"``: the device's faster one).
        image: ``"WxH"`` of the eval image; window_batch: windows per forward in eval.
        threads: CPU threads of torch and onnxruntime (default: torch's current setting).
        json: also write the report here; profile: write torch.profiler's top-kernel table of
            each model and mode here (both refused when they exist, unless ``overwrite``).
        resize: instead, time ``F.interpolate`` against the matrix form on the logits'
            upsampling at ``size``.
        roof: also measure the machine's roof (a 2048³ matrix product in the ``amp`` dtype,
            once per process) and give each row its share of it (``roof_fraction``).

    Returns:
        a :class:`BenchResult`.
    """
    return _bench(dict(locals()))  # the arguments as given (the report's "command" too)


def _bench(call: dict[str, Any]) -> BenchResult:
    """:func:`bench` of the arguments ``call`` (by name)."""
    from sanet.experiments import bench as experiments
    from sanet.experiments.measure import add_roof, environment
    from sanet.models.resize import set_bilinear_method

    _check_choices(call["mode"], call["amp"], call["upsample"], call["protocol"])
    settings = _settings(call)  # every argument is checked before any model is built
    json_path, profile_path = _outputs(call["json"], call["profile"], call["overwrite"])
    default = DEVICE_DEFAULTS[_kind(settings.device)]["models"]
    given = [call["models"]] if isinstance(call["models"], str) else call["models"]
    specs = [] if call["resize"] else list(given or default)
    for spec in specs:
        experiments.parse_spec(spec)  # a bad model name fails now, not after the first builds
    experiments.apply_threads(settings)  # before `environment` records the thread count
    set_bilinear_method(settings.device.split(":")[0], call["upsample"])
    env = {"sanet": __version__, **environment(settings.device)}
    if call["resize"]:
        rows = experiments.resize_timings(settings)
    else:
        modes = MODES[call["mode"]]
        rows = experiments.run_bench(specs, settings, modes, profile=profile_path is not None)
        if profile_path is not None:
            _write_profile(profile_path, rows, settings)
        if call["roof"]:
            env["roof"] = add_roof(rows, settings.device, experiments.AMP_DTYPES[settings.amp])
    env["load_average_1min_end"] = environment(settings.device)["load_average_1min"]
    report = {
        "command": _command(call),
        "environment": env,
        "settings": settings.to_dict() | {"upsample": call["upsample"], "amp_asked": call["amp"]},
        "rows": rows,
    }
    if json_path is not None:
        atomic_write_text(json_path, jsonlib.dumps(report, indent=2) + "\n")
    return BenchResult(rows, settings, env, report, specs, call["mode"], json_path, profile_path)


def _kind(device: str) -> str:
    return "cuda" if device.startswith("cuda") else "cpu"


def _check_choices(mode: str, amp: str, upsample: str, protocol: str) -> None:
    for name, value, choices in (
        ("mode", mode, tuple(MODES)),
        ("amp", amp, _CHOICES["amp"]),
        ("upsample", upsample, _CHOICES["upsample"]),
        ("protocol", protocol, _CHOICES["protocol"]),
    ):
        if value not in choices:
            raise UsageError(
                f"{arg(name)} must be one of {', '.join(choices)}, got {value!r}."
                + suggest(str(value), choices)
            )


def _settings(call: dict[str, Any]) -> Any:
    """The :class:`~sanet.experiments.bench.BenchSettings` of the arguments and the device's
    defaults (it refuses values out of range)."""
    from sanet.experiments.bench import BenchSettings

    device = device_of(call["device"])
    defaults = DEVICE_DEFAULTS[_kind(device)]
    try:
        width, height = (int(v) for v in str(call["image"]).lower().split("x"))
    except ValueError:
        raise UsageError(
            f"{arg('image')} must be WxH, e.g. {arg('image', '500x375')}, got {call['image']!r}."
        ) from None
    pick = {n: defaults[n] if call[n] is None else call[n] for n in ("size", "batch", "steps")}
    precision = choose_precision(call["amp"], device, channels_last=call["channels_last"])
    if call["amp"] == "auto":
        logger.info("Precision: %s", precision.describe())
    return BenchSettings(
        device=device,
        **pick,
        classes=call["classes"],
        warmup=defaults["warmup"] if call["warmup"] is None else call["warmup"],
        amp=precision.amp,
        channels_last=precision.channels_last,
        compile=call["compile"],
        image=(height, width),
        protocol=call["protocol"],
        window_batch=call["window_batch"],
        threads=call["threads"],
    )


def _outputs(
    json: str | Path | None, profile: str | Path | None, overwrite: bool
) -> tuple[Path | None, Path | None]:
    """The JSON and profile files, refused now when they cannot be written or exist."""
    paths = []
    for name, path, example in (("json", json, "bench.json"), ("profile", profile, PROFILE)):
        if path is not None:
            path = ensure_new_file(Path(path), arg(name), overwrite, example)
        paths.append(path)
    return paths[0], paths[1]


def _write_profile(path: Path, rows: list[dict[str, Any]], settings: Any) -> None:
    """The profiler table of each row (taken out of the rows: the JSON stays small)."""
    parts = [
        f"## {r['model']} {r['mode']} ({settings.device}, batch {r['batch']})\n\n{r.pop('profile')}"
        for r in rows
    ]
    atomic_write_text(path, "\n\n".join(parts) + "\n")


def _command(call: dict[str, Any]) -> str:
    """How the report was asked for: the ``sanet bench`` command line, or the Python call
    with the arguments that differ from the defaults."""
    if speaks_cli():
        return shlex.join(["sanet", *sys.argv[1:]]) if sys.argv[0] else "sanet bench"
    defaults = {n: p.default for n, p in inspect.signature(bench).parameters.items()}
    shown = [
        f"{name}={str(value) if isinstance(value, Path) else value!r}"
        for name, value in call.items()
        if value != defaults.get(name)
    ]
    return f"sanet.bench({', '.join(shown)})"
