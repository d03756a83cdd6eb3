"""Crash-safe file writes and safe loading (SPEC §5).

Every file a user keeps is written to a temporary file in the same folder, fsynced, then renamed
over the target: a crash leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def atomic_save_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (same-folder temp file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomic text write (UTF-8)."""
    atomic_save_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through :func:`atomic_save_bytes`."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_save_bytes(path, buf.getvalue())


def safe_torch_load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True``: tensors and plain containers, no code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {str(path)!r} does not exist.")
    return torch.load(path, map_location=map_location, weights_only=True)


def _fsync_dir(directory: Path) -> None:
    # The rename itself lives in the directory entry; fsync it so it survives a power cut.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_model(path: str | Path, map_location: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """Load a model for inference from any of the three places SPEC §4 names.

    ``path`` is a ``save_pretrained`` folder (``config.json`` + ``model.safetensors``), a training
    run directory (uses ``RUN/model``, else ``RUN/checkpoints/best.pt``/``last.pt``) or a ``.pt``
    training checkpoint (``{"model": state_dict, "model_config": {...}, ...}``).

    Returns:
        ``(model in eval mode, metadata)``; metadata holds e.g. ``class_names`` when known.
    """
    from sanet.models import SegmentationModel
    from sanet.models.sanet import CONFIG_NAME, build_from_config, read_pretrained_config

    path = Path(path)
    if path.is_dir():
        if (path / CONFIG_NAME).is_file():
            meta = read_pretrained_config(path).get("metadata", {})
            return SegmentationModel.from_pretrained(path, map_location), meta
        for candidate in (
            path / "model",
            path / "checkpoints/best.pt",
            path / "checkpoints/last.pt",
        ):
            if candidate.exists():
                return load_model(candidate, map_location)
        raise FileNotFoundError(
            f"{str(path)!r} is neither a save_pretrained folder (config.json) nor a run directory "
            "(model/ or checkpoints/*.pt). Pass one of those, or a .pt checkpoint file."
        )
    ckpt = safe_torch_load(path, map_location)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        raise ValueError(
            f"{str(path)!r} is not a sanet training checkpoint (expected keys 'model' and "
            "'model_config'). Pass a run directory, RUN/checkpoints/*.pt or a save_pretrained folder."
        )
    model = build_from_config(ckpt["model_config"])
    model.load_state_dict(ckpt["model"], strict=True)
    return model.eval(), dict(ckpt.get("metadata", {}))
