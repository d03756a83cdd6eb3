"""The verbs of sanet as Python functions: each one call, returning a small result object.

Each verb keeps the safety rules of its ``sanet`` command (it refuses a folder holding something
it did not write, replaces nothing without ``overwrite=True``, writes atomically, keeps the
resume policy and stops cleanly on a signal) and raises :class:`sanet.errors.SanetError`
subclasses whose messages name the value and the fix. The ``sanet`` command line is a thin
shell over these functions (docs/python.md shows the whole workflow).
"""

from __future__ import annotations

from sanet.api.evaluation import EvalResult, evaluate
from sanet.api.prediction import PredictResult, predict_files

__all__ = [
    "EvalResult",
    "PredictResult",
    "evaluate",
    "predict_files",
]
