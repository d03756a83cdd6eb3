"""scripts/slurm on a real SLURM (tests/slurm_cluster.py): ``train.sbatch`` with two gloo
processes is requeued from outside (``scontrol requeue``) and warned of its time limit (USR1 to
the batch script, what ``--signal=B:USR1@120`` sends), resumes from ``last.pt`` each time and
logs every step once; ``eval.sbatch`` evaluates the run. Also: the signal handler of training
takes a repeated SIGTERM (SLURM signals every process of a step, torchrun forwards) as one."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import sanet
from sanet.training.runtime import StopFlag
from slurm_cluster import ClusterUnavailable, OneNodeCluster

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts" / "slurm"
STEPS = 16
SETTINGS = [
    "model.backbone=resnet10t",
    "data.dataset=synthetic",
    "data.base_size=64",
    "data.crop_size=64",
    "data.num_workers=0",
    "data.options={num_images: 128, size: 64, seed: 0}",
    "train.batch_size=8",
    "train.epochs=1",  # the only checkpoints are the end's and those a stop saves
    f"train.max_steps={STEPS}",
    "train.lr=0.01",
    "train.log_every=1",
    "train.device=cpu",
    "train.threads=1",
]


def test_a_repeated_sigterm_is_one_request_and_a_second_ctrl_c_stops_now() -> None:
    with StopFlag() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # e.g. slurmstepd's and torchrun's
        assert stop.signal == "SIGTERM"  # no KeyboardInterrupt: the step finishes, last.pt saved
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    with StopFlag() as stop, pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture
def slurm(tmp_path: Path) -> Iterator[OneNodeCluster]:
    cluster = OneNodeCluster(tmp_path / "slurm", cpus=2)
    try:
        cluster.start()
    except ClusterUnavailable as err:
        cluster.stop()
        pytest.skip(f"no one-node SLURM cluster here: {err}")
    except BaseException:
        cluster.stop()
        raise
    try:
        yield cluster
    finally:
        cluster.stop()


def _wait(what: str, ready: Callable[[], bool], log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            tail = log.read_text()[-3000:] if log.is_file() else "(no job log)"
            pytest.fail(f"waited {timeout:.0f} s for {what}; job log:\n{tail}")
        time.sleep(0.05)


def _train_steps(run: Path) -> list[int]:
    log = run / "metrics.jsonl"
    if not log.is_file():
        return []
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.endswith("}")]
    return [r["step"] for r in lines if r["kind"] == "train"]


def _stopped_at(log: Path) -> list[int]:
    """Rank 0's line for each clean stop: the step, and that it saved last.pt."""
    text = log.read_text() if log.is_file() else ""
    return [int(s) for s in re.findall(r"Stopped by \S+ after step (\d+); saved \S+last\.pt", text)]


@pytest.mark.slow
def test_train_sbatch_resumes_after_requeue_and_time_limit(
    slurm: OneNodeCluster, tmp_path: Path
) -> None:
    recipe, run, log = tmp_path / "tiny.yaml", tmp_path / "run", tmp_path / "train.out"
    recipe.write_text("model:\n  name: sanet\n")
    src = str(Path(sanet.__file__).resolve().parents[1])  # the checkout under test runs
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    env = slurm.env(PYTHONPATH=path, SANET_PYTHON=sys.executable)
    submit = ["sbatch", "--parsable", "--export=ALL", f"--chdir={tmp_path}", f"--output={log}"]
    submit += ["--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-node=0", "--time=30"]
    submit += [str(SCRIPTS / "train.sbatch"), str(recipe), str(run), *SETTINGS]
    done = subprocess.run(submit, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    job = done.stdout.strip().split(";")[0]

    def requeued(restarts: int) -> Callable[[], bool]:
        def pending() -> bool:
            info = slurm.job(job)
            return info["JobState"] == "PENDING" and info["Restarts"] == str(restarts)

        return pending

    def release() -> None:
        # SLURM holds a requeued job for about two minutes (its begin time). The hold matters: a
        # restart in the second its last run ended is refused ("Job 1 already killed, do not
        # launch batch job") and the job fails. Here: once the node is idle, two seconds on.
        _wait("the node to be idle again", lambda: slurm.node_state().startswith("idle"), log)
        time.sleep(2)
        slurm.run("scontrol", "update", f"JobId={job}", "StartTime=now")

    # 1. a requeue from outside (as preemption does): SIGTERM to every process of the job
    _wait("two logged steps", lambda: len(_train_steps(run)) >= 2, log)
    slurm.run("scontrol", "requeue", job)
    _wait("the first clean stop", lambda: len(_stopped_at(log)) == 1, log)
    _wait("the job back in the queue", requeued(1), log)
    release()
    first = _stopped_at(log)[0]

    # 2. the time-limit warning: USR1 to the batch script only; the script stops and requeues
    _wait("two more steps", lambda: len(_train_steps(run)) >= first + 2, log)
    slurm.run("scancel", "--batch", "--signal=USR1", job)
    _wait("the second clean stop", lambda: len(_stopped_at(log)) == 2, log)
    _wait("the job's own requeue", requeued(2), log)
    release()
    second = _stopped_at(log)[1]

    _wait("the job to complete", lambda: slurm.job(job)["JobState"] == "COMPLETED", log)
    info, text = slurm.job(job), log.read_text()
    assert info["ExitCode"] == "0:0" and info["Restarts"] == "2", info
    assert 2 <= first < second < STEPS
    assert "time limit near: stopping training to requeue" in text
    for restart, step in ((1, first), (2, second)):
        assert f"checkpoints/last.pt exists: resuming (restart {restart})" in text
        assert f"/checkpoints/last.pt at epoch 0, step {step}" in text  # sanet's "Resumed from"
    assert text.count("sanet-slurm: training finished") == 1
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert _train_steps(run) == list(range(1, STEPS + 1))  # none lost, none twice
    assert [r["step"] for r in records if r["kind"] == "val"] == [STEPS]  # the final validation
    assert (run / "model" / "model.safetensors").is_file()

    # eval.sbatch on the finished run: one process, metrics.json in RUN/eval
    eval_log = tmp_path / "eval.out"
    submit = ["sbatch", "--parsable", "--export=ALL", f"--chdir={tmp_path}", f"--output={eval_log}"]
    submit += ["--ntasks=1", "--cpus-per-task=2", "--gpus-per-node=0", "--time=10"]
    submit += [str(SCRIPTS / "eval.sbatch"), str(run), "synthetic", "--limit", "3"]
    submit += ["--device", "cpu", "--single-scale"]
    done = subprocess.run(submit, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    eval_job = done.stdout.strip().split(";")[0]
    _wait("the eval job", lambda: slurm.job(eval_job)["JobState"] == "COMPLETED", eval_log, 120)
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["checkpoint"] == str(run) and metrics["num_images"] == 3, metrics
    assert metrics["protocol"]["mode"] == "single-scale" and 0.0 <= metrics["mIoU"] <= 1.0


def _raster(path: Path, height: int, width: int, seed: int) -> Path:
    import numpy as np
    import rasterio
    from affine import Affine

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (3, height // 16 + 1, width // 16 + 1), dtype=np.uint8)
    bands = np.repeat(np.repeat(coarse, 16, 1), 16, 2)[:, :height, :width]
    profile = {"driver": "GTiff", "height": height, "width": width, "count": 3, "dtype": "uint8"}
    profile |= {"crs": "EPSG:32633", "transform": Affine(0.5, 0, 5e5, 0, -0.5, 4e6)}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(bands)
    return path


@pytest.mark.slow
def test_predict_sbatch_array_predicts_each_raster_and_resumes_after_requeue(
    slurm: OneNodeCluster, tmp_path: Path
) -> None:
    """``predict.sbatch`` as an array over a list of rasters: task 0 (a large raster) is requeued
    from outside (as a preemption) once it has written blocks, continues with ``--resume`` and
    writes what an uninterrupted run writes; task 1 (a small raster) just runs."""
    import rasterio

    from sanet.inference import EvalProtocol, Predictor

    torch_model = sanet.build_model("sanet", backbone="resnet10t", num_classes=3)
    checkpoint, out, log = tmp_path / "model", tmp_path / "masks", tmp_path / "predict-%a.out"
    torch_model.save_pretrained(checkpoint)
    big, small = (
        _raster(tmp_path / "big.tif", 768, 1024, 0),
        _raster(tmp_path / "small.tif", 64, 96, 1),
    )
    (tmp_path / "rasters.txt").write_text(f"# the rasters\n{big}\n\n{small}\n")
    options = ["--crop-size", "64", "--stride", "48", "--tile-size", "32", "--strip-width", "64"]
    options += ["--device", "cpu", "--window-batch", "4"]
    src = str(Path(sanet.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    env = slurm.env(PYTHONPATH=path, SANET_PYTHON=sys.executable)
    submit = ["sbatch", "--parsable", "--export=ALL", f"--chdir={tmp_path}", f"--output={log}"]
    submit += ["--array=0-1", "--ntasks=1", "--cpus-per-task=1", "--gpus-per-node=0", "--time=30"]
    submit += [str(SCRIPTS / "predict.sbatch"), str(checkpoint), str(tmp_path / "rasters.txt")]
    done = subprocess.run([*submit, str(out), *options], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    array = done.stdout.strip().split(";")[0]
    task0, task1, log0 = f"{array}_0", f"{array}_1", tmp_path / "predict-0.out"
    state = out / ".big.tif.resume.json"

    def blocks_done() -> int:
        try:
            return json.loads(state.read_text())["done"]
        except (OSError, ValueError, KeyError):
            return 0

    _wait("task 0 to write two blocks", lambda: blocks_done() >= 2, log0)
    slurm.run("scontrol", "requeue", task0)
    _wait("task 0 back in the queue", lambda: slurm.job(task0)["JobState"] == "PENDING", log0)
    stopped_at = blocks_done()
    time.sleep(2)  # a restart in the second its last run ended is refused (see above)
    slurm.run("scontrol", "update", f"JobId={task0}", "StartTime=now")
    for task in (task0, task1):
        _wait(f"{task} to complete", lambda t=task: slurm.job(t)["JobState"] == "COMPLETED", log0)
    text = log0.read_text()
    assert "SIGTERM (requeue, preemption or scancel)" in text
    assert f"{state.name} exists: resuming {big} (restart 1)" in text
    assert "task 0: " + str(big) + " done" in text
    assert sorted(p.name for p in out.iterdir()) == ["big.tif", "small.tif"]  # no partial left
    assert 2 <= stopped_at < 24 * 16

    protocol = EvalProtocol(crop_size=64, stride=48, window_batch=4)
    reference = Predictor(checkpoint, protocol=protocol).predict_tiled(
        big, tmp_path / "ref" / "big.tif", tile_size=32, strip_width=64
    )
    with rasterio.open(out / "big.tif") as got, rasterio.open(reference.mask) as want:
        assert got.crs == want.crs and got.transform == want.transform
        assert (got.read(1) == want.read(1)).mean() >= 0.999
