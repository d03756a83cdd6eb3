"""SANet's three-term loss (paper Sec. 3, Fig. 4): ``L = L_mask + α·L_cat + β·L_dense``.

The loss lives outside the model and returns every term for logging.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sanet.conventions import IGNORE_INDEX
from sanet.errors import UsageError


def class_presence(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Multi-hot ``(N, K)`` vector of the classes present among the valid pixels of each crop
    (L_cat's target, Sec. 3), computed without a host sync: pixels that hold no class id (the
    ignore value 255) fill a spare column that is dropped.

    Shape: target ``(N, H, W)`` int64 → ``(N, K)`` float.
    """
    n = target.shape[0]
    is_class = (target >= 0) & (target < num_classes)
    column = torch.where(is_class, target, num_classes)  # K = the spare column
    idx = torch.arange(n, device=target.device)[:, None, None] * (num_classes + 1) + column
    present = torch.zeros(n * (num_classes + 1), device=target.device)
    present.index_fill_(0, idx.flatten(), 1.0)  # one scatter for the whole batch
    return present.view(n, num_classes + 1)[:, :num_classes]


def check_labels(target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
    """Raise a ``ValueError`` naming the first label outside ``0..K-1`` and ``ignore_index``.

    One host sync on a GPU: :class:`SANetLoss` runs it unless told the labels were checked
    already (sanet's datasets map every mask through a label table that refuses other values).
    """
    bad = (target != ignore_index) & ((target < 0) | (target >= num_classes))
    if bad.any():
        raise UsageError(
            f"Label {int(target[bad][0])} is outside 0..{num_classes - 1} (and is not "
            f"ignore_index {ignore_index}). Check the dataset's num_classes or run "
            "`sanet check-data`."
        )


def cross_entropy_or_zero(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Pixel cross-entropy averaged over valid pixels; exactly 0 (not NaN) when none is valid."""
    total = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")
    count = (target != ignore_index).sum()
    return total / count.clamp(min=1)


class SANetLoss(nn.Module):
    """``L = L_mask + α·L_cat + β·L_dense`` (α = 0.2, β = 0.8: the best of the paper's sweep, Fig. 4).

    - ``L_mask``, ``L_dense``: pixel cross-entropy on the upsampled M and D, ignoring 255.
    - ``L_cat``: BCE-with-logits of c against the classes present in each crop's valid pixels,
      averaged over the crops that have any valid pixel.

    A crop whose pixels are all ignored contributes 0 to every term (never NaN).

    ``check_labels`` (default on) refuses labels outside ``0..K-1`` and ``ignore_index`` with a
    clear error, at the price of one host sync per call on a GPU; the trainer turns it off, as
    its datasets refuse such masks when they read them, and then the loss makes no host sync.

    A model that returns only ``"out"`` (the FCN baseline) is trained with plain cross-entropy:
    ``L = L_dense`` and the other terms are reported as 0.

    Shape:
        - outputs: ``{"out": (N, K, H, W), "mask": (N, K, H, W), "cat": (N, K)}``
        - target: ``(N, H, W)`` int64 with ids 0..K−1 and ``ignore_index``.
        - returns: ``{"loss", "mask", "cat", "dense"}``, each a scalar tensor.
    """

    def __init__(
        self,
        alpha: float = 0.2,
        beta: float = 0.8,
        ignore_index: int = IGNORE_INDEX,
        check_labels: bool = True,
    ) -> None:
        super().__init__()
        self.alpha, self.beta, self.ignore_index = alpha, beta, ignore_index
        self.check_labels = check_labels

    def forward(
        self, outputs: dict[str, torch.Tensor], target: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        dense_logits = outputs["out"]
        if dense_logits.shape[-2:] != target.shape[-2:]:
            raise UsageError(
                f"Logits {tuple(dense_logits.shape[-2:])} and target {tuple(target.shape[-2:])} "
                "differ in size; the model's output must be upsampled to the mask's size."
            )
        if self.check_labels:
            check_labels(target, dense_logits.shape[1], self.ignore_index)
        dense = cross_entropy_or_zero(dense_logits.float(), target, self.ignore_index)
        if "mask" not in outputs:  # FCN baseline: plain pixel cross-entropy
            zero = dense.new_zeros(())
            return {"loss": dense, "mask": zero, "cat": zero, "dense": dense}
        mask = cross_entropy_or_zero(outputs["mask"].float(), target, self.ignore_index)
        cat_logits = outputs["cat"].float()
        present = class_presence(target, cat_logits.shape[1])
        # A crop with no valid pixel has no presence label: it contributes 0 to L_cat too.
        labelled = (target != self.ignore_index).flatten(1).any(dim=1).float()  # (N,)
        bce = F.binary_cross_entropy_with_logits(cat_logits, present, reduction="none")
        cat = (bce * labelled[:, None]).sum() / (labelled.sum() * bce.shape[1]).clamp(min=1)
        loss = mask + self.alpha * cat + self.beta * dense
        return {"loss": loss, "mask": mask, "cat": cat, "dense": dense}

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, ignore_index={self.ignore_index}"
