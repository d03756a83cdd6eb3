"""Real signals in ``sanet compare`` and ``sanet train`` (docs/reliability.md, r25 and r30).

A child process (``tests/_compare_child.py``, ``tests/_fault_child.py``) sends itself SIGINT or
SIGTERM at one point: a run's training step, its validation (the final one included), between
runs. Every time: one line naming where it stopped and that re-running resumes, exit status
128 + the signal's number (130, 143), every finished run kept; re-running the same command
completes the comparison without training a finished run again, and logs every step once.

One case of each family runs in the default suite (a SIGTERM during the final validation, the
case that used to be lost); the others are ``slow``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_recipe
from sanet.cli import main
from sanet.rundir import RunDir

HERE = Path(__file__).parent
TINY = tiny_recipe(
    model__pretrained_backbone=False,
    train__epochs=2,
    train__log_every=1,
    train__val_every=1,
    train__threads=1,
    eval__crop_size=32,
    eval__stride=32,
)  # 2 epochs × 2 steps per run; validations after steps 2 and 4
RUNS = ["sanet-seed0", "fcn-seed0"]  # the order compare trains them in
slow = pytest.mark.slow

# (signal, where, n, the line says ..., runs finished before the signal)
COMPARE_POINTS = [
    ("TERM", "validate", 2, "after run sanet-seed0 finished", 1),  # the final validation
    pytest.param(
        "INT",
        "step",
        1,
        "during run sanet-seed0 (its checkpoints/last.pt holds step 1)",
        0,
        marks=slow,
    ),
    pytest.param(
        "TERM",
        "validate",
        1,
        "during run sanet-seed0 (its checkpoints/last.pt holds step 2)",
        0,
        marks=slow,
    ),
    pytest.param("INT", "finished", 1, "after run sanet-seed0 finished", 1, marks=slow),
    pytest.param("TERM", "build", 2, "before run fcn-seed0 started training", 1, marks=slow),
    pytest.param(
        "TERM",
        "step",
        6,
        "during run fcn-seed0 (its checkpoints/last.pt holds step 2)",
        1,
        marks=slow,
    ),
]


def _records(run: Path, kind: str) -> list[int]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if r["kind"] == kind]


@pytest.mark.reliability("r25")
@pytest.mark.parametrize(("sig", "where", "n", "says", "finished"), COMPARE_POINTS)
def test_a_signal_anywhere_in_compare_stops_it_and_a_rerun_resumes(
    sig, where, n, says, finished, tmp_path, monkeypatch
) -> None:
    out = tmp_path / "cmp"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model: {name: sanet}\n")
    args = [
        str(recipe),
        "--models",
        "sanet",
        "fcn",
        "--seeds",
        "1",
        "--out",
        str(out),
        "--set",
        *TINY,
    ]
    child = [sys.executable, str(HERE / "_compare_child.py"), sig, where, str(n), "--", *args]
    proc = subprocess.run(child, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 128 + getattr(signal, f"SIG{sig}"), proc.stderr[-3000:]  # 130, 143
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (
        f"sanet compare: stopped by SIG{sig} {says}; "
        + (
            f"{finished} of 2 runs finished and are kept"
            if finished
            else "none of the 2 runs had finished"
        )
        + ". Re-run the same command to resume."
    ), last
    kept = {}
    for name in RUNS[:finished]:  # finished runs hold their result
        run = RunDir(out / "runs" / name)
        assert json.loads(run.compare_run.read_text())["result"]["steps"] == 4
        kept[name] = run.metrics_log.read_bytes()
    assert not (out / "compare.json").exists()

    monkeypatch.chdir(tmp_path)
    assert main(["compare", *args]) == 0  # the same command resumes
    payload = json.loads((out / "compare.json").read_text())
    assert [r["steps"] for r in payload["runs"]] == [4, 4]
    for name in RUNS:
        run = out / "runs" / name
        assert _records(run, "train") == [1, 2, 3, 4]  # every step logged once: none lost or twice
        assert _records(run, "val") == [2, 4]
    for name, log in kept.items():  # a finished run is not trained again
        assert (out / "runs" / name / "metrics.jsonl").read_bytes() == log


# (signal, where, n, exit status, the last line says ...)
TRAIN_POINTS = [
    ("TERM", "validate", 2, 143, "Stopped by SIGTERM after the last step; the run finished"),
    pytest.param("INT", "step", 1, 130, "Stopped by SIGINT after step 1;", marks=slow),
]


@pytest.mark.reliability("r30")
@pytest.mark.parametrize(("sig", "where", "n", "status", "says"), TRAIN_POINTS)
def test_train_exits_128_plus_the_signal_and_never_loses_one(
    sig, where, n, status, says, tmp_path
) -> None:
    run, recipe = tmp_path / "run", tmp_path / "recipe.yaml"
    recipe.write_text("model: {name: sanet}\n")
    cmd = [sys.executable, str(HERE / "_fault_child.py"), sig, where, str(n), "--"]
    proc = subprocess.run(
        [*cmd, str(recipe), "--out", str(run), "--set", *TINY],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == status, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(says), last
    if where == "validate":  # the final validation finished, the run is complete
        assert _records(run, "val") == [2, 4] and (run / "model/model.safetensors").is_file()
        assert "nothing to resume" in last
    else:
        assert "--resume" in last
