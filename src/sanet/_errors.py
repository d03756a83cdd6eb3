"""Errors a user can fix, and helpers for messages that tell them how (imports nothing from sanet)."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable


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
