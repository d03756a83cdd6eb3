"""Training faults (docs/reliability.md): the non-finite guard, the resume policy, data errors
inside DataLoader workers, temporary files of interrupted writes, a run stopped at its end.

Each test name carries the id (``r04`` ...) that the table in docs/reliability.md cites.
"""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import tiny_recipe
from sanet.cli import main
from sanet.config import Config, load_config, resume_conflicts
from sanet.training import engine
from sanet.training.runlog import RunLog
from sanet.training.trainer import Trainer, TrainingInterrupted

TINY = tiny_recipe(
    size=64,
    images=12,
    batch=4,
    train__lr=0.01,
    train__log_every=2,
    train__deterministic=True,
    train__seed=7,
)


# ---------------------------------------------------------------- r11: the non-finite guard


class TinyNet(nn.Module):
    """BatchNorm (statistics a forward pass updates) and a 1×1 conv (momentum, weight decay)."""

    def __init__(self) -> None:
        super().__init__()
        self.bn, self.conv = nn.BatchNorm2d(3), nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.conv(self.bn(x))}


class PoisonableLoss(nn.Module):
    """Cross-entropy; NaN while ``poison`` is set (an exploding step, a bad batch)."""

    poison = False

    def forward(self, out: dict[str, torch.Tensor], target: torch.Tensor) -> dict:
        loss = nn.functional.cross_entropy(out["out"], target)
        return {"loss": loss * float("nan") if self.poison else loss}


def _train(
    batches, nan_at: int | None, nan_in: str = "loss"
) -> tuple[list[dict[str, torch.Tensor]], list[bool]]:
    """Weights, BN statistics and momentum before the first step and after each step of a
    fused-SGD run, and the ``finite`` flag of each step. Step ``nan_at`` gets a NaN in its loss
    (an exploding step) or in its images (a bad file)."""
    torch.manual_seed(0)
    model, criterion = TinyNet(), PoisonableLoss()
    params = [{"params": list(model.parameters()), "weight_decay": 1e-4}]
    opt = engine.make_sgd(params, lr=0.1, momentum=0.9)

    def state() -> dict[str, torch.Tensor]:
        momentum = {
            f"m.{n}": opt.state[p]["momentum_buffer"].clone() for n, p in model.named_parameters()
        }
        return {**{k: v.clone() for k, v in model.state_dict().items()}, **momentum}

    states, flags = [state()], []
    for step, (images, masks) in enumerate(batches, start=1):
        criterion.poison = step == nan_at and nan_in == "loss"
        if step == nan_at and nan_in == "images":
            images = images.clone().index_fill_(2, torch.tensor([0]), float("nan"))
        result = engine.train_step(model, criterion, [(images, masks)], opt, None)
        flags.append(bool(result.finite))  # the test may sync; the trainer does at log intervals
        states.append(state())
    return states, flags


# the very first step (fresh momentum) with a NaN loss; a later one with a NaN pixel
@pytest.mark.reliability("r11")
@pytest.mark.parametrize(("nan_at", "nan_in"), [(1, "loss"), (3, "images")])
def test_a_nan_step_changes_nothing(nan_at: int, nan_in: str) -> None:
    g = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(2, 3, 8, 8, generator=g), torch.randint(0, 2, (2, 8, 8), generator=g))
        for _ in range(5)
    ]
    states, flags = _train(batches, nan_at, nan_in)
    assert flags == [step != nan_at for step in range(1, 6)]
    before, after = states[nan_at - 1], states[nan_at]  # states[0]: before the first step
    assert all(torch.equal(after[k], before[k]) for k in after)  # BN stats, momentum included
    assert all(not before[k].any() for k in before if k.startswith("m.")) or nan_at > 1
    # Independent reference: a run that never saw the bad batch ends with the same weights.
    reference, _ = _train(batches[: nan_at - 1] + batches[nan_at:], None)
    assert all(torch.equal(states[-1][k], reference[-1][k]) for k in reference[-1])


@pytest.mark.reliability("r11")
def test_an_inf_loss_with_finite_gradients_is_skipped() -> None:
    """The loss is checked itself, not only through its gradients: an inf that enters as a
    constant (an overflowed auxiliary term, a logged-only part) leaves the gradients finite."""

    class InfConstant(nn.Module):
        def forward(self, out: dict[str, torch.Tensor], target: torch.Tensor) -> dict:
            loss = nn.functional.cross_entropy(out["out"], target)
            return {"loss": loss + torch.tensor(float("inf"))}

    torch.manual_seed(0)
    model = TinyNet()
    opt = engine.make_sgd([{"params": list(model.parameters())}], lr=0.1, momentum=0.9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = (torch.randn(2, 3, 8, 8), torch.randint(0, 2, (2, 8, 8)))
    result = engine.train_step(model, InfConstant(), [batch], opt, None)
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert bool(torch.isfinite(grads).all())  # the gradients alone would let it through
    assert not bool(result.finite)
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)


@pytest.mark.reliability("r11")
def test_the_guard_makes_no_host_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    model, criterion = TinyNet(), PoisonableLoss()
    criterion.poison = True
    opt = engine.make_sgd([{"params": list(model.parameters())}], lr=0.1, momentum=0.9)
    batch = (torch.randn(2, 3, 8, 8), torch.randint(0, 2, (2, 8, 8)))
    syncs: list[str] = []
    for name in ("__bool__", "item", "tolist", "__float__", "__int__", "numpy", "cpu"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(
            torch.Tensor, name, lambda *a, _n=name, _r=real, **k: (syncs.append(_n), _r(*a, **k))[1]
        )
    engine.train_step(model, criterion, [batch], opt, None)  # a NaN step, skipped on the device
    monkeypatch.undo()
    assert syncs == [] and getattr(opt, "_step_supports_amp_scaling", False)


class HostSyncs(TorchDispatchMode):
    """Records the ATen ops that make a CUDA device wait for the host: reading a value
    (``item``), and everything whose output size depends on values (``nonzero``, boolean-mask
    indexing, ``masked_select``, ``unique``). On the CPU they cost nothing, so this is how a CPU
    test sees the syncs a GPU run would make."""

    VALUE_OPS = ("_local_scalar_dense", "is_nonzero", "nonzero", "masked_select", "_unique")

    def __init__(self) -> None:
        super().__init__()
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__
        flat = [a for x in args for a in (x if isinstance(x, (list, tuple)) else [x])]
        bool_index = name.startswith(("index.", "index_put")) and any(
            isinstance(a, torch.Tensor) and a.dtype == torch.bool for a in flat[1:]
        )
        if name.startswith(self.VALUE_OPS) or bool_index:
            self.syncs.append(name)
        return func(*args, **(kwargs or {}))


def _real_step(criterion: nn.Module) -> list[str]:
    """One train step of a tiny SANet with ``criterion``, recording host syncs."""
    import sanet

    torch.manual_seed(0)
    model = sanet.build_model("sanet", backbone="resnet10t", num_classes=3).train()
    opt = engine.make_sgd(engine.param_groups(model, 0.01, 10, 1e-4), lr=0.01, momentum=0.9)
    target = torch.randint(0, 3, (2, 33, 47))
    target[0, :5] = 255  # ignored pixels
    target[1] = 255  # a crop with nothing labelled
    with HostSyncs() as mode:
        result = engine.train_step(
            model, criterion, [(torch.randn(2, 3, 33, 47), target)], opt, None
        )
    assert bool(result.finite)
    return mode.syncs


def test_a_real_sanet_step_with_the_real_loss_makes_no_host_sync() -> None:
    """Issue 17: the trainer's SANetLoss (labels checked by the datasets) makes no host sync in
    a whole step of a real SANet; with its label check on, the detector sees the one it makes."""
    from sanet import SANetLoss

    assert _real_step(SANetLoss(check_labels=False)) == []
    assert _real_step(SANetLoss()) != []  # the label check reads a value: the detector works


def test_the_trainer_uses_the_loss_without_host_syncs(tmp_path: Path) -> None:
    trainer = Trainer(load_config(None, TINY), tmp_path / "run")
    assert trainer.criterion.check_labels is False


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_guard_makes_no_host_sync_on_cuda() -> None:
    """Not run where this was written (no GPU): torch's sync debug mode raises on a sync."""
    device = torch.device("cuda")
    model, criterion = TinyNet().to(device), PoisonableLoss()
    opt = engine.make_sgd([{"params": list(model.parameters())}], lr=0.1, momentum=0.9)
    batch = (torch.randn(2, 3, 8, 8, device=device), torch.randint(0, 2, (2, 8, 8), device=device))
    before = [p.detach().clone() for p in model.parameters()]
    criterion.poison = True
    torch.cuda.set_sync_debug_mode("error")
    try:
        result = engine.train_step(model, criterion, [batch], opt, None)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert not result.finite.item()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_real_sanet_step_makes_no_host_sync_on_cuda() -> None:
    """The CPU test above, confirmed by torch's CUDA sync debug mode (raises on a sync)."""
    import sanet

    device = torch.device("cuda")
    model = sanet.build_model("sanet", backbone="resnet10t", num_classes=3).to(device).train()
    opt = engine.make_sgd(engine.param_groups(model, 0.01, 10, 1e-4), lr=0.01, momentum=0.9)
    x = torch.randn(2, 3, 33, 47, device=device)
    target = torch.randint(0, 3, (2, 33, 47), device=device)
    target[1] = 255
    engine.train_step(model, sanet.SANetLoss(check_labels=False), [(x, target)], opt, None)
    torch.cuda.synchronize()  # warm-up done (cuDNN autotuning may sync once)
    torch.cuda.set_sync_debug_mode("error")
    try:
        result = engine.train_step(
            model, sanet.SANetLoss(check_labels=False), [(x, target)], opt, None
        )
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert result.finite.item()


# ---------------------------------------------------------------------- r08: resume policy


@pytest.mark.reliability("r08")
@pytest.mark.parametrize(
    ("change", "refused"),
    [
        ("data.num_workers=0", None),
        ("train.log_every=50", None),
        ("train.val_every=5", None),
        ("train.device=cpu", None),
        ("train.epochs=120", None),
        ("train.max_steps=0", None),
        ("data.root=/moved/data", None),
        ("eval.stride=100", None),
        ("train.batch_size=8", "train.batch_size: 16 -> 8"),
        ("train.accumulate=2", "train.accumulate: 1 -> 2"),
        ("train.seed=1", "train.seed: 0 -> 1"),
        ("train.lr=0.01", "train.lr: 0.001 -> 0.01"),
        ("train.epochs=40", "train.epochs: 80 -> 40"),
        ("train.max_steps=10", "train.max_steps"),
        ("model.backbone=resnet10t", "model.backbone"),
        ("loss.alpha=0.4", "loss.alpha"),
        ("data.crop_size=320", "data.crop_size"),
        ("train.amp=bf16", "train.amp"),
    ],
)
def test_resume_accepts_speed_knobs_and_refuses_what_changes_the_run(change, refused) -> None:
    conflicts = resume_conflicts(Config().to_dict(), load_config(None, [change]))
    if refused is None:
        assert conflicts == []
    else:
        assert len(conflicts) == 1 and conflicts[0].startswith(refused), conflicts


@pytest.mark.reliability("r08")
def test_keys_a_saved_config_predates_count_as_their_defaults() -> None:
    saved = Config().to_dict()
    del saved["train"]["accumulate"], saved["eval"]  # written before these keys existed
    assert resume_conflicts(saved, Config()) == []


# ----------------------------------------------------- r04: data errors in DataLoader workers


@pytest.mark.reliability("r04")
def test_a_bad_file_in_a_worker_is_one_line_naming_it(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for split in ("train", "val"):
        for stem in "abcd":
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "masks" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8)).save(
                root / "images" / split / f"{stem}.png"
            )
            Image.fromarray(rng.integers(0, 2, (64, 64), np.uint8)).save(
                root / "masks" / split / f"{stem}.png"
            )
    (root / "classes.txt").write_text("bg\nfg\n")
    bad = root / "images/train/c.png"
    bad.write_bytes(bad.read_bytes()[:80])
    config = tmp_path / "c.yaml"
    config.write_text("model: {backbone: resnet10t}\n")
    rc = main(
        [
            "train",
            str(config),
            "--out",
            str(tmp_path / "run"),
            "--set",
            *TINY,
            "data.dataset=folder",
            f"data.root={root}",
            "data.options={}",
            "data.num_workers=1",
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert f"error: {bad}: the image is truncated or corrupt" in err
    assert "DataLoader worker" not in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


# ------------------------------------------------ r09: interrupted writes leave nothing behind


@pytest.mark.reliability("r09")
def test_a_run_removes_what_interrupted_writes_left(tmp_path: Path) -> None:
    run = tmp_path / "run"
    left = [
        run / "checkpoints/.last.pt.x1y2z3.sanet-tmp",
        run / "model/.model.safetensors.a.sanet-tmp",
        run / ".config.yaml.b.sanet-tmp",
        run / "plots/.loss.png.c.sanet-tmp",
    ]
    for path in left:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    (run / "checkpoints/notes.tmp").write_text("the user's")
    Trainer(load_config(None, TINY), run)  # starting (or resuming) a run cleans up
    assert not any(path.exists() for path in left)
    assert (run / "checkpoints/notes.tmp").exists()
    # metrics.jsonl is appended to, not replaced: a kill during an append cuts its last line
    log = RunLog(run, tensorboard=False)
    log.path.write_text('{"kind": "train", "step": 1}\n{"kind": "train", "step": 2}\n{"kind": "tr')
    log.truncate_after(1)  # what a resume from step 1 does
    assert log.records() == [{"kind": "train", "step": 1}]


# ------------------------------------------- r14: a run stopped between its end and validation


@pytest.mark.reliability("r14")
@pytest.mark.slow
def test_a_run_stopped_at_its_last_step_validates_when_resumed(tmp_path, monkeypatch) -> None:
    real, calls = engine.train_step, []

    def step(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:  # the last of 3 steps: the signal arrives before the validation
            signal.raise_signal(signal.SIGINT)
        return out

    with monkeypatch.context() as m:
        m.setattr(engine, "train_step", step)
        with pytest.raises(TrainingInterrupted):
            Trainer(load_config(None, TINY), tmp_path / "run").fit()
    summary = Trainer(load_config(None, TINY), tmp_path / "run", resume=True).fit()
    assert summary["steps"] == 3 and len(summary["history"]) == 1
    assert 0 <= summary["best_mIoU"] <= 1 and (tmp_path / "run/model/model.safetensors").is_file()
    again = Trainer(load_config(None, TINY), tmp_path / "run", resume=True).fit()  # finished
    assert again["history"] == summary["history"] and again["best_mIoU"] == summary["best_mIoU"]
