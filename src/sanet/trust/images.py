"""What ``sanet calibrate``'s measuring pass keeps of each image (docs/trust.md): its loss curve
for the risk control, its per-class curves with ``per_class``, and the statistics the server's
drift detection compares requests with (the ``reference``).

Everything is computed from the calibrated confidence and the arg-max mask of the forwards the
pass makes anyway; one image at a time, kept as curves on :data:`~sanet.trust.risk.THRESHOLDS`
so that any threshold chosen afterwards can be read off them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sanet.conventions import IGNORE_INDEX
from sanet.trust.risk import THRESHOLDS, at_or_above


@dataclass
class ClassCurves:
    """One image's counts for the pixels predicted as one class, at every threshold."""

    wrong: np.ndarray  # labelled, wrong and sure (confidence ≥ λ)
    labelled: int  # labelled pixels predicted as the class
    sure: np.ndarray  # every pixel predicted as the class and sure
    pixels: int  # every pixel predicted as the class
    labelled_sure: np.ndarray  # labelled pixels predicted as the class and sure


@dataclass
class ImageStats:
    """Per image, in dataset order: names, loss curves, sure shares, reference statistics."""

    num_classes: int
    per_class: bool = False
    names: list[str] = field(default_factory=list)
    losses: list[np.ndarray] = field(default_factory=list)  # sure-and-wrong share of labelled
    sure: list[np.ndarray] = field(default_factory=list)  # share of all pixels sure
    labelled: list[int] = field(default_factory=list)
    pixels: list[int] = field(default_factory=list)
    mean_confidence: list[float] = field(default_factory=list)
    class_shares: list[list[float]] = field(default_factory=list)
    classes: list[dict[int, ClassCurves]] = field(default_factory=list)
    sure_labelled: np.ndarray = field(default_factory=lambda: np.zeros(len(THRESHOLDS)))

    def add(self, name: str, conf: torch.Tensor, pred: torch.Tensor, labels: torch.Tensor) -> None:
        """One image: ``conf`` its calibrated confidence, ``pred`` the arg-max mask and
        ``labels`` the label (ids and 255), all ``(H, W)``."""
        valid = labels != IGNORE_INDEX
        wrong = valid & (pred != labels)
        n, total = int(valid.sum()), int(conf.numel())
        self.names.append(name)
        self.labelled.append(n)
        self.pixels.append(total)
        self.losses.append(at_or_above(conf[wrong]) / max(n, 1))
        self.sure.append(at_or_above(conf) / max(total, 1))
        self.sure_labelled += at_or_above(conf[valid])
        self.mean_confidence.append(float(conf.double().mean()))
        counts = torch.bincount(pred.reshape(-1).long().cpu(), minlength=self.num_classes)
        self.class_shares.append((counts.double() / max(total, 1)).tolist())
        if self.per_class:
            self.classes.append(
                {
                    int(c): ClassCurves(
                        at_or_above(conf[wrong & (pred == c)]),
                        int((valid & (pred == c)).sum()),
                        at_or_above(conf[pred == c]),
                        int(counts[c]),
                        at_or_above(conf[valid & (pred == c)]),
                    )
                    for c in torch.unique(pred).tolist()
                }
            )

    def matrix(self) -> np.ndarray:
        """The loss curves ``(n, len(THRESHOLDS))``."""
        return np.stack(self.losses) if self.losses else np.zeros((0, len(THRESHOLDS)))

    def class_losses(self, c: int) -> np.ndarray:
        """Class ``c``'s loss curves over the images where it is predicted on a labelled pixel:
        sure-and-wrong pixels predicted as ``c`` over the labelled pixels predicted as ``c``."""
        rows = [
            image[c].wrong / image[c].labelled
            for image in self.classes
            if c in image and image[c].labelled
        ]
        return np.stack(rows) if rows else np.zeros((0, len(THRESHOLDS)))

    def at(self, thresholds: Sequence[float | None] | float) -> tuple[np.ndarray, np.ndarray]:
        """Per image, the sure-and-wrong share of its labelled pixels and the unsure share of all
        its pixels under one threshold, or one per class (``None``: every pixel of the class
        unsure; per class needs ``per_class``)."""
        if not isinstance(thresholds, Sequence):
            j = _index(thresholds)
            return self.matrix()[:, j], 1 - np.array([s[j] for s in self.sure])
        index = [None if t is None else _index(t) for t in thresholds]
        risk, unsure = [], []
        for image, n, total in zip(self.classes, self.labelled, self.pixels, strict=True):
            wrong = sure = 0.0
            for c, curves in image.items():
                if index[c] is not None:
                    wrong += curves.wrong[index[c]]
                    sure += curves.sure[index[c]]
            risk.append(wrong / max(n, 1))
            unsure.append(1 - sure / max(total, 1))
        return np.array(risk), np.array(unsure)

    def labelled_unsure(self, thresholds: Sequence[float | None] | float) -> float:
        """Share of all the images' labelled pixels that are unsure under one threshold, or one
        per class (as :meth:`at`)."""
        if not isinstance(thresholds, Sequence):
            sure = self.sure_labelled[_index(thresholds)]
        else:
            index = [None if t is None else _index(t) for t in thresholds]
            sure = sum(
                curves.labelled_sure[index[c]]
                for image in self.classes
                for c, curves in image.items()
                if index[c] is not None
            )
        return float(1 - sure / max(sum(self.labelled), 1))

    def reference(self, unsure: np.ndarray | None) -> dict[str, Any]:
        """The stored ``reference`` (docs/trust.md): per image, mean confidence, unsure share
        (``None`` without a threshold), class shares and pixels."""
        return {
            "images": len(self.names),
            "per_image": {
                "mean_confidence": [round(v, 6) for v in self.mean_confidence],
                "unsure_share": None if unsure is None else [round(float(v), 6) for v in unsure],
                "class_shares": [[round(v, 6) for v in row] for row in self.class_shares],
                "pixels": list(self.pixels),
            },
        }


def _index(threshold: float) -> int:
    j = int(np.searchsorted(THRESHOLDS, threshold))
    assert j < len(THRESHOLDS) and THRESHOLDS[j] == threshold, threshold
    return j
