"""sanet: Squeeze-and-Attention Networks for Semantic Segmentation (Zhong et al., CVPR 2020).

The public API: the models (``build_model``, ``SANet``, ``SANetLoss``, ``ConfusionMatrix``),
prediction (``Predictor``, ``run_protocol``) and the verbs (``train``, ``evaluate``,
``calibrate``, ``export``, ``audit_labels``, ``rank``, ``compare``, ``prepare``,
``check_data`` ...: :mod:`sanet.api`), with errors under one base class
(:class:`sanet.errors.SanetError`). docs/python.md shows the whole workflow;
docs/architecture.md how the sub-packages depend on each other.
"""

from __future__ import annotations

from sanet import data, errors, inference, metrics, models
from sanet.api import (
    AuditResult,
    BenchResult,
    CalibrationResult,
    CheckResult,
    CompareResult,
    DemoResult,
    EvalResult,
    ExportResult,
    ImportResult,
    PredictResult,
    PrepareResult,
    RankResult,
    ServingApp,
    SuggestResult,
    SweepResult,
    TrainResult,
    audit_labels,
    bench,
    calibrate,
    check_data,
    compare,
    demo,
    evaluate,
    explain,
    export,
    figure5,
    import_weights,
    predict_files,
    prepare,
    rank,
    serving_app,
    suggest,
    sweep,
    train,
)
from sanet.inference import EvalProtocol, Predictor
from sanet.inference.runs import run_protocol
from sanet.losses import SANetLoss
from sanet.metrics import ConfusionMatrix
from sanet.models import FCN, SANet, SegmentationModel, build_model, list_models, load_model
from sanet.version import __version__

__all__ = [
    "FCN",
    "AuditResult",
    "BenchResult",
    "CalibrationResult",
    "CheckResult",
    "CompareResult",
    "ConfusionMatrix",
    "DemoResult",
    "EvalProtocol",
    "EvalResult",
    "ExportResult",
    "ImportResult",
    "PredictResult",
    "Predictor",
    "PrepareResult",
    "RankResult",
    "SANet",
    "SANetLoss",
    "SegmentationModel",
    "ServingApp",
    "SuggestResult",
    "SweepResult",
    "TrainResult",
    "__version__",
    "audit_labels",
    "bench",
    "build_model",
    "calibrate",
    "check_data",
    "compare",
    "data",
    "demo",
    "errors",
    "evaluate",
    "explain",
    "export",
    "figure5",
    "import_weights",
    "inference",
    "list_models",
    "load_model",
    "metrics",
    "models",
    "predict_files",
    "prepare",
    "rank",
    "run_protocol",
    "serving_app",
    "suggest",
    "sweep",
    "train",
]
