"""Two CPU processes under torchrun (gloo): DDP keeps ranks identical, the all-reduced
validation equals a single-process evaluation of the saved checkpoint, and two processes take
the same step as ``accumulate=2`` on one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sanet
from sanet import load_model
from sanet.data import build_dataset
from sanet.inference import evaluate_pairs
from sanet.training import engine

WORKER = Path(__file__).with_name("_ddp_worker.py")
SETTINGS = [
    "model.backbone=resnet18d",
    "data.dataset=synthetic",
    "data.base_size=64",
    "data.crop_size=64",
    "data.num_workers=0",
    "data.options={num_images: 9, size: 64, seed: 0}",
    "train.batch_size=4",
    "train.epochs=1",
    "train.lr=0.01",
    "train.log_every=1",
    "train.device=cpu",
]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `sanet train` under torchrun with two CPU processes (tests/_ddp_worker.py)."""
    tmp_path = tmp_path_factory.mktemp("ddp")
    run, config = tmp_path / "run", tmp_path / "tiny.yaml"
    config.write_text("model:\n  name: sanet\n")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        str(WORKER),
        "train",
        str(config),
        "--out",
        str(run),
        "--set",
        *SETTINGS,
    ]
    # keep the caller's PYTHONPATH: it may point at the checkout under test (a worktree)
    path = os.pathsep.join(p for p in (str(WORKER.parent), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def test_two_process_ddp_matches_single_process_evaluation(ddp_run: Path) -> None:
    run = ddp_run
    w0 = torch.load(run / "rank0_weights.pt", weights_only=True)
    w1 = torch.load(run / "rank1_weights.pt", weights_only=True)
    for key in w0:
        assert torch.equal(w0[key], w1[key]), key
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r["kind"] == "val"][-1]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2]  # 9 images, 2 ranks × 2

    model, _ = load_model(run / "checkpoints/last.pt")
    data = build_dataset("synthetic", None, split="val", num_images=9, size=64, seed=0)
    assert len(data) % 2 == 1  # uneven shards: a padded duplicate would change the counts
    single = evaluate_pairs(model, data, model.num_classes).compute()
    assert val["pixAcc"] == pytest.approx(single["pixAcc"], abs=1e-12)
    assert val["mIoU"] == pytest.approx(single["mIoU"], abs=1e-12)


def test_two_processes_step_like_accumulate_two(ddp_run: Path) -> None:
    """Micro-batches with 128 and 10 valid pixels: two DDP ranks with one each end with the
    weights of one process accumulating both (each micro-batch's own mean, averaged)."""
    from test_engine import TinySeg, micro_batches_with_unequal_valid_pixels

    torch.manual_seed(0)
    model = TinySeg()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    micro = micro_batches_with_unequal_valid_pixels()
    engine.train_step(model, sanet.SANetLoss(), micro, opt, scaler=None)
    for rank in (0, 1):
        weights = torch.load(ddp_run / f"rank{rank}_step.pt", weights_only=True)
        for key, value in model.state_dict().items():
            torch.testing.assert_close(weights[key], value, rtol=1e-5, atol=1e-6)
