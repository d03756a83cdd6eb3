"""Every error sanet raises for something the caller can fix, under one base class.

```python
try:
    sanet.evaluate("runs/ctx", data="voc:data/VOC2012")
except sanet.errors.SanetError as err:   # what was expected, what was found, the fix
    print(err)
```

The rule (docs/reliability.md): a problem the user can fix is a :class:`SanetError` with what was
expected, what was found and the fix; the CLI prints it as one line and exits 2. Anything else is
a bug and keeps its traceback. Each class also derives from the built-in type it refines
(``UsageError`` is a ``ValueError``, ``NotFoundError`` a ``FileNotFoundError`` ...), so code that
caught the built-in types keeps working.

Messages name parameters the way the caller spells them (:func:`arg`): ``overwrite=True`` from
Python, ``--overwrite`` when the ``sanet`` command line asked (it installs its flag names with
:func:`flag_names`). This module imports nothing from sanet.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import errno
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


class SanetError(Exception):
    """Base class: something the caller can fix; the message says what and how."""


class UsageError(SanetError, ValueError):
    """A value, or a combination of arguments, that sanet cannot use."""


class ConfigError(UsageError):
    """A recipe (YAML config or an override) with an unknown key or a value out of range."""


class DataError(SanetError, ValueError):
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


class NotFoundError(SanetError, FileNotFoundError):
    """A file or folder the call needs does not exist."""


class OutputExistsError(SanetError, FileExistsError):
    """An output would replace something already there (sanet never replaces silently)."""


class NotWritableError(SanetError, PermissionError):
    """An output folder or file that cannot be written."""


class NotAFolderError(SanetError, NotADirectoryError):
    """A path that should be a folder is a file."""


class IsAFolderError(SanetError, IsADirectoryError):
    """A path that should be a file is a folder."""


class ExportCheckError(UsageError):
    """The exported file does not compute what PyTorch computes; nothing was written."""


class OutputCheckError(UsageError):
    """Extra graph outputs (``mask``, ``confidence``) that cannot be added or do not match."""


class Int8Refused(UsageError):
    """The INT8 file lost more accuracy than allowed (or its accuracy could not be measured);
    nothing was written."""


class NonFiniteLossError(SanetError, RuntimeError):
    """The loss became NaN/inf; the message names the step, the files and the last checkpoint."""


class Interrupted(SanetError):
    """SIGINT/SIGTERM stopped the work after saving it; the message says how to continue.

    ``signal`` is the signal's name (``"SIGTERM"``)."""

    def __init__(self, message: str, signal: str = "SIGINT") -> None:
        super().__init__(message)
        self.signal = signal


class TrainingInterrupted(Interrupted, RuntimeError):
    """A training run stopped by a signal: the step finished, ``last.pt`` was saved.

    ``step`` is the number of optimiser steps saved."""

    def __init__(self, message: str, signal: str = "SIGINT", step: int = 0) -> None:
        super().__init__(message, signal)
        self.step = step


class ComparisonInterrupted(Interrupted, RuntimeError):
    """A signal stopped a comparison: every finished run is kept, the run in progress saved its
    ``last.pt``, and the same call again resumes."""


# The built-in types that count as user errors when sanet's own code raised them (a conversion
# such as int("x") inside a sanet function); a KeyError or TypeError is never one: those are bugs.
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


def is_user_error(err: BaseException) -> bool:
    """True for a problem the user can fix (print one line), False for a bug (keep the traceback).

    A :class:`SanetError` always is; a :data:`USER_ERROR_TYPES` exception is when sanet's own code
    raised it (the same type raised inside torch or numpy is a bug of ours: we validate first);
    a full disk, quota or read-only file system is wherever it happened.
    """
    if isinstance(err, SanetError):
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


# ---------------------------------------------------------------------------------------------
# Messages in the caller's words
# ---------------------------------------------------------------------------------------------

_FLAGS: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "sanet_flag_names", default=None
)
_UNSET = object()


def arg(name: str, value: object = _UNSET) -> str:
    """Parameter ``name`` (set to ``value``) as the caller writes it.

    From Python: ``out`` or ``out='runs/x'``; under the ``sanet`` command (:func:`flag_names`):
    ``--out`` or ``--out runs/x``; ``value=True`` of a switch is the flag alone (``--overwrite``).
    """
    flags = _FLAGS.get()
    if flags is not None and name in flags:
        flag = flags[name]
        return flag if value is _UNSET or value is True else f"{flag} {value}"
    if value is _UNSET:
        return name
    return f"{name}={value!r}"


def speaks_cli() -> bool:
    """True while the ``sanet`` command line runs the call (messages name its flags)."""
    return _FLAGS.get() is not None


@contextlib.contextmanager
def flag_names(flags: Mapping[str, str]) -> Iterator[None]:
    """Messages inside name parameters by these flags (``{"out": "--out", ...}``)."""
    token = _FLAGS.set(dict(flags))
    try:
        yield
    finally:
        _FLAGS.reset(token)


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest choice, or ``""`` when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


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
