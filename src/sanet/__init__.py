"""sanet: Squeeze-and-Attention Networks for Semantic Segmentation (Zhong et al., CVPR 2020).

The public API. Sub-packages: ``sanet.models``, ``sanet.data``, ``sanet.metrics``,
``sanet.inference``, ``sanet.training``, ``sanet.viz``, ``sanet.serve`` (``docs/architecture.md``
shows how they depend on each other).
"""

from __future__ import annotations

from sanet import data, errors, inference, metrics, models
from sanet.api import EvalResult, PredictResult, evaluate, predict_files
from sanet.inference import EvalProtocol, Predictor
from sanet.inference.runs import run_protocol
from sanet.losses import SANetLoss
from sanet.metrics import ConfusionMatrix
from sanet.models import FCN, SANet, SegmentationModel, build_model, list_models, load_model
from sanet.version import __version__

__all__ = [
    "FCN",
    "ConfusionMatrix",
    "EvalProtocol",
    "EvalResult",
    "PredictResult",
    "Predictor",
    "SANet",
    "SANetLoss",
    "SegmentationModel",
    "__version__",
    "build_model",
    "data",
    "errors",
    "evaluate",
    "inference",
    "list_models",
    "load_model",
    "metrics",
    "models",
    "predict_files",
    "run_protocol",
]
