"""``sanet calibrate`` on a model that already carries a calibration, on a read-only model
folder, and with per-image requests it cannot meet (issue 28, items 1 and 9; issue 30's bad
input; docs/reliability.md r66–r67).

References: the bytes of ``config.json`` before and after; the stored record against the
``calibration.json`` files read back; ``sanet predict --unsure``'s masks.
"""

from __future__ import annotations

import errno
import json
import shutil
import tempfile
from pathlib import Path

import pytest

from _trust_scenes import save_sharp_model, write_folder_dataset
from sanet.cli import main
from sanet.trust.store import stored_record

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_folder_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def calibrated(data, tmp_path_factory) -> Path:
    """A run directory ``c7`` whose model was calibrated with ``--risk 0.4``."""
    run = tmp_path_factory.mktemp("runs") / "c7"
    save_sharp_model(run / "model")
    argv = ["calibrate", "--checkpoint", str(run), "--data", f"folder:{data}", "--risk", "0.4"]
    assert main(argv) == 0
    return run


def _one_error_line(err: str, *needles: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sanet calibrate: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


R66_CASES = [
    "again-without-risk",
    "again-with-risk",
    "read-only-model-folder",
    "limit-0",
    "per-image-too-few-images",
    "per-image-above-1",
    "per-image-without-risk",
]


@pytest.mark.reliability("r66")
@pytest.mark.parametrize("case", R66_CASES)
def test_r66_calibrate_refuses_before_any_work(
    case, calibrated, data, tmp_path, monkeypatch, capsys
):
    run = tmp_path / "c7"
    shutil.copytree(calibrated, run)
    config = (run / "model/config.json").read_bytes()
    out = tmp_path / "c7_quick"
    base = ["calibrate", "--checkpoint", str(run), "--data", f"folder:{data}", "--out", str(out)]
    flags, needles = {
        "again-without-risk": ([], ["already carries a calibration (T = ", "risk α = 0.4",
                                    "drop its risk threshold", "--replace", "--out-model"]),
        "again-with-risk": (["--risk", "0.5"], ["already carries a calibration", "--replace"]),
        "read-only-model-folder": (["--replace"], ["is read-only", "--out-model"]),
        "limit-0": (["--replace", "--limit", "0"],
                    ["--limit 0 leaves no image to calibrate on", "split 'val' has 4"]),
        "per-image-too-few-images": (["--replace", "--risk", "0.4", "--per-image", "0.1"],
                                     ["--per-image 0.1 at --confidence-level 0.9 needs at least "
                                      "22 calibration images", "the split has 4"]),
        "per-image-above-1": (["--replace", "--risk", "0.4", "--per-image", "1.5"],
                              ["--per-image must lie between 0 and 1, excluded", "got 1.5"]),
        "per-image-without-risk": (["--replace", "--per-image", "0.1"], ["give both"]),
    }[case]  # fmt: skip
    if case == "read-only-model-folder":  # root writes anywhere: the probe meets a read-only fs
        real = tempfile.mkstemp

        def read_only(*args, dir=None, **kwargs):
            if dir is not None and Path(dir) == run / "model":
                raise OSError(errno.EROFS, "Read-only file system")
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", read_only)
    assert main(base + flags) == 2
    line = _one_error_line(capsys.readouterr().err, *needles)
    assert "give the model folder a folder" not in line
    assert (run / "model/config.json").read_bytes() == config and not out.exists()


@pytest.mark.reliability("r67")
def test_r67_a_second_calibration_keeps_the_threshold_unless_replaced_and_files_agree(
    calibrated, data, tmp_path, capsys
):
    run = tmp_path / "c7"
    shutil.copytree(calibrated, run)
    spec = ["--checkpoint", str(run), "--data", f"folder:{data}"]
    quick = tmp_path / "c7_quick"
    assert main(["calibrate", *spec, "--out", str(quick)]) == 2  # the second command
    capsys.readouterr()
    image = str(data / "images/val/a.png")
    assert (
        main(["predict", "--checkpoint", str(run), image, "--out", str(tmp_path / "p"), "--unsure"])
        == 0
    )  # fmt: skip  (the threshold is still there)
    assert main(["calibrate", *spec, "--out", str(quick), "--replace", "--fit-images", "1"]) == 0
    printed = capsys.readouterr().out
    assert f"Also rewrote {run / 'calibration'}" in printed
    stored = json.loads((run / "model/config.json").read_text())["metadata"]["calibration"]
    assert "risk" not in stored
    for folder in (run / "calibration", quick):  # the run's files and the model agree
        assert stored_record(json.loads((folder / "calibration.json").read_text())) == stored
        assert (folder / "reliability.png").read_bytes().startswith(b"\x89PNG")
    assert main(["calibrate", *spec, "--replace", "--risk", "0.4"]) == 0  # the run's own folder
    stored = json.loads((run / "model/config.json").read_text())["metadata"]["calibration"]
    report = json.loads((run / "calibration/calibration.json").read_text())
    assert stored_record(report) == stored and stored["risk"]["alpha"] == 0.4
