"""Training runs end to end on tiny synthetic data: exact resume, crash-safe checkpoints,
signals, the non-finite guard, and that a small SANet actually learns."""

from __future__ import annotations

import json
import os
import signal
import stat
from pathlib import Path

import pytest
import torch
import yaml

from conftest import interrupt_after, tiny_recipe
from sanet import load_model
from sanet._files import safe_torch_load
from sanet.config import load_config
from sanet.training import engine
from sanet.training.trainer import NonFiniteLossError, Trainer, TrainingInterrupted

TINY = tiny_recipe(
    size=64,
    images=12,
    batch=4,
    backbone="resnet18d",
    train__epochs=2,
    train__lr=0.01,
    train__log_every=2,
    train__val_every=1,
    train__deterministic=True,
    train__seed=7,
)


def _trainer(run: Path, *extra: str, resume: bool = False) -> Trainer:
    return Trainer(load_config(None, TINY + list(extra)), run, resume=resume)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return safe_torch_load(run / "checkpoints/last.pt")["model"]


@pytest.mark.parametrize("stop_after", [2, 3])  # mid-epoch 1 (3 steps/epoch); an epoch boundary
def test_interrupted_and_resumed_run_ends_bit_identical(tmp_path, monkeypatch, stop_after) -> None:
    _trainer(tmp_path / "full").fit()
    with monkeypatch.context() as m:
        interrupt_after(m, stop_after)
        # from Python the message names the call that resumes (the CLI's voice: test below)
        with pytest.raises(TrainingInterrupted, match=r"Resume with: sanet\.train\(.*resume=True"):
            _trainer(tmp_path / "cut").fit()
    state = safe_torch_load(tmp_path / "cut/checkpoints/last.pt")["state"]
    assert state["global_step"] == stop_after
    summary = _trainer(tmp_path / "cut", resume=True).fit()
    assert summary["steps"] == 6
    full, cut = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert full.keys() == cut.keys()
    for key in full:
        assert torch.equal(full[key], cut[key]), key
    assert (tmp_path / "cut/checkpoints/best.pt").is_file()


@pytest.mark.reliability("r02")
def test_run_directory_contents_and_modes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _trainer(run, "train.epochs=1").fit()
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
        "model/config.json",
        "model/model.safetensors",
        "model/README.md",
        "plots/loss.png",
        "plots/val_miou.png",
    ):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    umask = os.umask(0)
    os.umask(umask)
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in run.rglob("*") if p.is_file()}
    assert set(modes.values()) == {0o666 & ~umask}, modes  # r02: what the umask gives, not 0600
    model, meta = load_model(run)
    assert meta["class_names"][0] == "background" and model.num_classes == len(meta["class_names"])
    # the model card's front matter holds the run's logged mIoU (tests/test_model_card.py: more)
    val = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"val"' in x]
    card = yaml.safe_load((run / "model/README.md").read_text().split("---\n")[1])
    metric = card["model-index"][0]["results"][0]["metrics"][0]
    assert metric["value"] == round(max(v["mIoU"] for v in val), 4)


@pytest.mark.reliability("r11")
def test_nonfinite_loss_stops_at_the_sync_with_no_nan_step_applied(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path / "nan", "train.epochs=1", "train.log_every=10")  # sync: step 3
    real_criterion, real_step, after_step = trainer.criterion, engine.train_step, []

    def poisoned(outputs, target):  # from step 2 on every loss is NaN (an exploding run)
        terms = real_criterion(outputs, target)
        return {k: v * float("nan") for k, v in terms.items()} if after_step else terms

    def step(*args, **kwargs):
        result = real_step(*args, **kwargs)
        after_step.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
        return result

    trainer.criterion = poisoned
    monkeypatch.setattr(engine, "train_step", step)
    with pytest.raises(NonFiniteLossError, match=r"at step 2 \(the step was not applied\); batch"):
        trainer.fit()
    assert len(after_step) == 3  # steps 2 and 3 ran (no host sync in between) but changed nothing
    weights = trainer.model.state_dict()
    assert all(torch.equal(weights[k], after_step[0][k]) for k in weights)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_nonfinite_skip_option_keeps_weights_finite(tmp_path) -> None:
    trainer = _trainer(tmp_path / "skip", "train.nonfinite=skip", "train.epochs=1")
    real_criterion = trainer.criterion

    def poisoned(outputs, target):  # every loss is NaN: every step must be skipped
        terms = real_criterion(outputs, target)
        return {k: v * float("nan") for k, v in terms.items()}

    trainer.criterion = poisoned
    before = {k: v.clone() for k, v in trainer.model.state_dict().items() if v.is_floating_point()}
    trainer.fit()
    after = trainer.model.state_dict()
    params = dict(trainer.model.named_parameters())
    assert all(torch.equal(before[k], after[k]) for k in params)
    records = trainer.log.records()
    assert sum(r.get("skipped_nonfinite", 0) for r in records if r["kind"] == "train") == 3


def test_existing_run_is_not_overwritten(tmp_path: Path) -> None:
    from sanet.cli import main

    run = tmp_path / "run"
    _trainer(run, "train.epochs=1").fit()
    before = (run / "checkpoints/last.pt").read_bytes()
    config = run / "config.yaml"
    assert main(["train", str(config), "--out", str(run)]) == 2
    assert (run / "checkpoints/last.pt").read_bytes() == before


def test_tiny_sanet_learns_the_synthetic_scenes(tmp_path: Path) -> None:
    """60 steps at 64 px must beat the best constant predictor by a clear margin.

    Chance here is "everything is background" (the majority class, ~72 % of labelled pixels):
    its mIoU is IoU_bg / 7 ≈ 0.10 and its pixAcc the background share. A model that learned
    nothing about the objects cannot exceed that; 0.04 mIoU above it needs several object
    classes segmented, not just a better background.
    """
    from sanet.metrics import ConfusionMatrix

    size = ["data.base_size=64", "data.crop_size=64", "data.scale_range=[0.75, 1.5]"]
    data = "data.options={num_images: 160, size: 64, seed: 0}"
    trainer = _trainer(
        tmp_path / "learn",
        *size,
        data,
        "train.batch_size=8",
        "train.epochs=3",
        "train.lr=0.05",
        "train.head_lr_mult=1",
        "train.val_every=3",
    )
    result = trainer.fit()["history"][-1]
    chance = ConfusionMatrix(trainer.num_classes)
    for i in range(len(trainer.val_set)):
        mask = trainer.val_set[i][1]
        chance.update(torch.zeros_like(mask), mask)
    chance = chance.compute()
    assert result["pixAcc"] > chance["pixAcc"] + 0.02
    assert result["mIoU"] > chance["mIoU"] + 0.04, (result, chance["mIoU"])


def test_sigterm_through_the_cli_saves_and_resumes(tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys
    import time

    run, config = tmp_path / "run", tmp_path / "tiny.yaml"
    config.write_text("model:\n  name: sanet\n")
    cmd = [
        sys.executable,
        "-m",
        "sanet.cli",
        "train",
        str(config),
        "--out",
        str(run),
        "--set",
        *TINY,
        "train.epochs=4",
        "train.log_every=1",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log, deadline = run / "metrics.jsonl", time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if log.is_file() and log.read_text().count('"kind": "train"') >= 2:
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.02)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]  # 143, as a shell reports it
    assert "Stopped by SIGTERM" in stderr and "--resume" in stderr
    stopped_at = safe_torch_load(run / "checkpoints/last.pt")["state"]["global_step"]
    assert 2 <= stopped_at < 12
    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    records = [json.loads(line) for line in log.read_text().splitlines()]
    train_steps = [r["step"] for r in records if r["kind"] == "train"]
    assert train_steps == list(range(1, 13))  # every step logged once: none lost, none twice
    assert os.path.isfile(run / "model/model.safetensors")


@pytest.mark.reliability("r08")
def test_resume_refuses_what_changes_the_run_and_accepts_speed_knobs(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _trainer(run, "train.epochs=1").fit()
    config_before = (run / "config.yaml").read_text()
    with pytest.raises(ValueError, match=r"model.backbone: 'resnet18d' -> 'resnet10t'"):
        _trainer(run, "model.backbone=resnet10t", resume=True)
    with pytest.raises(ValueError, match=r"train.batch_size: 4 -> 2, train.seed: 7 -> 8"):
        _trainer(run, "train.batch_size=2", "train.seed=8", resume=True)
    assert (run / "config.yaml").read_text() == config_before  # nothing rewritten
    resumed = _trainer(run, "data.num_workers=2", "train.epochs=3", resume=True)
    assert resumed.state.global_step == 3 and resumed.total_steps == 9
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _trainer(tmp_path / "empty", resume=True)


def test_worker_count_does_not_change_the_result(tmp_path: Path) -> None:
    _trainer(tmp_path / "w0", "train.epochs=1").fit()
    _trainer(tmp_path / "w2", "train.epochs=1", "data.num_workers=2").fit()
    w0, w2 = _weights(tmp_path / "w0"), _weights(tmp_path / "w2")
    assert all(torch.equal(w0[k], w2[k]) for k in w0)


def test_validation_is_sanet_eval_single_scale_with_the_runs_window(tmp_path, monkeypatch):
    """Validation during training runs under the run's eval.crop_size/stride at single scale:
    the protocol `sanet eval --checkpoint RUN --single-scale` rebuilds from the run directory."""
    from sanet.cli import build_parser
    from sanet.cli.common import protocol_from_args
    from sanet.inference import EvalProtocol, predictor

    seen = []
    real = predictor.predict_mask

    def spy(model, images, protocol=None, store=None, **kw):
        seen.append(protocol)
        return real(model, images, protocol, store, **kw)

    monkeypatch.setattr(predictor, "predict_mask", spy)
    run = tmp_path / "run"
    trainer = _trainer(
        run, "eval.scales=[0.5, 1.0]", "eval.flip=true", "eval.crop_size=64", "eval.stride=40"
    )
    trainer.validate()
    assert trainer.val_protocol == EvalProtocol(crop_size=64, stride=40)
    assert seen == [trainer.val_protocol] * len(trainer.val_set)  # every val image, batch 1
    args = build_parser().parse_args(
        ["eval", "--checkpoint", str(run), "--data", "synthetic", "--single-scale"]
    )
    assert protocol_from_args(args) == trainer.val_protocol


def test_thread_count_is_pinned_by_train_threads(tmp_path):
    before = torch.get_num_threads()
    try:
        # from a count neither run asks for, so that the environment's (OMP_NUM_THREADS=1 in
        # `make mutants`) cannot stand in for the recipe's
        for asked in (1, 2):
            torch.set_num_threads(3)
            trainer = _trainer(tmp_path / f"t{asked}", f"train.threads={asked}")
            assert trainer.threads == torch.get_num_threads() == asked
        torch.set_num_threads(before)
        assert _trainer(tmp_path / "t0", "train.threads=0").threads == before  # torch's default
        with pytest.raises(ValueError, match=r"train.threads must be ≥ 0"):
            _trainer(tmp_path / "bad", "train.threads=-1")
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(("batch", "accumulate"), [(4, 1), (8, 2)])
def test_lr_scales_linearly_with_the_global_batch(tmp_path, batch, accumulate) -> None:
    """Recipe LRs are at batch 16 (Sec. 4): lr · batch_size / 16, the head at head_lr_mult ×."""
    trainer = _trainer(
        tmp_path / "run",
        f"train.batch_size={batch}",
        f"train.accumulate={accumulate}",
        "train.lr=0.01",
        "train.head_lr_mult=10",
    )
    want = [0.01 * batch / 16, 0.1 * batch / 16]
    assert [g["lr"] for g in trainer.optimizer.param_groups] == pytest.approx(want)
    assert trainer.scheduler.base_lrs == pytest.approx(want)  # the poly schedule starts there
