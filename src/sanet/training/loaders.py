"""The data side of a run: its datasets and loaders, built from the ``data`` and ``train``
sections of a :class:`~sanet.config.Config` (the trainer's only window onto the data)."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch.utils.data import DataLoader

from sanet.config import Config
from sanet.data import SyntheticDataset, build_dataset
from sanet.data.check import check_training_labels
from sanet.data.datasets import DatasetSubset
from sanet.data.splits import kfold_indices
from sanet.data.transforms import train_transforms
from sanet.training import engine
from sanet.training.runtime import Dist

logger = logging.getLogger(__name__)


def build_data(cfg: Config) -> tuple[Any, Any]:
    """Train and val datasets of ``cfg.data`` (raw: transforms are applied by the loaders);
    with ``data.folds`` the other folds and the held-out fold of ``data.train_split``.

    Both splits pass :func:`~sanet.data.check.check_training_labels` first (files on disk; the
    synthetic scenes hold every class by construction): a split whose labelled pixels hold one
    class, or binary masks read with 255 as ignore, is refused before the run starts.
    """
    d = cfg.data
    root = d.root or None
    train = build_dataset(d.dataset, root, split=d.train_split, **d.options)
    # with folds, both come out of the train split: checking it checks them
    val = None if d.folds else build_dataset(d.dataset, root, split=d.val_split, **d.options)
    for split in (train, val):
        if split is not None and not isinstance(split, SyntheticDataset):
            for message in check_training_labels(split):
                logger.warning("%s", message)
    if d.folds:
        rest, held = kfold_indices(len(train), d.folds, d.fold)
        name = f"{train.name} fold {d.fold}/{d.folds}"
        return DatasetSubset(train, rest, f"{name} (train)"), DatasetSubset(train, held, name)
    return train, val


def make_loaders(cfg: Config, train_set: Any, val_set: Any, dist_: Dist, micro_batch: int) -> tuple:
    """Train loader (seeded augmentation, resumable order) and val loader (batch 1, unpadded)."""
    d, t = cfg.data, cfg.train
    train_aug = engine.SeededAugmentation(
        train_set,
        train_transforms(d.base_size, d.crop_size, scale_range=tuple(d.scale_range)),
        seed=t.seed,
    )
    val_aug = engine.SeededAugmentation(val_set, None)  # uint8: evaluate() normalises
    sampler = engine.ResumableSampler(len(train_set), t.seed, True, dist_.rank, dist_.world_size)
    val_sampler = engine.ResumableSampler(
        len(val_set), 0, False, dist_.rank, dist_.world_size, pad=False
    )
    common = dict(
        num_workers=d.num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=d.num_workers > 0,
        generator=torch.Generator(),  # the loader must not draw from the global RNG (exact resume)
    )
    train_loader = DataLoader(train_aug, micro_batch, sampler=sampler, drop_last=True, **common)
    val_loader = DataLoader(val_aug, 1, sampler=val_sampler, **common)
    return train_loader, val_loader, sampler
