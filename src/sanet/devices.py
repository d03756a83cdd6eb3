"""The device a run or a prediction asks for, checked before any work starts.

Asking for CUDA on a machine without it used to end in a driver traceback from deep inside the
first ``.to(device)``; :func:`resolve_device` says it in one line (docs/reliability.md).
"""

from __future__ import annotations

import torch

_FIX = "Use the CPU instead (--device cpu, or train.device=cpu in a config)"


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
        raise ValueError(
            f"Unknown device {name!r}; expected auto, cpu, cuda, cuda:N or mps."
        ) from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            built = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA"
            raise ValueError(
                f"Device {str(name)!r} was asked for, but torch sees no CUDA device on this "
                f"machine (torch {torch.__version__}, built with {built}). {_FIX}, or check the "
                "GPU driver (nvidia-smi) and CUDA_VISIBLE_DEVICES."
            )
        if (device.index or 0) >= count:
            raise ValueError(
                f"Device {str(name)!r} was asked for, but this machine has {count} CUDA "
                f"device(s): cuda:0 .. cuda:{count - 1}. Pick one of those."
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"Device {str(name)!r} was asked for, but MPS is not available. {_FIX}.")
    return device
