"""Inference: the paper's evaluation protocol (``protocol.py``), images in, masks out
(``predictor.py``), the onnxruntime backend for exported files (``onnx_backend.py``), and trust:
calibrated confidence (``confidence.py``, ``calibration.py``) and the label audit (``audit.py``)."""

from __future__ import annotations

from sanet.inference.confidence import Calibration, read_calibration
from sanet.inference.onnx_backend import OnnxModel, read_onnx_metadata
from sanet.inference.predictor import (
    Predictor,
    evaluate_pairs,
    image_to_tensor,
    load_rgb,
    normalize,
    open_model,
)
from sanet.inference.protocol import (
    MIN_INPUT,
    PAPER_SCALES,
    EvalProtocol,
    predict_mask,
    predict_proba,
    scale_probs,
)

__all__ = [
    "MIN_INPUT",
    "PAPER_SCALES",
    "Calibration",
    "EvalProtocol",
    "OnnxModel",
    "Predictor",
    "evaluate_pairs",
    "image_to_tensor",
    "load_rgb",
    "normalize",
    "open_model",
    "predict_mask",
    "predict_proba",
    "read_calibration",
    "read_onnx_metadata",
    "scale_probs",
]
