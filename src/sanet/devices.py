"""The device a run or a prediction asks for, checked before any work starts.

Asking for CUDA on a machine without it used to end in a driver traceback from deep inside the
first ``.to(device)``; :func:`resolve_device` says it in one line (docs/reliability.md).
:func:`choose_precision` is what ``amp="auto"`` means on this machine (docs/benchmarks.md, CPU
precision).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from sanet.conventions import AMP_CHOICES
from sanet.errors import UsageError, arg


def _fix() -> str:
    """Running on the CPU instead, in the caller's words."""
    return f"Use the CPU instead ({arg('device', 'cpu')}, or train.device=cpu in a config)"


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/``None``: CUDA when present, else the CPU; otherwise the named device, which
    must exist on this machine.

    Raises:
        ValueError: an unknown device name, or a device this machine does not have (the
            message says what it has and how to run without it).
    """
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(
            f"Unknown device {name!r}; expected auto, cpu, cuda, cuda:N or mps."
        ) from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            built = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA"
            raise UsageError(
                f"Device {str(name)!r} was asked for, but torch sees no CUDA device on this "
                f"machine (torch {torch.__version__}, built with {built}). {_fix()}, or check the "
                "GPU driver (nvidia-smi) and CUDA_VISIBLE_DEVICES."
            )
        if (device.index or 0) >= count:
            raise UsageError(
                f"Device {str(name)!r} was asked for, but this machine has {count} CUDA "
                f"device(s): cuda:0 .. cuda:{count - 1}. Pick one of those."
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"Device {str(name)!r} was asked for, but MPS is not available. {_fix()}.")
    return device


#: The CPU flags that decide how fast (and how exactly) int8 arithmetic runs: VNNI multiplies
#: uint8 × int8 pairs without the saturation of AVX2/AVX-512's VPMADDUBSW; AMX adds int8 tiles.
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_features(cpuinfo: str | None = None, arch: str | None = None) -> dict[str, Any]:
    """This CPU's name, architecture and int8 flags, from ``/proc/cpuinfo`` where there is one.

    Args:
        cpuinfo: the text of ``/proc/cpuinfo`` (default: read it; empty where it is missing).
        arch: ``platform.machine()`` (default: this machine's).

    Returns:
        ``{"name", "arch", "avx512_vnni", "avx_vnni", "amx", "vnni"}``; ``amx`` means AMX-INT8
        and ``vnni`` any of the three. The flags are ``None`` where they cannot be read (no
        ``/proc/cpuinfo``: macOS, Windows).
    """
    import platform

    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = ""
    name, flags = "", None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not name:
            name = value.strip()
        elif key.strip() in ("flags", "Features") and flags is None:
            flags = set(value.split())
    found = {f: (f in flags if flags is not None else None) for f in INT8_FLAGS}
    known = [v for v in found.values() if v is not None]
    return {
        "name": name or platform.processor() or "unknown",
        "arch": arch or platform.machine(),
        "avx512_vnni": found["avx512_vnni"],
        "avx_vnni": found["avx_vnni"],
        "amx": found["amx_int8"],
        "vnni": any(known) if known else None,
    }


#: The CPU flags of bf16 matrix units: Intel AMX tiles, AVX-512 BF16 (Intel Cooper Lake and
#: later, AMD Zen 4 and later). oneDNN runs bf16 convolutions and matrix products on them.
BF16_FLAGS = (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512_BF16"))


@dataclass(frozen=True)
class Precision:
    """The precision a run or a prediction uses, and why.

    Attributes:
        amp: what runs: ``"none"`` (float32), ``"bf16"`` or ``"fp16"`` autocast.
        channels_last: model and inputs in ``torch.channels_last``.
        asked: the ``amp`` asked for (``"auto"`` or the value itself).
        reason: why, in words (logged at start-up and recorded with the run).
    """

    amp: str
    channels_last: bool
    asked: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """``"bf16 autocast, channels-last (auto: ...)"``: the start-up line's words."""
        what = {"none": "float32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}[self.amp]
        layout = ", channels-last" if self.channels_last else ""
        return f"{what}{layout} ({self.asked}: {self.reason})"


def cpu_bf16_units(cpuinfo: str | None = None) -> str | None:
    """``"AMX"``, ``"AVX512_BF16"`` or ``None``: this CPU's bf16 matrix units, from the flags of
    ``/proc/cpuinfo`` (``None`` where there is none: macOS, Windows, or no such flag)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags = set(value.split())
            return next((name for flag, name in BF16_FLAGS if flag in flags), None)
    return None


def kernel_family(amp: str = "none", cpuinfo: str | None = None) -> str:
    """The CPU kernels a run of precision ``amp`` uses, in words: torch's vector level
    (``AVX512``, ``AVX2`` ...: ``torch.backends.cpu.get_cpu_capability()``), led by the bf16
    units (``AMX``, ``AVX512_BF16``) when ``amp`` is bf16 and the CPU has them, e.g.
    ``"AMX bf16 + AVX512"`` or ``"AVX512 (bf16 units AVX512_BF16 unused: float32)"``."""
    units = cpu_bf16_units(cpuinfo)
    level = torch.backends.cpu.get_cpu_capability()
    if units and amp == "bf16":
        return f"{units} bf16 + {level}"
    precision = "float32" if amp == "none" else amp
    return f"{level} (bf16 units {units} unused: {precision})" if units else level


def choose_precision(
    amp: str = "auto",
    device: str | torch.device = "cpu",
    *,
    channels_last: bool = False,
    cpuinfo: str | None = None,
) -> Precision:
    """What ``amp`` means on ``device``: any value but ``"auto"`` as given (with
    ``channels_last`` as given). ``"auto"``: on a CPU with bf16 units (:func:`cpu_bf16_units`)
    bf16 autocast and channels-last, float32 on any other CPU; on a GPU with bf16 the GPU
    recipes' bf16 + channels-last, float32 on older GPUs and other devices.

    Raises:
        UsageError: ``amp`` is not one of :data:`AMP_CHOICES`.
    """
    if amp not in AMP_CHOICES:
        raise UsageError(f"{arg('amp')} must be one of {', '.join(AMP_CHOICES)}, got {amp!r}.")
    if amp != "auto":
        return Precision(amp, channels_last, amp, "as asked")
    kind = torch.device(device).type
    if kind == "cpu":
        units = cpu_bf16_units(cpuinfo)
        if units:
            return Precision("bf16", True, amp, f"this CPU has bf16 units: {units}")
        why = "this CPU has no bf16 units (AMX, AVX512_BF16)"
    elif kind == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return Precision("bf16", True, amp, "this GPU supports bf16")
    else:
        why = f"no bf16 rule for {kind}"
    return Precision("none", channels_last, amp, why)
