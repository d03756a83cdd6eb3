"""sanet: Squeeze-and-Attention Networks for Semantic Segmentation (Zhong et al., CVPR 2020)."""

from __future__ import annotations

from sanet import models
from sanet.inference import Predictor
from sanet.losses import SANetLoss
from sanet.models import FCN, SANet, SegmentationModel, build_model, list_models

__version__ = "0.1.0"

__all__ = [
    "FCN", "Predictor", "SANet", "SANetLoss", "SegmentationModel", "__version__", "build_model",
    "list_models", "models",
]  # fmt: skip
