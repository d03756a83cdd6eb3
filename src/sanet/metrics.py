"""Segmentation metrics from a dataset-accumulated confusion matrix (docs/design.md, "Protocol").

``ConfusionMatrix`` counts ``(ground truth, prediction)`` pixel pairs with one ``torch.bincount``
per batch on the tensors' own device, sums the counts across processes under DDP, and derives:

- pixAcc = correctly labelled pixels / labelled pixels (ignore pixels excluded);
- IoU_k = TP_k / (TP_k + FP_k + FN_k);
- mIoU = mean of IoU_k over the classes that appear in the prediction or in the ground truth
  (``MIOU_CONVENTION``); classes absent from both have no IoU (``None``) and are left out.

Rows of the matrix are ground truth, columns are predictions (torchmetrics' convention).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch

from sanet.conventions import IGNORE_INDEX
from sanet.errors import UsageError

logger = logging.getLogger(__name__)

MIOU_CONVENTION = (
    "mIoU = mean of per-class IoU = TP/(TP+FP+FN) over the classes present in the prediction or "
    "the ground truth of the accumulated confusion matrix; classes absent from both have IoU "
    "null and are excluded. pixAcc = correct/labelled pixels; ignore_index pixels are excluded."
)


class ConfusionMatrix:
    """Accumulates a ``K×K`` confusion matrix over a dataset.

    Args:
        num_classes: K; class ids are ``0..K-1``.
        ignore_index: target value whose pixels are not counted (255).
        device: where the counts live; by default the device of the first ``update``.

    Shape:
        - pred: ``(N, H, W)`` integer class ids, or ``(N, K, H, W)`` logits/probabilities
          (argmax over dim 1). ``(H, W)`` / ``(K, H, W)`` for a single image also work.
        - target: ``(N, H, W)`` (or ``(H, W)``) integer ids in ``0..K-1`` or ``ignore_index``.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = IGNORE_INDEX,
        device: torch.device | str | None = None,
    ) -> None:
        if not isinstance(num_classes, int) or num_classes < 1:
            raise UsageError(f"num_classes must be a positive int, got {num_classes!r}.")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix: torch.Tensor | None = None
        if device is not None:
            self.matrix = self._zeros(torch.device(device))

    def _zeros(self, device: torch.device) -> torch.Tensor:
        return torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        """Zero the counts (keeps the device)."""
        if self.matrix is not None:
            self.matrix.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch of predictions; see the class docstring for shapes."""
        if pred.is_floating_point() or pred.ndim == target.ndim + 1:
            if pred.ndim != target.ndim + 1 or pred.shape[-3] != self.num_classes:
                raise UsageError(
                    f"Logits must be (N, {self.num_classes}, H, W) for targets (N, H, W); got "
                    f"pred {tuple(pred.shape)} and target {tuple(target.shape)}."
                )
            pred = pred.argmax(dim=-3)
        if pred.shape != target.shape:
            raise UsageError(
                f"Prediction and target shapes differ: {tuple(pred.shape)} vs "
                f"{tuple(target.shape)}. Resize the prediction to the mask's size first."
            )
        if self.matrix is None:
            self.matrix = self._zeros(target.device)
        k = self.num_classes
        target = target.to(self.matrix.device, torch.int64).flatten()
        pred = pred.to(self.matrix.device, torch.int64).flatten()
        valid = target != self.ignore_index
        target, pred = target[valid], pred[valid]
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= k):
            bad = torch.unique(target[(target < 0) | (target >= k)])[:10].tolist()
            raise UsageError(
                f"Target holds labels {bad} outside 0..{k - 1} (ignore index "
                f"{self.ignore_index}). Check the dataset's num_classes and label mapping."
            )
        if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= k):
            raise UsageError(f"Prediction holds class ids outside 0..{k - 1}.")
        # One bincount over the flattened (gt, pred) pair index: row = gt, column = pred.
        counts = torch.bincount(target * k + pred, minlength=k * k)
        self.matrix += counts.view(k, k)

    def all_reduce(self) -> None:
        """Sum the counts over all processes (torch.distributed); a no-op when not distributed."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        if self.matrix is None:  # a rank that saw no batch still has to join the collective
            device = torch.device("cuda", torch.cuda.current_device())
            if dist.get_backend() != "nccl":
                device = torch.device("cpu")
            self.matrix = self._zeros(device)
        dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)

    def compute(self) -> dict[str, Any]:
        """Metrics of the counts so far.

        Returns:
            ``{"pixAcc": float, "mIoU": float, "IoU": [float | None] * K, "convention": str,
            "labelled_pixels": int}``. ``IoU[k]`` is ``None`` for a class absent from both
            prediction and ground truth. With no labelled pixel at all pixAcc and mIoU are 0.0.
        """
        mat = self.matrix_cpu().double()
        tp = mat.diag()
        gt, pr = mat.sum(dim=1), mat.sum(dim=0)
        union = gt + pr - tp
        total = float(mat.sum())
        iou: list[float | None] = [
            float(t / u) if u > 0 else None
            for t, u in zip(tp.tolist(), union.tolist(), strict=True)
        ]
        present = [v for v in iou if v is not None]
        if total == 0:
            logger.warning("ConfusionMatrix.compute: no labelled pixel was counted.")
        return {
            "pixAcc": float(tp.sum()) / total if total else 0.0,
            "mIoU": sum(present) / len(present) if present else 0.0,
            "IoU": iou,
            "convention": MIOU_CONVENTION,
            "labelled_pixels": int(total),
        }

    def matrix_cpu(self) -> torch.Tensor:
        """The raw counts as a ``(K, K)`` int64 CPU tensor (rows: ground truth, cols: prediction)."""
        if self.matrix is None:
            return self._zeros(torch.device("cpu"))
        return self.matrix.detach().cpu()


def iou_as_floats(iou: Sequence[float | None]) -> list[float]:
    """``None`` entries as ``nan``, for plotting and numpy."""
    return [math.nan if v is None else float(v) for v in iou]


def per_class_table(
    result: dict[str, Any],
    class_names: Sequence[str] | None = None,
    title: str = "Per-class IoU",
    confusion: torch.Tensor | None = None,
) -> Any:
    """A ``rich.table.Table`` of per-class IoU (and pixel counts when ``confusion`` is given).

    ``result`` is the dict from :meth:`ConfusionMatrix.compute`. The caption states pixAcc, mIoU
    and the mIoU convention.
    """
    from rich.table import Table

    iou = result["IoU"]
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(iou))]
    if len(names) != len(iou):
        raise UsageError(f"{len(names)} class names for {len(iou)} classes.")
    table = Table(title=title, caption=f"pixAcc {result['pixAcc']:.4f}  mIoU {result['mIoU']:.4f}")
    table.add_column("id", justify="right")
    table.add_column("class")
    table.add_column("IoU", justify="right")
    if confusion is not None:
        table.add_column("GT pixels", justify="right")
        table.add_column("pred pixels", justify="right")
        gt, pr = confusion.sum(dim=1).tolist(), confusion.sum(dim=0).tolist()
    for k, (name, value) in enumerate(zip(names, iou, strict=True)):
        cells = [str(k), name, "—" if value is None else f"{value:.4f}"]
        if confusion is not None:
            cells += [f"{int(gt[k]):,}", f"{int(pr[k]):,}"]
        table.add_row(*cells)
    return table
