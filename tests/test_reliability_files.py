"""Files (docs/reliability.md): modes that follow the umask, temporary files that a later run
removes, damaged checkpoints and weights that end in one line naming the file and the way out.

Each test name carries the id (``r02`` ...) that the table in docs/reliability.md cites.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

import sanet
from sanet._files import atomic_torch_save, atomic_write_text, remove_stale_temp_files, temp_name
from sanet.cli import main
from sanet.errors import DamagedFileError
from sanet.rundir import RunDir

BACKBONE = "resnet10t"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.reliability("r02")
@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_written_files_get_the_mode_of_the_umask(umask: int, tmp_path: Path) -> None:
    model = sanet.build_model("fcn", backbone=BACKBONE, num_classes=2)
    old = os.umask(umask)
    try:
        reference = tmp_path / "plain.txt"
        reference.write_text("written by open()")  # the independent reference: the OS's choice
        atomic_write_text(tmp_path / "a.txt", "x")
        atomic_torch_save({"w": torch.zeros(2)}, tmp_path / "c.pt")
        model.save_pretrained(tmp_path / "model")
    finally:
        os.umask(old)
    assert _mode(reference) == 0o666 & ~umask
    for path in (tmp_path / "a.txt", tmp_path / "c.pt", *(tmp_path / "model").iterdir()):
        assert _mode(path) == _mode(reference), path


@pytest.mark.reliability("r09")
def test_temp_files_of_interrupted_writes_are_found_and_only_they(tmp_path: Path) -> None:
    leftover = tmp_path / ".last.pt.k2j4x9.sanet-tmp"  # what kill -9 before the rename leaves
    leftover.write_bytes(b"half a checkpoint")
    mine = [tmp_path / ".notes.tmp", tmp_path / "last.pt", tmp_path / "x.sanet-tmp"]
    for path in mine:
        path.write_text("the user's")
    assert leftover.match(temp_name(tmp_path / "last.pt"))
    assert remove_stale_temp_files(tmp_path) == [leftover]
    assert sorted(tmp_path.iterdir()) == sorted(mine)


@pytest.fixture
def run(tmp_path: Path) -> RunDir:
    """A run directory with model/, best.pt and last.pt of a tiny FCN (no training)."""
    run = RunDir(tmp_path / "run")
    model = sanet.build_model("fcn", backbone=BACKBONE, num_classes=2)
    model.save_pretrained(run.model, metadata={"class_names": ["bg", "fg"]})
    ckpt = {"model": model.state_dict(), "model_config": {"name": "fcn", **model.config}}
    atomic_torch_save(ckpt, run.best)
    atomic_torch_save(ckpt, run.last)
    run.config.write_text("model: {name: fcn}\n")
    return run


class Evil:
    """A pickle that would create a folder when unpickled: weights_only must refuse it."""

    marker = ""

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def _damage(run: RunDir, case: str, tmp_path: Path) -> Path:
    if case == "truncated-safetensors":
        target = run.model / "model.safetensors"
        target.write_bytes(target.read_bytes()[:1000])
        return target
    if case == "empty-best":
        run.best.write_bytes(b"")
        return run.best
    Evil.marker = str(tmp_path / "code-ran")
    torch.save({"model": Evil(), "model_config": {}}, run.last)
    return run.last


@pytest.mark.reliability("r05")
@pytest.mark.parametrize(
    ("case", "load", "instead"),
    [
        ("truncated-safetensors", "run", "checkpoints/best.pt"),
        ("empty-best", "best", "model"),
        ("pickle-that-runs-code", "last", "model"),
    ],
)
def test_damaged_weights_name_the_file_and_the_other_weights(
    case: str, load: str, instead: str, run: RunDir, tmp_path: Path, capsys
) -> None:
    damaged = _damage(run, case, tmp_path)
    path = {"run": run.root, "best": run.best, "last": run.last}[load]
    with pytest.raises(DamagedFileError) as info:
        sanet.load_model(path)
    message = str(info.value)
    assert message.startswith(f"{damaged}: ") and str(run.root / instead) in message
    assert "weights_only" not in message  # torch's advice to run the file's code is not relayed
    assert not (tmp_path / "code-ran").exists()
    if case == "pickle-that-runs-code":
        assert "GLOBAL" in message and "could run code" in message
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (40, 40)).save(image)
    rc = main(["predict", "--checkpoint", str(path), str(image), "--out", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(damaged) in err


@pytest.mark.reliability("r05")
def test_a_truncated_last_pt_suggests_resuming_from_best(run: RunDir) -> None:
    from sanet.config import Config
    from sanet.training.resume import read_resume_checkpoint

    data = run.last.read_bytes()
    run.last.write_bytes(data[: len(data) // 2])
    with pytest.raises(DamagedFileError, match="truncated or corrupt") as info:
        read_resume_checkpoint(Config(), run, torch.device("cpu"))
    assert f"copy {run.best} over {run.last}" in str(info.value)


@pytest.mark.reliability("r13")
@pytest.mark.parametrize(
    ("make_input", "message"),
    [
        (lambda: torch.zeros(1, 3, 40, 40, dtype=torch.uint8), "Expected a float image batch"),
        (lambda: torch.zeros(1, 3, 40, 40, dtype=torch.float64), "weights are torch.float32"),
        (lambda: torch.zeros(1, 3, 40, 40, device="meta"), "the model is on cpu"),
    ],
)
def test_model_inputs_of_the_wrong_dtype_or_device_are_named(make_input, message) -> None:
    model = sanet.build_model("fcn", backbone=BACKBONE, num_classes=2).eval()
    with pytest.raises(ValueError, match=message):
        model(make_input())


@pytest.mark.reliability("r13")
def test_autocast_inputs_are_still_accepted() -> None:
    model = sanet.build_model("fcn", backbone=BACKBONE, num_classes=2).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # it casts for itself
        assert model(torch.zeros(1, 3, 40, 40))["out"].shape == (1, 2, 40, 40)
