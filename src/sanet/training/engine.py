"""Step-level training machinery: optimiser groups, poly schedule, resumable data order,
per-sample seeded augmentation, the train step with AMP and the non-finite guard. (Validation
is ``sanet.inference.evaluate_pairs``, the same loop as ``sanet eval``.)

Nothing here reads a config: ``trainer.py`` wires these pieces from one.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, Sampler

PairTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def param_groups(
    model: nn.Module,
    lr: float,
    head_lr_mult: float,
    weight_decay: float,
    layer_decay: float = 1.0,
) -> list[dict[str, Any]]:
    """The pretrained backbone (``model.backbone.body``) at ``lr``, everything else (the heads,
    a ViT's feature pyramid) at ``head_lr_mult × lr`` (Sec. 4). Frozen parameters
    (``requires_grad=False``) are left out.

    ``layer_decay < 1`` (a ViT backbone; BEiT's layer-wise decay, Bao et al. 2022): the body's
    layers from the input up, ``[embeddings, block 0, ..., block d-1, rest]`` (``n = d + 2``),
    train at ``lr · layer_decay^(n-1-k)``: the last block at ``lr · decay``, the embeddings at
    ``lr · decay^(d+1)``; group ``"backbone"`` keeps the rest at ``lr``.
    """
    module = getattr(model, "module", model)  # unwrap DDP
    body = module.backbone.body
    ids = {id(p) for p in body.parameters()}
    head = [p for p in module.parameters() if id(p) not in ids and p.requires_grad]
    groups = [{"params": [p for p in body.parameters() if p.requires_grad], "name": "backbone"}]
    groups[0]["lr"] = lr
    if layer_decay != 1.0:
        layers = module.backbone.layer_groups()
        groups[0]["params"] = [p for p in layers[-1] if p.requires_grad]
        for k, params in enumerate(layers[:-1]):
            scale = layer_decay ** (len(layers) - 1 - k)
            kept = [p for p in params if p.requires_grad]
            groups.append({"params": kept, "lr": lr * scale, "name": f"backbone.layer{k}"})
    groups.append({"params": head, "lr": lr * head_lr_mult, "name": "head"})
    return [{**g, "weight_decay": weight_decay} for g in groups]


def sync_batchnorm(model: nn.Module, world_size: int, device: torch.device) -> nn.Module:
    """BatchNorm → SyncBatchNorm when several processes train on GPUs, so batch statistics
    cover the global batch as with the paper's synchronised BN (Sec. 4); otherwise ``model``
    unchanged (one process has the whole micro-batch; SyncBatchNorm has no CPU kernel)."""
    if world_size > 1 and device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def poly_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int, power: float = 0.9, warmup_steps: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """``lr = base · (1 − step/total)^power``, stepped once per iteration (Sec. 4).

    With ``warmup_steps`` the factor is also multiplied by ``(step + 1) / (warmup_steps + 1)``
    for the first ``warmup_steps`` steps (a linear warm-up; not in the paper)."""

    def factor(step: int) -> float:
        poly = max(0.0, 1.0 - step / max(total_steps, 1)) ** power
        return poly * min(1.0, (step + 1) / (warmup_steps + 1))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def set_bn_momentum(model: nn.Module, momentum: float) -> None:
    """Set the running-statistics momentum of every BatchNorm layer of ``model``."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = momentum


class ResumableSampler(Sampler):
    """Epoch-seeded shuffled order, sharded over ranks, that can start mid-epoch.

    Yields ``(dataset_index, epoch)`` pairs so that :class:`SeededAugmentation` can seed each
    sample's augmentation from ``(seed, epoch, index)``: the data a step sees depends only on
    the step, not on workers or on whether the run was resumed.

    Like ``DistributedSampler``, training shards are padded to equal length (a few samples are
    repeated); evaluation should use ``shuffle=False, pad=False`` so nothing counts twice.
    """

    def __init__(
        self,
        length: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        pad: bool = True,
    ) -> None:
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
    ``(seed, epoch, index)``, leaving the caller's global RNG untouched; ``None`` passes the
    pairs as they are (validation: the evaluation loop normalises)."""

    def __init__(self, dataset: Dataset, transforms: PairTransform | None, seed: int = 0) -> None:
        self.dataset, self.transforms, self.seed = dataset, transforms, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int] | int) -> tuple[torch.Tensor, torch.Tensor, int]:
        index, epoch = item if isinstance(item, tuple) else (item, 0)
        image, mask = self.dataset[index]
        if self.transforms is None:
            return image, mask, index
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + epoch) * 10_000_019 + index)
            image, mask = self.transforms(image, mask)
        return image, mask, index


@dataclass
class StepResult:
    loss_terms: dict[str, torch.Tensor]  # detached, on the device (no host sync)
    finite: torch.Tensor  # bool scalar on the device; False: the update was skipped


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_sgd(param_groups: list[dict[str, Any]], lr: float, momentum: float) -> torch.optim.SGD:
    """SGD (Sec. 4) whose update :func:`train_step` can skip on the device, without a host sync.

    Fused where torch has the kernel (CPU and CUDA): its ``found_inf`` argument, the one
    ``GradScaler`` uses, skips the update inside the kernel. The momentum buffers start at zero
    instead of as the fused kernel's uninitialised first-step buffers, which a skipped first step
    would leave behind (the maths is unchanged: ``0.9·0 + g = g`` exactly).
    """
    try:
        optimizer = torch.optim.SGD(param_groups, lr=lr, momentum=momentum, fused=True)
    except RuntimeError:  # no fused kernel for this device: train_step syncs once per step
        optimizer = torch.optim.SGD(param_groups, lr=lr, momentum=momentum)
    if momentum:
        for group in optimizer.param_groups:
            for p in group["params"]:
                optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p)
    return optimizer


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``optimizer.load_state_dict`` that keeps this optimiser's implementation (fused or not):
    that is this machine's choice, not the checkpoint's."""
    flags = [{k: g.get(k) for k in ("fused", "foreach")} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, kept in zip(optimizer.param_groups, flags, strict=True):
        group.update(kept)


def train_step(
    model: nn.Module,
    criterion: nn.Module,
    micro_batches: list[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    amp: str = "none",
) -> StepResult:
    """One optimiser step over ``micro_batches`` (gradient accumulation), skipped when the loss
    or a gradient is NaN/inf (never train on NaN: docs/reliability.md, r11); no host sync with a
    fused optimiser (:func:`make_sgd`): the caller reads ``finite`` at its next sync.

    A skipped step leaves the model exactly as it was: the BatchNorm statistics that its forward
    passes updated are put back too (a NaN image would otherwise poison them for evaluation).

    The step's loss is the mean of the micro-batches' losses, each the criterion's own mean over
    its valid pixels (``L = (1/k) Σ_i L(B_i)``), and DDP averages that over processes: so
    ``accumulate=k`` on one process takes the same step as ``k`` processes with one micro-batch
    each, and a micro-batch with few valid pixels weighs as much as a full one, as each GPU's
    batch did in the paper's code (docs/paper-fidelity.md, "Training recipe").
    """
    device = micro_batches[0][0].device
    buffers = list(model.buffers())
    before = [b.clone() for b in buffers]  # BN statistics: a few values per channel
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
    # Under a GradScaler inf gradients are its scale search, and scaler.step skips them itself.
    finite = step_is_finite(total["loss"], optimizer, check_grads=scaler is None)
    apply_step(optimizer, scaler, finite)
    for buffer, old in zip(buffers, before, strict=True):
        buffer.copy_(torch.where(finite, buffer, old))  # on the device, no host sync
    return StepResult(total, finite)


def step_is_finite(
    loss: torch.Tensor, optimizer: torch.optim.Optimizer, check_grads: bool = True
) -> torch.Tensor:
    """Bool scalar on the device: the loss and (``check_grads``) every gradient are finite, on
    every rank.

    An inf loss can have finite gradients, so both are checked; under DDP the flag is
    all-reduced so that every rank skips the same steps and the replicas stay equal.
    """
    finite = torch.isfinite(loss)
    if check_grads:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        finite = finite & torch.isfinite(torch.nn.utils.get_total_norm(grads))
    if dist.is_available() and dist.is_initialized():
        flag = finite.float()
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)  # queued on the device, no host sync
        finite = flag.bool()
    return finite


def apply_step(
    optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None, finite: torch.Tensor
) -> None:
    """``optimizer.step()`` unless ``finite`` is False, decided on the device where possible."""
    if scaler is not None:
        # GradScaler skips a step whose gradients are inf/NaN by itself (that is its job), and a
        # NaN loss has NaN gradients.
        scaler.step(optimizer)
        scaler.update()
    elif getattr(optimizer, "_step_supports_amp_scaling", False):  # fused (make_sgd)
        optimizer.found_inf = (~finite).float()  # read by the fused kernel, as GradScaler does
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    elif bool(finite):  # no fused kernel: this host sync is the price
        optimizer.step()
