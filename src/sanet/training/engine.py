"""Step-level training machinery: optimiser groups, poly schedule, resumable data order,
per-sample seeded augmentation, the train step with AMP and the non-finite guard, evaluation.

Nothing here reads a config: ``trainer.py`` wires these pieces from one.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Sampler

from sanet.metrics import ConfusionMatrix

PairTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def param_groups(
    model: nn.Module, lr: float, head_lr_mult: float, weight_decay: float
) -> list[dict[str, Any]]:
    """Backbone at ``lr``, everything else (the heads) at ``head_lr_mult × lr`` (Sec. 4)."""
    module = getattr(model, "module", model)  # unwrap DDP
    backbone = list(module.backbone.parameters())
    ids = {id(p) for p in backbone}
    head = [p for p in module.parameters() if id(p) not in ids]
    return [
        {"params": backbone, "lr": lr, "weight_decay": weight_decay, "name": "backbone"},
        {"params": head, "lr": lr * head_lr_mult, "weight_decay": weight_decay, "name": "head"},
    ]


def poly_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int, power: float = 0.9
) -> torch.optim.lr_scheduler.LambdaLR:
    """``lr = base · (1 − step/total)^power``, stepped once per iteration (Sec. 4)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: max(0.0, 1.0 - step / max(total_steps, 1)) ** power
    )


class ResumableSampler(Sampler):
    """Epoch-seeded shuffled order, sharded over ranks, that can start mid-epoch.

    Yields ``(dataset_index, epoch)`` pairs so that :class:`SeededAugmentation` can seed each
    sample's augmentation from ``(seed, epoch, index)``: the data a step sees depends only on
    the step, not on workers or on whether the run was resumed.

    Like ``DistributedSampler``, training shards are padded to equal length (a few samples are
    repeated); evaluation should use ``shuffle=False, pad=False`` so nothing counts twice.
    """

    def __init__(
        self, length: int, seed: int = 0, shuffle: bool = True, rank: int = 0,
        world_size: int = 1, pad: bool = True,
    ) -> None:  # fmt: skip
        self.length, self.seed, self.shuffle, self.pad = length, seed, shuffle, pad
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Use epoch ``epoch``'s order and skip its first ``start`` samples of this rank."""
        self.epoch, self.start = epoch, start

    def _order(self) -> list[int]:
        if not self.shuffle:
            order = list(range(self.length))
        else:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.length, generator=g).tolist()
        if self.pad and self.world_size > 1:
            per_rank = math.ceil(self.length / self.world_size)
            order += order[: per_rank * self.world_size - len(order)]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self._order()[self.start :]:
            yield index, self.epoch

    def __len__(self) -> int:
        return max(len(self._order()) - self.start, 0)


class SeededAugmentation(Dataset):
    """Applies ``transforms`` to ``dataset[index]`` under a generator seeded by
    ``(seed, epoch, index)``, leaving the caller's global RNG untouched."""

    def __init__(self, dataset: Dataset, transforms: PairTransform, seed: int = 0) -> None:
        self.dataset, self.transforms, self.seed = dataset, transforms, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int] | int) -> tuple[torch.Tensor, torch.Tensor, int]:
        index, epoch = item if isinstance(item, tuple) else (item, 0)
        image, mask = self.dataset[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + epoch) * 10_000_019 + index)
            image, mask = self.transforms(image, mask)
        return image, mask, index


@dataclass
class StepResult:
    loss_terms: dict[str, torch.Tensor]  # detached, on the device (no host sync)
    finite: torch.Tensor  # bool scalar on the device


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def train_step(
    model: nn.Module,
    criterion: nn.Module,
    micro_batches: list[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    amp: str = "none",
    skip_nonfinite: bool = False,
) -> StepResult:
    """One optimiser step over ``micro_batches`` (gradient accumulation); no host sync unless
    ``skip_nonfinite`` asks to check the loss before the update."""
    device = micro_batches[0][0].device
    optimizer.zero_grad(set_to_none=True)
    total: dict[str, torch.Tensor] = {}
    for i, (images, masks) in enumerate(micro_batches):
        no_sync = getattr(model, "no_sync", None)  # DDP: all-reduce only on the last micro-batch
        ctx = no_sync() if no_sync and i < len(micro_batches) - 1 else contextlib.nullcontext()
        with ctx:
            with autocast(device, amp):
                terms = criterion(model(images), masks)
            loss = terms["loss"] / len(micro_batches)
            (scaler.scale(loss) if scaler else loss).backward()
        for k, v in terms.items():
            total[k] = total.get(k, 0) + v.detach() / len(micro_batches)
    finite = torch.isfinite(total["loss"])
    if skip_nonfinite and not bool(finite):
        optimizer.zero_grad(set_to_none=True)  # documented `train.nonfinite=skip`: drop this step
        return StepResult(total, finite)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return StepResult(total, finite)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Any,
    num_classes: int,
    device: torch.device,
    amp: str = "none",
    channels_last: bool = False,
    on_batch: Callable[[], None] | None = None,
) -> ConfusionMatrix:
    """Single-scale evaluation: a confusion matrix accumulated over ``loader`` (not reduced)."""
    model.eval()
    cm = ConfusionMatrix(num_classes, ignore_index=255, device=device)
    for images, masks, *_ in loader:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            logits = model(images)["out"]
        cm.update(logits.argmax(1), masks.to(device, non_blocking=True))
        if on_batch:
            on_batch()
    return cm
