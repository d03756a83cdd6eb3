"""How much the INT8 gate can tell (docs/deploy.md, "INT8 for CPUs", step 4): the mIoU of the
fp32 and int8 graphs on the same images, the drop and its standard error over the images, and
the least number of images for that error to mean something."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sanet.errors import arg
from sanet.inference.onnx_backend import OnnxModel
from sanet.inference.predictor import evaluate_pairs
from sanet.metrics import ConfusionMatrix

# The gate's least number of evaluation images (docs/deploy.md, "the gate"): the standard error
# of the drop is estimated from the images themselves (n - 1 degrees of freedom), and below 20
# that estimate is off by more than 1 / sqrt(2 (n - 1)) = 16 % of itself (71 % at 2 images).
MIN_GATE_IMAGES = 20


def image_matrices(
    path: Path, pairs: Sequence[tuple[Any, Any]], num_classes: int, protocol: Any
) -> list[np.ndarray]:
    """One ``K×K`` confusion matrix per pair: the ONNX file at ``path`` under ``protocol``
    (sanet's evaluation loop, one image at a time)."""
    model = OnnxModel(path)
    return [
        evaluate_pairs(model, [pair], num_classes, protocol).matrix_cpu().numpy() for pair in pairs
    ]


def _miou(matrix: np.ndarray) -> float:
    cm = ConfusionMatrix(matrix.shape[0])
    cm.matrix = torch.as_tensor(matrix)
    return float(cm.compute()["mIoU"])


def measured_drop(fp32: Sequence[np.ndarray], int8: Sequence[np.ndarray]) -> dict[str, Any]:
    """The mIoU of each graph over the images (their confusion matrices summed), the drop
    ``fp32 − int8`` and its jackknife standard error over the images, ``drop_se``
    (``sqrt((n-1)/n · Σ (d₋ᵢ − mean d₋)²)``, ``d₋ᵢ`` the drop without image ``i``; ``None``
    below 2 images). The mIoU of a dataset is not a mean over images, so the jackknife (not
    the spread of per-image mIoUs) estimates its uncertainty; the pairing of the two graphs on
    the same images is kept."""
    totals = [np.sum(np.stack(m), axis=0) for m in (fp32, int8)]
    miou = [_miou(t) for t in totals]
    n, se = len(fp32), None
    if n >= 2:
        loo = np.array(
            [_miou(totals[0] - a) - _miou(totals[1] - b) for a, b in zip(fp32, int8, strict=True)]
        )
        se = float(np.sqrt((n - 1) / n * np.sum((loo - loo.mean()) ** 2)))
    return {"fp32": miou[0], "int8": miou[1], "drop": miou[0] - miou[1], "drop_se": se}


def gate_warning(measured: Mapping[str, Any], images: int, max_drop: float) -> str | None:
    """Why a passed gate does not show the drop to be within ``max_drop``: too few images to
    tell (:data:`MIN_GATE_IMAGES`), or ``drop + 2·drop_se`` above ``max_drop``; ``None``: it
    does."""
    more = f"Evaluate on more images ({arg('eval_images')}, {arg('eval_data')})"
    if images < MIN_GATE_IMAGES:
        return (
            f"the gate measured the int8 drop on {images} image{'s' * (images != 1)}; it needs "
            f"at least {MIN_GATE_IMAGES} to say how uncertain the drop is. {more} before "
            "trusting this file."
        )
    drop, se = measured["drop"], measured["drop_se"]
    if drop + 2 * se > max_drop:
        return (
            f"the int8 drop {drop:.4f} ± {se:.4f} (standard error over {images} images) may "
            f"exceed {arg('max_miou_drop', max_drop)}: drop + 2 SE = {drop + 2 * se:.4f}. "
            f"{more} to tell."
        )
    return None


__all__ = ["MIN_GATE_IMAGES", "gate_warning", "image_matrices", "measured_drop"]
