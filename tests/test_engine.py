"""Engine pieces: poly schedule, LR groups, resumable data order, seeded augmentation."""

from __future__ import annotations

import pytest
import torch

import sanet
from conftest import TINY_BACKBONE
from sanet.training import engine


def test_poly_schedule_per_iteration() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    sched = engine.poly_schedule(opt, total_steps=10, power=0.9)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.01 * (1 - i / 10) ** 0.9 for i in range(10)]
    assert lrs == pytest.approx(expected)
    assert opt.param_groups[0]["lr"] == 0.0


def test_head_parameters_get_the_multiplier() -> None:
    model = sanet.build_model("sanet", backbone=TINY_BACKBONE, num_classes=3)
    groups = engine.param_groups(model, lr=0.001, head_lr_mult=10, weight_decay=1e-4)
    assert [g["lr"] for g in groups] == [0.001, pytest.approx(0.01)]
    n_backbone = sum(p.numel() for p in groups[0]["params"])
    assert n_backbone == sum(p.numel() for p in model.backbone.parameters())
    assert n_backbone + sum(p.numel() for p in groups[1]["params"]) == sum(
        p.numel() for p in model.parameters()
    )


def test_sampler_resumes_mid_epoch_and_shards_without_overlap() -> None:
    full = engine.ResumableSampler(10, seed=3)
    full.set_epoch(2)
    order = [i for i, _ in full]
    assert sorted(order) == list(range(10))
    resumed = engine.ResumableSampler(10, seed=3)
    resumed.set_epoch(2, start=4)
    assert [i for i, _ in resumed] == order[4:] and len(resumed) == 6
    other = engine.ResumableSampler(10, seed=3)
    other.set_epoch(3)
    assert [i for i, _ in other] != order  # each epoch reshuffles
    shards = [
        engine.ResumableSampler(7, shuffle=False, rank=r, world_size=2, pad=False) for r in (0, 1)
    ]
    seen = [i for s in shards for i, _ in s]
    assert sorted(seen) == list(range(7))  # eval shards: every image once, none twice


def test_seeded_augmentation_is_per_sample_and_leaves_global_rng() -> None:
    data = [(torch.zeros(3, 4, 4, dtype=torch.uint8), torch.zeros(4, 4, dtype=torch.long))] * 3

    def noisy(image, mask):
        return image.float() + torch.rand(1), mask

    aug = engine.SeededAugmentation(data, noisy, seed=1)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = aug[(1, 5)][0]
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(aug[(1, 5)][0], a)  # same (epoch, index): same augmentation
    assert not torch.equal(aug[(2, 5)][0], a) and not torch.equal(aug[(1, 6)][0], a)


class _Pointwise(torch.nn.Module):
    """A BN-free toy segmenter: with no batch statistics, accumulation must equal one big batch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.conv(x)}


def test_gradient_accumulation_equals_one_large_batch() -> None:
    images, masks = torch.randn(4, 3, 8, 8), torch.randint(0, 4, (4, 8, 8))
    results = []
    for micro in ([(images, masks)], [(images[:2], masks[:2]), (images[2:], masks[2:])]):
        torch.manual_seed(0)
        model = _Pointwise()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        out = engine.train_step(model, sanet.SANetLoss(), micro, opt, scaler=None)
        results.append((model.conv.weight.detach().clone(), out.loss_terms["loss"]))
    # equal pixel counts per micro-batch, so the mean of the two means is the full-batch mean
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


def test_bf16_autocast_step_on_cpu() -> None:
    model = sanet.build_model("sanet", backbone=TINY_BACKBONE, num_classes=3)
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    result = engine.train_step(model, sanet.SANetLoss(), [(x, torch.randint(0, 3, (2, 64, 64)))],
                               opt, scaler=None, amp="bf16")  # fmt: skip
    assert bool(result.finite) and result.loss_terms["loss"].dtype == torch.float32
