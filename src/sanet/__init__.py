"""sanet: Squeeze-and-Attention Networks for Semantic Segmentation (Zhong et al., CVPR 2020).

The public API. Sub-packages: ``sanet.models``, ``sanet.data``, ``sanet.metrics``,
``sanet.inference``, ``sanet.training``, ``sanet.viz``, ``sanet.serve`` (``docs/architecture.md``
shows how they depend on each other).
"""

from __future__ import annotations

from sanet import data, inference, metrics, models
from sanet.inference import EvalProtocol, Predictor
from sanet.losses import SANetLoss
from sanet.metrics import ConfusionMatrix
from sanet.models import FCN, SANet, SegmentationModel, build_model, list_models, load_model

__version__ = "0.1.0"

__all__ = [
    "FCN",
    "ConfusionMatrix",
    "EvalProtocol",
    "Predictor",
    "SANet",
    "SANetLoss",
    "SegmentationModel",
    "__version__",
    "build_model",
    "data",
    "inference",
    "list_models",
    "load_model",
    "metrics",
    "models",
]
