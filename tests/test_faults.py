"""Fault injection (docs/reliability.md, r17): ``kill -9`` and ``kill -TERM`` at many points of a
tiny training run, checkpoint writes included. Every time: the last good checkpoint loads,
resuming finishes the run with the weights of an uninterrupted run, every step is logged once,
and no temporary file survives.

One representative point runs in the default suite, without the comparison with an
uninterrupted run (that needs one more run); the sweep is marked ``slow``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_recipe
from sanet import load_model
from sanet._files import safe_torch_load
from sanet.config import load_config
from sanet.rundir import RunDir
from sanet.training.trainer import Trainer

CHILD = Path(__file__).with_name("_fault_child.py")
TINY = tiny_recipe(
    train__epochs=2,
    train__lr=0.01,
    train__log_every=1,
    train__val_every=1,
    train__deterministic=True,
    train__seed=3,
)  # 2 epochs × 2 steps; a validation and a last.pt after each epoch
STEPS = 4
slow = pytest.mark.slow

# (signal, where, n): where the fault hits (see tests/_fault_child.py)
FAULTS = [
    ("KILL", "write:last.pt", 2),  # inside the final checkpoint write: the default-suite point
    pytest.param("KILL", "write:last.pt", 1, marks=slow),  # inside the first checkpoint write
    pytest.param("KILL", "write:best.pt", 1, marks=slow),
    pytest.param("KILL", "write:model.safetensors", 1, marks=slow),
    pytest.param("KILL", "write:config.yaml", 1, marks=slow),  # before anything else exists
    pytest.param("KILL", "write:val_miou.png", 2, marks=slow),
    pytest.param("KILL", "step", 1, marks=slow),  # mid-epoch, no checkpoint yet
    pytest.param("KILL", "step", 3, marks=slow),  # mid-epoch 2
    pytest.param("KILL", "validate", 2, marks=slow),
    pytest.param("TERM", "step", 1, marks=slow),  # graceful: finish the step, save, exit 143
    pytest.param("TERM", "step", 4, marks=slow),  # the last step: stopped before its validation
    pytest.param("TERM", "write:last.pt", 1, marks=slow),  # the write finishes, then the stop
    pytest.param("TERM", "validate", 1, marks=slow),
    pytest.param("TERM", "write:config.yaml", 1, marks=slow),  # before the handler exists
]


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("faults") / "tiny.yaml"
    path.write_text("model:\n  name: sanet\n")
    return path


@pytest.fixture(scope="module")
def reference(config: Path, tmp_path_factory) -> dict[str, torch.Tensor]:
    """The final weights of the same run, uninterrupted."""
    run = tmp_path_factory.mktemp("reference") / "run"
    Trainer(load_config(config, TINY), run).fit()
    return safe_torch_load(RunDir(run).last)["model"]


@pytest.mark.reliability("r17")
@pytest.mark.parametrize(("sig", "where", "n"), FAULTS)
def test_a_fault_anywhere_in_training_loses_nothing_done(sig, where, n, config, tmp_path, request):
    run = RunDir(tmp_path / "run")
    cmd = [
        sys.executable,
        str(CHILD),
        sig,
        where,
        str(n),
        "--",
        str(config),
        "--out",
        str(run.root),
        "--set",
        *TINY,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    allowed = {"KILL": {-signal.SIGKILL}, "TERM": {128 + signal.SIGTERM, -signal.SIGTERM}}[sig]
    assert proc.returncode in allowed, proc.stderr[-3000:]
    if sig == "KILL" and where.startswith("write:"):  # it died inside that write
        assert list(run.root.rglob("*.sanet-tmp")), "the fault did not hit the write"
    if run.has_checkpoint():  # the last good checkpoint loads, as training state and as a model
        assert safe_torch_load(run.last)["state"]["global_step"] <= STEPS
        load_model(run.root)
    resumed = Trainer(load_config(config, TINY), run.root, resume=run.has_checkpoint()).fit()
    assert resumed["steps"] == STEPS
    assert not list(run.root.rglob("*.sanet-tmp"))
    if request.node.get_closest_marker("slow"):
        reference = request.getfixturevalue("reference")
        final = safe_torch_load(run.last)["model"]
        assert all(torch.equal(final[k], reference[k]) for k in reference)
    records = [json.loads(line) for line in run.metrics_log.read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, STEPS + 1))
    assert [r["step"] for r in records if r["kind"] == "val"] == [2, 4]
