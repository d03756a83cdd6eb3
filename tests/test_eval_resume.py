"""A stopped ``sanet eval --out`` continues (issue 28.4): the same command finds the state the
stopped evaluation kept in ``--out`` (``sanet.api.eval_state``), counts every image once and
writes what an uninterrupted evaluation writes; files eval did not write, and the state of
another evaluation, stay refused. The metrics are checked against numpy on the saved masks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sanet
from sanet.cli import main

N = 4  # images evaluated
DATA = ["--data", "synthetic", "--data-options", "{size: 48}", "--limit", str(N)]
DATA += ["--crop-size", "48", "--stride", "32"]  # one window per image


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sanet.data import build_dataset

    ds = build_dataset("synthetic", None, split="val", num_images=2)
    meta = {"class_names": ds.class_names, "palette": [list(c) for c in ds.palette]}
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("eval-resume") / "model"
    net = sanet.build_model("sanet", backbone="resnet10t", num_classes=ds.num_classes)
    net.save_pretrained(folder, meta)
    return folder


def _argv(model: Path, out: Path, *more: str) -> list[str]:
    return ["eval", "--checkpoint", str(model), *DATA, "--out", str(out), "--save-predictions"]


def _by_hand(out: Path) -> tuple[float, float]:
    """pixAcc and mIoU of the saved masks against the dataset's, in numpy (classes present in
    the prediction or the ground truth, as docs/paper-fidelity.md says)."""
    from sanet.data import build_dataset

    ds = build_dataset("synthetic", None, split="val", size=48)
    k = ds.num_classes
    cm = np.zeros((k, k), np.int64)
    for i in range(N):
        target = np.asarray(ds[i][1])
        pred = np.asarray(Image.open(out / "predictions" / f"{i:05d}.png"))
        keep = target != 255
        cm += np.bincount(k * target[keep] + pred[keep], minlength=k * k).reshape(k, k)
    inter, union = np.diag(cm), cm.sum(0) + cm.sum(1) - np.diag(cm)
    return inter.sum() / cm.sum(), float(np.mean(inter[union > 0] / union[union > 0]))


@pytest.mark.reliability("r90")
def test_r90_a_stopped_eval_continues_with_the_same_command(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from sanet.api import evaluation

    real, saved = evaluation._save_prediction, []

    def save(*args, **kwargs):  # Ctrl-C (a real SIGINT) while the third image is saved
        real(*args, **kwargs)
        saved.append(args[1])
        if len(saved) == 3:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(evaluation, "_save_prediction", save)
    out = tmp_path / "eval"
    assert main(_argv(model, out)) == 130
    err = capsys.readouterr().err
    assert not (out / "metrics.json").exists()
    cut = out / "predictions" / ".00003.png.x1y2.sanet-tmp"  # what a SIGKILL mid-write leaves
    cut.write_bytes(b"half a png")
    assert main(_argv(model, out)) == 0, capsys.readouterr().err  # was: 2, "already holds"
    assert not cut.exists()
    assert "stopped by SIGINT after 3 of 4 images" in err and "run the same command" in err
    assert saved == [0, 1, 2, 3]  # the fourth image only: none evaluated twice
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["num_images"], metrics["continued_from"]) == (N, 3)
    pixacc, miou = _by_hand(out)
    assert metrics["pixAcc"] == pytest.approx(pixacc) and metrics["mIoU"] == pytest.approx(miou)
    assert sorted(p.name for p in out.iterdir()) == [
        "confusion_matrix.png",
        "iou_per_class.png",
        "metrics.json",
        "predictions",
    ]  # the state is gone: a third run refuses, as after any finished eval
    assert main(_argv(model, out)) == 2
    assert "--out already holds" in capsys.readouterr().err


def _state(out: Path, **change) -> None:
    out.mkdir(parents=True)
    (out / "predictions").mkdir()
    (out / "predictions" / "00000.png").write_bytes(b"a mask")
    if change.get("text") is not None:
        (out / ".eval.resume.json").write_text(change["text"])


R91_CASES = [
    ({}, "--out already holds"),  # a finished eval's or someone's masks, no state
    ({"text": "{not json"}, "cannot be read"),
    ({"settings": {"images": 3}}, "with another images"),  # --limit 3, then --limit 4
    ({"settings": {"model": "0123456789abcdef"}}, "with another model"),
]


@pytest.mark.reliability("r91")
@pytest.mark.parametrize(("change", "match"), R91_CASES)
def test_r91_outputs_that_are_not_this_evaluations_are_refused(
    model: Path, tmp_path: Path, capsys, change: dict, match: str
) -> None:
    out = tmp_path / "eval"
    if "settings" in change:  # a real stopped evaluation, its settings then changed
        _stopped_state(model, out, change["settings"])
        capsys.readouterr()
    else:
        _state(out, **change)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(_argv(model, out)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sanet eval: error:") and "\n" not in err and match in err
    assert "--overwrite" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    if change.get("text"):  # --overwrite starts over (one case: each costs an evaluation)
        assert main([*_argv(model, out), "--overwrite"]) == 0
        assert json.loads((out / "metrics.json").read_text())["continued_from"] == 0


def _stopped_state(model: Path, out: Path, settings: dict) -> None:
    from sanet.api import eval_state, evaluation

    real = evaluation._save_prediction
    calls = []

    def save(*args, **kwargs):
        real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGINT)

    evaluation._save_prediction = save
    try:
        assert main(_argv(model, out)) == 130
    finally:
        evaluation._save_prediction = real
    path = out / eval_state.STATE_NAME
    state = json.loads(path.read_text())
    state["settings"] |= settings
    path.write_text(json.dumps(state))


@pytest.mark.reliability("r92")
@pytest.mark.slow
def test_r92_sigterm_then_the_same_command_as_a_requeued_job_runs_it(
    model: Path, tmp_path: Path
) -> None:
    """The issue's case: ``sanet eval --out --save-predictions`` in its own process, SIGTERM
    (what SLURM sends on a requeue) once masks are written, then the same command."""
    out = tmp_path / "eval"
    src = str(Path(sanet.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "sanet.cli", *_argv(model, out)]
    argv[argv.index("--limit") + 1] = "24"
    child = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "predictions" / "00001.png").exists():
        assert child.poll() is None and time.monotonic() < deadline, child.stderr.read()
        time.sleep(0.02)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 143, err
    assert "stopped by SIGTERM after" in err and "run the same command" in err
    done = len(json.loads((out / ".eval.resume.json").read_text())["done"])
    assert 2 <= done < 24
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["num_images"], metrics["continued_from"]) == (24, done)
    assert len(list((out / "predictions").iterdir())) == 24


def test_settings_are_compared_as_the_state_file_holds_them(tmp_path: Path) -> None:
    """A label map's integer keys and a protocol's tuples come back from JSON as strings and
    lists: the same evaluation must still be recognised."""
    from sanet.api.eval_state import EvalState, resume_state
    from sanet.errors import UsageError

    settings = {"data_options": {"label_map": {255: 1}}, "protocol": {"scales": (0.5, 1.0)}}
    saved = json.loads(json.dumps(EvalState(settings, done=[0, 1], matrix=[[3]]).to_dict()))
    state = resume_state(saved, settings, tmp_path)
    assert (state.done, state.matrix) == ([0, 1], [[3]])
    with pytest.raises(UsageError, match="with another data_options"):
        resume_state(saved, settings | {"data_options": {"label_map": {255: 2}}}, tmp_path)
