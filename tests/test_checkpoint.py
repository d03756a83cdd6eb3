"""Crash-safe writes and safe loading (SPEC §5)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import sanet
from conftest import TINY_BACKBONE
from sanet import load_model
from sanet._files import atomic_save_bytes, atomic_torch_save, safe_torch_load
from sanet.errors import DamagedFileError


def test_failed_write_leaves_previous_file_and_no_temp(tmp_path, monkeypatch) -> None:
    target = tmp_path / "last.pt"
    atomic_torch_save({"step": torch.tensor(1)}, target)

    def crash(fd: int) -> None:
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_torch_save({"step": torch.tensor(2), "big": torch.zeros(1000)}, target)
    monkeypatch.undo()
    assert safe_torch_load(target)["step"].item() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_write_killed_halfway_leaves_a_loadable_checkpoint(tmp_path: Path) -> None:
    target = tmp_path / "last.pt"
    child = textwrap.dedent(f"""
        import torch
        from sanet._files import atomic_torch_save
        step = 0
        while True:  # keep rewriting a ~40 MB checkpoint until killed
            step += 1
            atomic_torch_save({{"step": torch.tensor(step), "w": torch.full((10_000_000,), float(step))}},
                              {str(target)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", child])
    try:
        deadline = time.time() + 120
        while not target.exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.7)  # now it is somewhere in the middle of another write
    finally:
        proc.kill()  # SIGKILL: no cleanup handler runs
        proc.wait()
    ckpt = safe_torch_load(target)
    assert ckpt["step"].item() >= 1
    assert torch.all(ckpt["w"] == float(ckpt["step"].item()))  # a whole version, not a mix


def test_load_model_accepts_folder_run_dir_and_pt(tmp_path: Path) -> None:
    model = sanet.build_model("sanet", backbone=TINY_BACKBONE, num_classes=3).eval()
    model.save_pretrained(tmp_path / "run/model", metadata={"class_names": ["a", "b", "c"]})
    config = {"name": "sanet", **model.config}
    atomic_torch_save({"model": model.state_dict(), "model_config": config}, tmp_path / "x.pt")
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        expected = model(x)["out"]
        for path in (tmp_path / "run", tmp_path / "run/model", tmp_path / "x.pt"):
            loaded, _ = load_model(path)
            assert torch.equal(loaded(x)["out"], expected), path
    assert load_model(tmp_path / "run")[1]["class_names"] == ["a", "b", "c"]


def test_load_model_errors_say_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="neither a save_pretrained folder"):
        load_model(tmp_path)
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a sanet training checkpoint"):
        load_model(tmp_path / "other.pt")
    atomic_save_bytes(tmp_path / "junk.pt", b"not a zip or pickle")
    with pytest.raises(DamagedFileError, match=r"junk\.pt: is corrupt or not a PyTorch weights"):
        load_model(tmp_path / "junk.pt")  # refused while unpickling, named, not a torch trace


class _RunsCode:
    """Unpickling this calls ``os.makedirs(path)``: a stand-in for arbitrary code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.makedirs, (str(self.path),))


def test_loading_never_runs_code_from_a_checkpoint(tmp_path: Path) -> None:
    """SPEC §5: weights_only loading. The file really runs code under a plain torch.load."""
    marker = tmp_path / "code-ran"
    torch.save({"model": _RunsCode(marker), "model_config": {}}, tmp_path / "evil.pt")
    with pytest.raises(DamagedFileError, match=r"GLOBAL os\.makedirs; loading it could run code"):
        load_model(tmp_path / "evil.pt")
    with pytest.raises(DamagedFileError, match=r"evil\.pt"):
        safe_torch_load(tmp_path / "evil.pt")
    assert not marker.exists()
    torch.load(tmp_path / "evil.pt", weights_only=False)  # what safe loading must prevent
    assert marker.is_dir()
