"""Errors a user can fix, and helpers for messages that tell them how (imports nothing from sanet).

The rule (docs/reliability.md): a problem the user can fix is raised as one of
:data:`USER_ERROR_TYPES` by sanet's own code, with what was expected, what was found and the fix;
the CLI prints it as one line and exits 2. Anything else is a bug and keeps its traceback.
:func:`is_user_error` is that rule in code.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent

# Raised by sanet for input a user can fix. A KeyError or TypeError is never one: those are bugs.
USER_ERROR_TYPES: tuple[type[Exception], ...] = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)
# Failed writes the user fixes outside sanet (free space, quota, a read-only mount), wherever the
# write was.
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest choice, or ``""`` when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


class DataError(ValueError):
    """A file that cannot be used for training; the message names the file and the fix.

    ``DataError(message)`` also works, so the error survives pickling and the DataLoader's
    re-raise from worker processes with its type intact.
    """

    def __init__(self, path: str | os.PathLike, problem: str | None = None, fix: str = "") -> None:
        if problem is None:  # rebuilt from a message (pickle, DataLoader worker)
            self.path, self.problem, self.fix = None, str(path), ""
            super().__init__(str(path))
            return
        self.path, self.problem, self.fix = str(path), problem, fix
        super().__init__(f"{self.path}: {problem}. Fix: {fix}")


class DamagedFileError(DataError):
    """A checkpoint or weights file that exists but cannot be loaded (truncated, corrupt, or
    holding code that a weights-only load refuses)."""


def is_user_error(err: BaseException) -> bool:
    """True for a problem the user can fix (print one line), False for a bug (keep the traceback).

    A :class:`DataError` always is; a :data:`USER_ERROR_TYPES` exception is when sanet's own code
    raised it (the same type raised inside torch or numpy is a bug of ours: we validate first);
    a full disk, quota or read-only file system is wherever it happened.
    """
    if isinstance(err, DataError):
        return True
    if isinstance(err, OSError) and err.errno in _DISK_ERRNOS:
        return True
    return isinstance(err, USER_ERROR_TYPES) and _raised_by_sanet(err)


def _raised_by_sanet(err: BaseException) -> bool:
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE_DIR)


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line (some messages quote multi-line text, e.g. YAML's)."""
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip())


def worker_error_message(err: BaseException) -> str | None:
    """The original message of an error re-raised from a DataLoader worker, else ``None``.

    The worker sends ``"Caught <Type> in DataLoader worker process N.\\nOriginal Traceback ...
    <module>.<Type>: <message>"``; the user needs only ``<message>`` (it names the file).
    """
    text = str(err)
    if not text.startswith(f"Caught {type(err).__name__} in DataLoader worker"):
        return None
    cls = type(err)
    for prefix in (f"{cls.__module__}.{cls.__qualname__}: ", f"{cls.__qualname__}: "):
        at = text.rfind("\n" + prefix)
        if at >= 0:
            return text[at + 1 + len(prefix) :].strip()
    return None


@contextlib.contextmanager
def plain_worker_errors() -> Iterator[None]:
    """Re-raise a user error that a DataLoader worker sent (a :class:`DataError` or
    ``FileNotFoundError`` whose message is the worker's whole traceback) with its own message;
    the worker's text stays attached as the cause (``-v`` shows it)."""
    try:
        yield
    except (DataError, FileNotFoundError) as err:
        message = worker_error_message(err)
        if message is None:
            raise
        raise type(err)(message) from err
