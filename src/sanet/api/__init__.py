"""The verbs of sanet as Python functions: each one call, returning a small result object.

Each verb keeps the safety rules of its ``sanet`` command (it refuses a folder holding something
it did not write, replaces nothing without ``overwrite=True``, writes atomically, keeps the
resume policy and stops cleanly on a signal) and raises :class:`sanet.errors.SanetError`
subclasses whose messages name the value and the fix. The ``sanet`` command line is a thin
shell over these functions (docs/python.md shows the whole workflow).
"""

from __future__ import annotations

from sanet.api.audit import AuditResult, RankResult, audit_labels, rank
from sanet.api.backends import BackendComparison, compare_backends
from sanet.api.bench import BenchResult, bench
from sanet.api.calibration import CalibrationResult, calibrate
from sanet.api.data import CheckResult, PrepareResult, check_data, prepare
from sanet.api.evaluation import EvalResult, evaluate
from sanet.api.experiments import CompareResult, SweepResult, compare, sweep
from sanet.api.export import ExportResult, export
from sanet.api.figures import explain, figure5
from sanet.api.prediction import PredictResult, predict_files
from sanet.api.serving import ServingApp, serve, serving_app
from sanet.api.suggest import SuggestResult, suggest
from sanet.api.training import DemoResult, TrainResult, demo, train
from sanet.api.weights import ImportResult, import_weights

__all__ = [
    "AuditResult",
    "BackendComparison",
    "BenchResult",
    "CalibrationResult",
    "CheckResult",
    "CompareResult",
    "DemoResult",
    "EvalResult",
    "ExportResult",
    "ImportResult",
    "PredictResult",
    "PrepareResult",
    "RankResult",
    "ServingApp",
    "SuggestResult",
    "SweepResult",
    "TrainResult",
    "audit_labels",
    "bench",
    "calibrate",
    "check_data",
    "compare",
    "compare_backends",
    "demo",
    "evaluate",
    "explain",
    "export",
    "figure5",
    "import_weights",
    "predict_files",
    "prepare",
    "rank",
    "serve",
    "serving_app",
    "suggest",
    "sweep",
    "train",
]
