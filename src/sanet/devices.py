"""The device a run or a prediction asks for, checked before any work starts.

Asking for CUDA on a machine without it used to end in a driver traceback from deep inside the
first ``.to(device)``; :func:`resolve_device` says it in one line (docs/reliability.md).
"""

from __future__ import annotations

from typing import Any

import torch

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
