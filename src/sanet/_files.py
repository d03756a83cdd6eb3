"""Crash-safe file writes and safe loading (docs/design.md, "Quality bars"): the bottom floor of the package.

Every file a user keeps is written to a temporary file in the same folder, fsynced, then renamed
over the target: a crash leaves either the old file or the new one, never half of one. The new
file gets the mode the umask gives any other new file (``mkstemp`` alone would leave it 0600).
A ``kill -9`` between the write and the rename leaves the temporary file behind; its name
(:func:`temp_name`) is written down once here so that :func:`remove_stale_temp_files` can find
it on the next run. This module imports nothing from sanet but ``errors``.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from sanet.errors import (
    DamagedFileError,
    IsAFolderError,
    NotAFolderError,
    NotFoundError,
    NotWritableError,
    OutputExistsError,
    arg,
)

# ".<target name>.<random>.sanet-tmp": hidden, beside its target, and distinctive enough that
# cleaning never touches a file sanet did not write.
_TEMP_SUFFIX = ".sanet-tmp"


def temp_name(target: str | Path) -> str:
    """The glob pattern of ``target``'s temporary files (``.last.pt.*.sanet-tmp``)."""
    return f".{Path(target).name}.*{_TEMP_SUFFIX}"


def atomic_save_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (same-folder temp file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # as open() would have created it
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


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temporary files that interrupted writes left in ``folder``; returns them.

    Call it only where no other process is writing (e.g. a run directory when its run starts).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = sorted(folder.glob(temp_name("*")))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def ensure_writable_dir(folder: str | Path, what: str) -> Path:
    """Prove that files can be written in ``folder`` without creating it.

    Called before long work, so that a bad ``--out`` fails in a second instead of after the work.
    A missing folder is left to the first write (every writer creates its parents): a command
    that fails before writing anything leaves no empty folder behind. The probe writes (and
    removes) a hidden temporary file in ``folder``, or in its nearest existing parent.
    ``what`` names the argument in the message (``errors.arg("out")``: ``out`` from Python,
    ``--out`` from the command line).

    Raises:
        NotADirectoryError: ``folder`` (or a parent) is a file.
        PermissionError: the folder cannot be created or written (read-only, full, no access).
    """
    folder = Path(folder)
    _probe_folder(folder, f"{what} {str(folder)!r}", "Fix: choose a folder you can write to.")
    return folder


def ensure_writable_file(path: str | Path, what: str, example: str = "report.json") -> Path:
    """Check that the file ``path`` can be written: it is not a folder and its folder is
    writable (or can be created); nothing is created. ``example`` is a file name the message
    suggests when ``path`` is a folder."""
    path = Path(path)
    if path.is_dir():
        raise IsAFolderError(
            f"{what} {str(path)!r} is a folder; give a file name, e.g. {str(path / example)!r}."
        )
    _probe_folder(
        path.parent,
        f"the folder of {what} {str(path)!r}",
        "Fix: choose a file in a folder you can write to.",
    )
    return path


def ensure_new_file(
    path: str | Path, what: str, overwrite: bool, example: str = "report.json"
) -> Path:
    """:func:`ensure_writable_file`, and refuse a file that exists unless ``overwrite``: outputs
    are never replaced silently (docs/reliability.md)."""
    path = ensure_writable_file(path, what, example)
    if not overwrite and (path.exists() or path.is_symlink()):
        raise OutputExistsError(
            f"{what} {str(path)!r} already exists; nothing was written. Pass "
            f"{arg('overwrite', True)} to replace it, or choose another {what}."
        )
    return path


def refuse_existing(paths: Iterable[Path], what: str, overwrite: bool) -> None:
    """Refuse, before any work, to replace output files that exist, unless ``overwrite``."""
    found = [p for p in paths if p.exists()]
    if found and not overwrite:
        shown = ", ".join(str(p) for p in found[:3])
        more = f" and {len(found) - 3} more" if len(found) > 3 else ""
        raise OutputExistsError(
            f"{what} already holds {shown}{more}; nothing was written. Pass "
            f"{arg('overwrite', True)} to replace {'it' if len(found) == 1 else 'them'}, or "
            f"choose another {what}."
        )


def refuse_foreign_files(
    folder: Path, found: list[Path], what: str, command: str, writes: str
) -> None:
    """Refuse an output folder that holds files ``command`` did not write (``found``, computed by
    the command, which knows its own files): writing there would replace or mix with them."""
    if not found:
        return
    shown = ", ".join(str(p.relative_to(folder)) for p in found[:5])
    more = f" and {len(found) - 5} more" if len(found) > 5 else ""
    raise OutputExistsError(
        f"{what} {str(folder)!r} holds files that {command} did not write ({shown}{more}); "
        f"nothing was written. Fix: choose a new or empty {what} folder ({command} writes "
        f"{writes} there), or move those files away."
    )


def is_temp_file(path: Path) -> bool:
    """A temporary file of an interrupted atomic write (:func:`temp_name`)."""
    return path.name.startswith(".") and path.name.endswith(_TEMP_SUFFIX)


def _probe_folder(folder: Path, subject: str, fix: str) -> None:
    existing = folder
    while not (existing.exists() or existing.is_symlink()) and existing.parent != existing:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        where = "" if existing == folder else f" lies under {str(existing)!r}, which"
        raise NotAFolderError(f"{subject}{where} is a file, not a folder. {fix}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test.", suffix=_TEMP_SUFFIX, dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        at = "" if existing == folder else f": cannot create it in {str(existing)!r}"
        raise NotWritableError(f"{subject} is not writable ({reason}{at}). {fix}") from err


def safe_torch_load(
    path: str | Path, map_location: str | torch.device = "cpu", fix: str = ""
) -> Any:
    """``torch.load`` with ``weights_only=True``: tensors and plain containers, no code.

    Raises:
        FileNotFoundError: no such file.
        DamagedFileError: truncated or corrupt, or holding objects that could run code (named,
            never built); ``fix`` replaces the generic advice in its message.
    """
    path = _existing_file(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (PermissionError, IsADirectoryError):
        raise
    except pickle.UnpicklingError as err:
        # torch's text advises weights_only=False, i.e. running the file's code: never relay it.
        found = re.search(r"GLOBAL [\w.]+", str(err))
        problem = (
            f"holds Python objects that a weights-only load refuses to build ({found.group()}; "
            "loading it could run code)"
            if found
            else "is corrupt or not a PyTorch weights file (its pickle data is not plain tensors)"
        )
        raise DamagedFileError(path, problem, fix or "use a checkpoint written by sanet") from None
    except Exception as err:  # a damaged zip makes torch's reader fail in many ways (measured:
        # RuntimeError, OSError, EOFError, UnicodeDecodeError, KeyError, IndexError, TypeError)
        raise DamagedFileError(path, _damage(path, err), fix or _COPY_AGAIN) from err


def safe_safetensors_load(
    path: str | Path, device: str | torch.device = "cpu", fix: str = ""
) -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file`` with :class:`DamagedFileError` for a damaged file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = _existing_file(path)
    try:
        return load_file(str(path), device=str(device))
    except SafetensorError as err:
        raise DamagedFileError(path, _damage(path, err), fix or _COPY_AGAIN) from err


_COPY_AGAIN = "copy the file again, or use another checkpoint"


def _existing_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"Checkpoint {str(path)!r} does not exist.")
    return path


def _damage(path: Path, err: Exception) -> str:
    detail = "the file is empty" if path.stat().st_size == 0 else str(err).split(". ")[0]
    return f"is truncated or corrupt and cannot be loaded ({detail or type(err).__name__})"


def _umask() -> int:
    """The process umask. Linux shows it in /proc; elsewhere set-and-restore (not thread-safe,
    but only called around file creation)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
