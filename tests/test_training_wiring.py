"""How a run's steps are wired, against expectations computed independently in the test: the
poly LR at every step (Sec. 4: per iteration, not per epoch), a fresh shuffle every epoch, the
data position a resume starts from under gradient accumulation, and the two guards that keep a
bad step from being applied (inf gradients under a finite loss; fp16's loss scaler)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import interrupt_after, tiny_recipe
from sanet.config import load_config
from sanet.training import engine
from sanet.training.trainer import Trainer, TrainingInterrupted

N_IMAGES, BATCH, SEED, LR = 12, 4, 7, 0.01
TINY = tiny_recipe(
    images=N_IMAGES,
    batch=BATCH,
    train__epochs=2,
    train__lr=LR,
    train__log_every=1,
    train__val_every=0,
    train__deterministic=True,
    train__seed=SEED,
)
STEPS_PER_EPOCH = N_IMAGES // BATCH  # 3


def _trainer(run: Path, *extra: str, resume: bool = False) -> Trainer:
    return Trainer(load_config(None, [*TINY, *extra]), run, resume=resume)


def _epoch_order(epoch: int) -> list[int]:
    """The documented order of epoch ``epoch``: a permutation drawn from a generator seeded with
    ``seed · 100003 + epoch`` (docs/reproducibility.md)."""
    g = torch.Generator().manual_seed(SEED * 100_003 + epoch)
    return torch.randperm(N_IMAGES, generator=g).tolist()


@pytest.fixture
def items_read(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Every ``(index, epoch)`` the training loader reads, in order (workers off: in-process)."""
    seen: list[tuple[int, int]] = []
    real = engine.SeededAugmentation.__getitem__

    def getitem(self, item):
        if self.transforms is not None:  # the training set (validation has no transforms)
            seen.append(tuple(item))
        return real(self, item)

    monkeypatch.setattr(engine.SeededAugmentation, "__getitem__", getitem)
    return seen


def _lrs(trainer: Trainer) -> dict[int, float]:
    return {r["step"]: r["lr"] for r in trainer.log.records() if r["kind"] == "train"}


def _poly(step: int, total: int) -> float:
    """The backbone group's LR after ``step`` optimiser steps: ``lr · batch/16 · (1 − s/T)^0.9``."""
    return LR * BATCH / 16 * (1 - step / total) ** 0.9


def test_lr_follows_the_poly_schedule_at_every_step(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path / "run")
    trainer.fit()
    total = 2 * STEPS_PER_EPOCH
    assert _lrs(trainer) == pytest.approx({s: _poly(s, total) for s in range(1, total + 1)})


def test_every_epoch_reads_every_image_once_in_its_own_order(tmp_path, items_read) -> None:
    _trainer(tmp_path / "run").fit()
    epochs = [[i for i, e in items_read if e == epoch] for epoch in (0, 1)]
    assert [e for _, e in items_read] == [0] * N_IMAGES + [1] * N_IMAGES
    assert all(sorted(order) == list(range(N_IMAGES)) for order in epochs)
    assert epochs[0] != epochs[1]  # not the same shuffle every epoch
    assert epochs == [_epoch_order(0), _epoch_order(1)]


def test_resume_under_accumulation_continues_at_the_next_unread_image(
    tmp_path, monkeypatch, items_read
) -> None:
    """accumulate=2: a step reads 2 micro-batches of 2 images. Stopped after step 1, the run has
    read 4 images of epoch 0; the resumed run must start at the 5th, and end where an
    uninterrupted run ends (weights bit for bit, LR at every step)."""
    extra = ("train.accumulate=2",)
    full = _trainer(tmp_path / "full", *extra)
    full.fit()
    items_read.clear()
    with monkeypatch.context() as m:
        interrupt_after(m, 1)
        with pytest.raises(TrainingInterrupted):
            _trainer(tmp_path / "cut", *extra).fit()
    assert [i for i, _ in items_read] == _epoch_order(0)[:BATCH]
    items_read.clear()
    resumed = _trainer(tmp_path / "cut", *extra, resume=True)
    resumed.fit()
    expected = [(i, 0) for i in _epoch_order(0)[BATCH:]] + [(i, 1) for i in _epoch_order(1)]
    assert items_read == expected
    total = 2 * STEPS_PER_EPOCH
    assert _lrs(resumed) == pytest.approx({s: _poly(s, total) for s in range(1, total + 1)})
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------- the guards of a step


class InfGrad(torch.autograd.Function):
    """A finite loss (0) whose gradient is +inf: what an overflow in a backward pass gives."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.sum() * 0

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return torch.full((2, 2, 8, 8), float("inf"))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.conv(x)}


def _step(criterion, scaler=None, amp="none"):
    torch.manual_seed(0)
    model = Net()
    opt = engine.make_sgd([{"params": list(model.parameters())}], lr=0.1, momentum=0.9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = (torch.randn(2, 3, 8, 8), torch.randint(0, 2, (2, 8, 8)))
    result = engine.train_step(model, criterion, [batch], opt, scaler, amp)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    return result, changed


def test_inf_gradients_under_a_finite_loss_skip_the_step() -> None:
    result, changed = _step(lambda out, target: {"loss": InfGrad.apply(out["out"])})
    assert torch.isfinite(result.loss_terms["loss"])  # the loss alone would not tell
    assert not bool(result.finite) and changed == []


def test_fp16_loss_scaler_backs_off_after_an_overflow_and_skips_it() -> None:
    """GradScaler's own rule (torch.amp docs): an inf gradient skips the step and multiplies the
    scale by backoff_factor (0.5), from the initial 2**16: 32768 afterwards."""
    scaler = torch.amp.GradScaler("cpu")
    result, changed = _step(lambda out, t: {"loss": InfGrad.apply(out["out"])}, scaler, "fp16")
    assert changed == []
    assert scaler.get_scale() == 2.0**16 * 0.5
    finite = lambda out, t: {"loss": nn.functional.cross_entropy(out["out"].float(), t)}  # noqa: E731
    result, changed = _step(finite, scaler, "fp16")
    assert bool(result.finite) and changed and scaler.get_scale() == 2.0**15  # no growth yet
    assert scaler._get_growth_tracker() == 1  # one good step counted towards growth
