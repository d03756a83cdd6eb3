"""Mask conventions (docs/reliability.md, r20–r24): binary masks saved as 0/255, a class list of
one class, a class that never appears while much is ignored, labelled pixels of one class only.
``sanet check-data`` and the start of training name each with its fix; the ``folder`` option
``label_map`` reads 0/255 masks correctly.

Each test name carries the id (``r20`` ...) that the table in docs/reliability.md cites.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sanet.cli import main
from sanet.data import build_dataset
from sanet.data.check import check_training_labels

TRAIN = [  # a tiny FCN, two steps: enough to reach the data checks and a validation
    "model.name=fcn",
    "model.backbone=resnet10t",
    "model.pretrained_backbone=false",
    "data.dataset=folder",
    "data.base_size=32",
    "data.crop_size=32",
    "data.num_workers=0",
    "train.batch_size=2",
    "train.max_steps=2",
    "train.log_every=1",
    "train.device=cpu",
    "eval.crop_size=32",
    "eval.stride=32",
]


def _dataset(root: Path, classes: list[str], masks: dict[str, list[np.ndarray]]) -> Path:
    """A ``folder`` dataset: random images, the given masks per split, ``classes.txt``."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    for split, arrays in masks.items():
        for i, mask in enumerate(arrays):
            for sub, array in (
                ("images", rng.integers(0, 256, (*mask.shape, 3), np.uint8)),
                ("masks", mask),
            ):
                (root / sub / split).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(root / sub / split / f"{i:03d}.png")
    return root


def _box(value: int, background: int = 0, size: int = 32, ignore: float = 0.0) -> np.ndarray:
    """A square of ``value`` (a quarter of the image) on ``background``; the first rows set to
    255 (ignore) so that ``ignore`` of the pixels are."""
    mask = np.full((size, size), background, np.uint8)
    mask[8:24, 8:24] = value
    mask[: round(ignore * size)] = 255
    return mask


@pytest.fixture
def binary(tmp_path: Path) -> Path:
    """Binary masks saved as 0/255 (255 = the object), the commonest two-class convention."""
    masks = [_box(255) for _ in range(4)]
    return _dataset(tmp_path / "binary", ["background", "object"], {"train": masks, "val": masks})


def _check_data(root: Path, tmp_path: Path, *extra: str) -> tuple[int, dict]:
    out = tmp_path / "report.json"
    rc = main(["check-data", "--data", f"folder:{root}", "--out", str(out), "--overwrite", *extra])
    return rc, json.loads(out.read_text())


def _train(root: Path, out: Path, *extra: str) -> int:
    config = out.parent / "recipe.yaml"
    config.write_text("model: {name: fcn}\n")
    return main(
        ["train", str(config), "--out", str(out), "--set", *TRAIN, f"data.root={root}", *extra]
    )


def _one_line(err: str, *needles: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# ------------------------------------------------------------------ r20: 0/255 binary masks


@pytest.mark.reliability("r20")
@pytest.mark.parametrize("command", ["check-data", "train"])
def test_binary_masks_saved_as_0_255_are_named_with_the_fix(
    command, binary, tmp_path, capsys
) -> None:
    if command == "check-data":
        rc, report = _check_data(binary, tmp_path)
        assert rc == 1 and report["issue_counts"]["mask_0_255"] == 1  # an error: exit 1
        issue = next(it for it in report["issues"] if it["kind"] == "mask_0_255")
        assert "'object' (1) never appears" in issue["message"]
        assert "label_map: {255: 1}" in issue["message"]
        assert report["class_images"] == [4, 0] and report["ignore_share"] == pytest.approx(0.25)
    else:
        out = tmp_path / "run"
        assert _train(binary, out) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("sanet train: error: folder:train: every mask holds only")
        assert "label_map: {255: 1}" in err and "never appears" in err
        assert not out.exists()  # refused before the run directory was made


@pytest.mark.reliability("r20")
def test_label_map_reads_255_as_the_object_and_trains(binary, tmp_path, capsys) -> None:
    ds = build_dataset("folder", binary, split="train", label_map={255: 1})
    raw = np.asarray(Image.open(binary / "masks/train/000.png"))
    _, mask = ds[0]
    np.testing.assert_array_equal(mask.numpy(), (raw == 255).astype(np.int64))  # 255 → 1
    rc, report = _check_data(binary, tmp_path, "--data-options", "{label_map: {255: 1}}")
    assert rc == 0 and report["errors"] == 0 and report["class_images"] == [4, 4]
    out = tmp_path / "run"
    assert _train(binary, out, "data.options={label_map: {255: 1}}") == 0
    val = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"val"' in x]
    # both classes are in the ground truth (no IoU of None), so no perfect score from ignore
    assert all(iou is not None for iou in val[-1]["IoU"]) and val[-1]["mIoU"] < 1.0


# ------------------------------------------------------------- r21: a class list of one class


@pytest.mark.reliability("r21")
@pytest.mark.parametrize("command", ["check-data", "train"])
def test_a_single_class_is_refused_by_name(command, tmp_path, capsys) -> None:
    masks = [_box(0, background=0) for _ in range(2)]
    root = _dataset(tmp_path / "one", ["object"], {"train": masks, "val": masks})
    if command == "check-data":
        rc, report = _check_data(root, tmp_path)
        assert rc == 1 and report["issue_counts"]["too_few_classes"] == 1
        assert "1 class ('object'); segmentation needs at least 2" in report["issues"][0]["message"]
    else:
        assert _train(root, tmp_path / "run") == 2
        _one_line(capsys.readouterr().err, "1 class ('object')", "classes.txt", "background")


# ------------------------------------------- r22: absent classes under much ignore; much ignore

WARNINGS = [
    # 3 classes, value 2 never used, 30 % of every mask 255: the 0/255 signature, generalised
    ("absent_class", ["bg", "a", "b"], lambda: _box(1, ignore=0.3), "'b' (2) never appears"),
    # every class present but 60 % of the pixels ignored
    ("high_ignore", ["bg", "a"], lambda: _box(1, ignore=0.6), "% of the pixels are ignore"),
]


@pytest.mark.reliability("r22")
@pytest.mark.parametrize(("kind", "classes", "make", "needle"), WARNINGS)
def test_absent_classes_and_a_large_ignore_share_are_warned(
    kind, classes, make, needle, tmp_path
) -> None:
    masks = [make() for _ in range(3)]
    root = _dataset(tmp_path / kind, classes, {"train": masks, "val": masks})
    rc, report = _check_data(root, tmp_path)
    assert rc == 0 and report["errors"] == 0 and report["issue_counts"][kind] == 1
    assert needle in next(it for it in report["issues"] if it["kind"] == kind)["message"]
    # the start of training shows the same warning (and trains)
    warnings = check_training_labels(build_dataset("folder", root, split="train"))
    assert len(warnings) == 1 and needle in warnings[0] and "label_map" in warnings[0]


# --------------------------------------------------------- r23: labelled pixels of one class


@pytest.mark.reliability("r23")
def test_training_refuses_a_split_of_one_class_naming_the_cause(tmp_path, capsys) -> None:
    masks = [_box(0) for _ in range(3)]  # classes.txt has 3 classes; masks hold value 0 only
    root = _dataset(tmp_path / "zeros", ["bg", "a", "b"], {"train": masks, "val": masks})
    out = tmp_path / "run"
    assert _train(root, out) == 2
    line = _one_line(capsys.readouterr().err, "labelled pixels hold one class only ('bg' (0))")
    assert "do not use the values of the class list" in line and not out.exists()
    rc, report = _check_data(root, tmp_path)
    assert rc == 1 and report["issue_counts"]["one_class"] == 1


@pytest.mark.reliability("r23")
def test_a_large_split_is_checked_on_a_sample_and_refused_only_on_all_masks(
    tmp_path, monkeypatch
) -> None:
    n = 100  # more than the 64 masks the start of training samples
    good = [_box(0)] * (n - 1) + [_box(1)]  # the second class only in the last mask
    bad = [_box(0)] * n
    reads = []
    root = _dataset(
        tmp_path / "large", ["bg", "a"], {"good": good, "bad": bad, "many": [_box(1)] * n}
    )
    import sanet.data.datasets as datasets

    real = datasets.SegmentationDataset.read_mask
    monkeypatch.setattr(
        datasets.SegmentationDataset, "read_mask", lambda self, i: reads.append(i) or real(self, i)
    )
    check_training_labels(build_dataset("folder", root, split="many"))
    assert len(reads) == 64  # a good split costs a bounded sample
    reads.clear()
    # the sample misses the last mask, so it looks like one class: the rest is read to confirm
    assert check_training_labels(build_dataset("folder", root, split="good")) == []
    assert sorted(reads) == list(range(n))
    with pytest.raises(ValueError, match=f"all {n} masks of folder:bad: the labelled pixels hold"):
        check_training_labels(build_dataset("folder", root, split="bad"))


# ---------------------------------------------------------------------- r24: bad label_map

BAD_MAPS = [
    ("{label_map: {256: 1}}", "label_map key 256 is not a mask value 0..255"),
    ("{label_map: {255: 2}}", "sends 255 to 2, which is neither a class id 0..1"),
    ("{label_map: [255, 1]}", "label_map must map raw mask values to class ids"),
]


@pytest.mark.reliability("r24")
@pytest.mark.parametrize(("options", "message"), BAD_MAPS)
def test_a_bad_label_map_is_one_line(options, message, binary, tmp_path, capsys) -> None:
    out = tmp_path / "report.json"
    args = [
        "check-data",
        "--data",
        f"folder:{binary}",
        "--data-options",
        options,
        "--out",
        str(out),
    ]
    assert main(args) == 2
    _one_line(capsys.readouterr().err, message)
    assert not out.exists()
