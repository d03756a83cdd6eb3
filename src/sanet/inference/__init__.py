"""Inference: the paper's evaluation protocol (``protocol.py``) and images in, masks out
(``predictor.py``)."""

from __future__ import annotations

from sanet.inference.predictor import (
    Predictor,
    evaluate,
    image_to_tensor,
    load_rgb,
    normalize,
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
    "MIN_INPUT", "PAPER_SCALES", "EvalProtocol", "Predictor", "evaluate", "image_to_tensor",
    "load_rgb", "normalize", "predict_mask", "predict_proba", "scale_probs",
]  # fmt: skip
