"""Split lists: reading the official ``<split>.txt`` files and the VOC train_aug arithmetic."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from sanet.errors import NotFoundError, UsageError


def read_split_list(path: Path, kind: str, fix: str) -> list[str]:
    """Stems listed one per line (blank lines and extra columns ignored)."""
    if not path.exists():
        raise NotFoundError(f"{kind}: split list {path} not found. Fix: {fix}")
    ids = [ln.split()[0] for ln in path.read_text().splitlines() if ln.strip()]
    if not ids:
        raise UsageError(f"{kind}: split list {path} is empty. Fix: {fix}")
    return ids


def train_aug_ids(
    sbd_train: Iterable[str],
    sbd_val: Iterable[str],
    voc_train: Iterable[str],
    voc_val: Iterable[str],
) -> list[str]:
    """The standard augmented train list: SBD train ∪ SBD val ∪ VOC train − VOC val (sorted)."""
    return sorted((set(sbd_train) | set(sbd_val) | set(voc_train)) - set(voc_val))


def kfold_indices(n: int, folds: int, fold: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """``(other folds, fold)``: the sample indices ``0..n-1`` shuffled by ``seed`` and dealt to
    ``folds`` folds in turn (sizes differ by at most one), each list in increasing order."""
    import numpy as np

    if folds < 2 or not 0 <= fold < folds:
        raise UsageError(f"Need folds ≥ 2 and 0 ≤ fold < folds, got folds={folds}, fold={fold}.")
    if n < folds:
        raise UsageError(f"{n} images cannot be split into {folds} folds; use fewer folds.")
    order = np.random.default_rng(seed).permutation(n)
    held = sorted(int(i) for i in order[fold::folds])
    taken = set(held)
    return [i for i in range(n) if i not in taken], held
