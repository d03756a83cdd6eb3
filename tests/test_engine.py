"""Engine pieces: poly schedule, LR and weight-decay groups, SyncBN, resumable data order,
seeded augmentation, and what a step's loss is under gradient accumulation."""

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


def test_poly_schedule_with_linear_warmup() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = engine.poly_schedule(opt, total_steps=10, power=1.0, warmup_steps=3)
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # (step + 1) / 4 for steps 0..2, then 1; times the poly factor 1 − step/10
    assert lrs == pytest.approx([0.1 * 0.25, 0.1 * 0.5 * 0.9, 0.1 * 0.75 * 0.8, 0.07, 0.06])


def test_set_bn_momentum() -> None:
    model = sanet.build_model("fcn", backbone=TINY_BACKBONE, num_classes=3)
    engine.set_bn_momentum(model, 0.01)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) > 20 and {m.momentum for m in bns} == {0.01}


def test_param_groups_split_backbone_and_head_and_decay_every_parameter() -> None:
    """Backbone at lr, the rest at head_lr_mult × lr; weight decay on every parameter, BN and
    biases included, as the paper's code base (PyTorch-Encoding) passed one weight_decay to SGD."""
    model = sanet.build_model("sanet", backbone=TINY_BACKBONE, num_classes=3)
    groups = engine.param_groups(model, lr=0.001, head_lr_mult=10, weight_decay=1e-4)
    assert [g["name"] for g in groups] == ["backbone", "head"]
    assert [g["lr"] for g in groups] == [0.001, pytest.approx(0.01)]
    assert [g["weight_decay"] for g in groups] == [1e-4, 1e-4]
    ids = [{id(p) for p in g["params"]} for g in groups]
    assert ids[0] == {id(p) for p in model.backbone.parameters()}
    assert ids[1] == {id(p) for p in model.head.parameters()}
    assert not ids[0] & ids[1] and ids[0] | ids[1] == {id(p) for p in model.parameters()}
    bn = model.head.fuse[1]
    assert {id(bn.weight), id(bn.bias)} <= ids[1]  # BN's γ and β decay too


def test_sync_batchnorm_only_for_several_gpu_processes() -> None:
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    model = sanet.build_model("sanet", backbone=TINY_BACKBONE, num_classes=3)
    for world, device in ((1, cuda), (2, cpu)):
        assert engine.sync_batchnorm(model, world, device) is model
    state = {k: v.clone() for k, v in model.state_dict().items()}
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    synced = engine.sync_batchnorm(model, 2, cuda)  # converting needs no GPU
    kinds = [type(m) for m in synced.modules()]
    assert kinds.count(torch.nn.SyncBatchNorm) == n_bn > 0
    assert torch.nn.BatchNorm2d not in kinds
    after = synced.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)


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


class TinySeg(torch.nn.Module):
    """A BN-free segmenter with SANet's three outputs, so every loss term takes part."""

    def __init__(self) -> None:
        super().__init__()
        self.dense = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.mask = torch.nn.Conv2d(3, 4, 1)
        self.cat = torch.nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.dense(x), "mask": self.mask(x), "cat": self.cat(x.mean(dim=(2, 3)))}


def micro_batches_with_unequal_valid_pixels() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Micro-batch 1: all 128 pixels labelled. Micro-batch 2: 10 labelled pixels, one crop all
    ignored. A per-pixel mean over the step and the mean of per-micro-batch means differ."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 8, 8, generator=g)
    masks = torch.randint(0, 4, (4, 8, 8), generator=g)
    masks[2:] = 255
    masks[2, :2, :5] = torch.tensor([[0, 1, 1, 3, 3], [0, 0, 2, 2, 1]])
    return [(images[:2], masks[:2]), (images[2:], masks[2:])]


def loss_by_hand(out: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """L = CE(M) + 0.2·BCE(c) + 0.8·CE(D) over one micro-batch (Sec. 3), from log-softmax and
    the BCE formula: CE averaged over valid pixels, BCE over crops with a valid pixel."""
    valid = target != 255
    t = target.clamp(max=3)

    def ce(logits: torch.Tensor) -> torch.Tensor:
        nll = -logits.log_softmax(1).gather(1, t[:, None])[:, 0]  # (N, H, W)
        return nll[valid].mean()

    present = torch.stack([torch.bincount(t[i][valid[i]], minlength=4) > 0 for i in range(len(t))])
    c, y = out["cat"], present.float()
    bce = -(y * torch.nn.functional.logsigmoid(c) + (1 - y) * torch.nn.functional.logsigmoid(-c))
    return ce(out["mask"]) + 0.2 * bce[valid.flatten(1).any(1)].mean() + 0.8 * ce(out["out"])


def test_step_loss_is_the_mean_of_micro_batch_means() -> None:
    """With accumulation, a step's loss is (1/k) Σ_i L(B_i), each L(B_i) its own valid-pixel mean
    (docs/paper-fidelity.md) — not one mean over all valid pixels of the step."""
    micro = micro_batches_with_unequal_valid_pixels()
    torch.manual_seed(0)
    model = TinySeg()
    start = [p.detach().clone() for p in model.parameters()]
    per_micro = [loss_by_hand(model(x), y) for x, y in micro]
    want = sum(per_micro) / 2
    grads = torch.autograd.grad(want, list(model.parameters()))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)  # plain SGD: Δw = −gradient
    result = engine.train_step(model, sanet.SANetLoss(), micro, opt, scaler=None)
    torch.testing.assert_close(result.loss_terms["loss"], want.detach())
    for p, w0, g in zip(model.parameters(), start, grads, strict=True):
        torch.testing.assert_close(w0 - p.detach(), g, rtol=1e-5, atol=1e-6)
    # the other definition, one mean over every valid pixel of the step, differs here
    with torch.no_grad():
        images, masks = (torch.cat(t) for t in zip(*micro, strict=True))
        pooled = loss_by_hand(model(images), masks)
        assert abs(pooled - sum(loss_by_hand(model(x), y) for x, y in micro) / 2) > 0.05


def test_bf16_autocast_step_on_cpu() -> None:
    model = sanet.build_model("sanet", backbone=TINY_BACKBONE, num_classes=3)
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    result = engine.train_step(
        model,
        sanet.SANetLoss(),
        [(x, torch.randint(0, 3, (2, 64, 64)))],
        opt,
        scaler=None,
        amp="bf16",
    )
    assert bool(result.finite) and result.loss_terms["loss"].dtype == torch.float32
