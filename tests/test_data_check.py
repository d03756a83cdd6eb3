"""`sanet check-data` and the data CLI: every problem is found, counted, reported, exit code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sanet.cli import main
from sanet.data import build_dataset
from sanet.data.check import check_dataset, median_frequency_weights


def _pair(root: Path, stem: str, mask: np.ndarray, image_hw=None, seed: int = 0) -> None:
    h, w = image_hw or mask.shape[:2]
    img = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    Image.fromarray(img).save(root / "images/train" / f"{stem}.png")
    Image.fromarray(mask).save(root / "masks/train" / f"{stem}.png")


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    """A folder dataset (3 classes) with one pair per problem."""
    (tmp_path / "images/train").mkdir(parents=True)
    (tmp_path / "masks/train").mkdir(parents=True)
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    good = np.array([[0, 0, 1, 1], [0, 0, 1, 255], [2, 2, 2, 2]], np.uint8)
    _pair(tmp_path, "00_good", good, seed=0)
    _pair(tmp_path, "01_dup", good, seed=0)  # same pixels as 00_good
    _pair(tmp_path, "02_size", good, image_hw=(4, 4), seed=2)
    bad = good.copy()
    bad[0, 0] = 77
    _pair(tmp_path, "03_label77", bad, seed=3)
    rgb = np.zeros((3, 4, 3), np.uint8)
    rgb[0, 0] = (128, 0, 0)
    _pair(tmp_path, "04_rgb", rgb, seed=4)
    _pair(tmp_path, "05_ignore", np.full((3, 4), 255, np.uint8), seed=5)
    _pair(tmp_path, "06_trunc", good, seed=6)
    p = tmp_path / "images/train/06_trunc.png"
    p.write_bytes(p.read_bytes()[:60])
    return tmp_path


def test_check_finds_each_problem(messy):
    report = check_dataset(build_dataset("folder", messy), workers=2)
    kinds = {(Path(it["image"]).stem, it["kind"]) for it in report["issues"]}
    assert kinds == {
        ("01_dup", "duplicate"),
        ("02_size", "size_mismatch"),
        ("03_label77", "bad_labels"),
        ("04_rgb", "rgb_mask"),
        ("05_ignore", "all_ignore"),
        ("06_trunc", "truncated"),
    }
    assert report["errors"] == 4 and report["warnings"] == 2
    assert report["num_pairs"] == 7
    # class pixels counted by hand over every readable mask: 00, 01, 02, 06 are `good`
    # (4 px of class 0, 3 of class 1, 4 of class 2); 03 is `good` with one class-0 pixel
    # turned into 77 (not counted); 04 is unreadable as a mask, 05 all ignore.
    assert report["class_pixels"] == [4 * 4 + 3, 3 * 5, 4 * 5]
    assert report["class_images"] == [5, 5, 5]


def test_median_frequency_weights_by_hand():
    # f = [10/100, 30/100, 5/50] = [0.1, 0.3, 0.1]; median 0.1 -> w = [1, 1/3, 1]; unseen -> 0
    w = median_frequency_weights(np.array([10, 30, 5, 0]), np.array([100, 100, 50, 0]))
    assert np.allclose(w, [1.0, 1 / 3, 1.0, 0.0])


def test_check_synthetic_is_clean():
    ds = build_dataset("synthetic", None, num_images=6, size=48, seed=0)
    report = check_dataset(ds, workers=1)
    assert report["errors"] == 0 and report["num_pairs"] == 6
    assert all(n > 0 for n in report["class_pixels"][:1])


def test_cli_check_data_exit_code_and_json(messy, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # no wrapping of long paths in the captured output
    out = tmp_path / "report.json"
    rc = main(["check-data", "--data", f"folder:{messy}", "--out", str(out)])
    assert rc == 1
    report = json.loads(out.read_text())
    assert report["errors"] == 4 and report["data"] == f"folder:{messy}"
    text = capsys.readouterr().out
    assert "size_mismatch" in text and "errors found" in text and "03_label77" in text


def test_cli_check_data_clean_exit_zero(tmp_path):
    assert (
        main(
            [
                "prepare",
                "synthetic",
                "--out",
                str(tmp_path / "s"),
                "--num-train",
                "4",
                "--num-val",
                "2",
                "--size",
                "32",
            ]
        )
        == 0
    )
    out = tmp_path / "r.json"
    assert main(["check-data", "--data", f"folder:{tmp_path / 's'}", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["num_pairs"] == 4


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    assert main(["check-data", "--data", "vocc:/x"]) == 2
    assert "Did you mean 'voc'" in capsys.readouterr().err
    assert main(["check-data", "--data", f"voc:{tmp_path}"]) == 2
    assert "SegmentationClass" in capsys.readouterr().err
