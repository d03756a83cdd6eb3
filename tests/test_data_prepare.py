"""`sanet prepare`: official formats (scipy.io.savemat fixtures) -> loader layouts, value by value."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat
from scipy.sparse import csc_matrix

from sanet.data import build_dataset
from sanet.data.formats import CONTEXT59_IDS, read_context59_list
from sanet.data.prepare import KNOWN_MD5, prepare_pascal_context, prepare_synthetic, prepare_voc_aug
from sanet.data.splits import train_aug_ids
from sanet.errors import flag_names


def _jpg(path: Path, h: int, w: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(path)


def _sbd_mat(path: Path, seg: np.ndarray) -> None:
    """The SBD release's cls/<id>.mat: a struct GTcls with Segmentation, Boundaries, ..."""
    path.parent.mkdir(parents=True, exist_ok=True)
    boundaries = np.empty((20, 1), dtype=object)  # a 20×1 cell of sparse edge maps
    for k in range(20):
        boundaries[k, 0] = csc_matrix(seg == k + 1)
    gtcls = {
        "Segmentation": seg.astype(np.uint8),
        "Boundaries": boundaries,
        "CategoriesPresent": np.unique(seg[seg > 0]).astype(np.uint8),
    }
    savemat(path, {"GTcls": gtcls})


def _voc_sbd(tmp_path: Path) -> tuple[Path, Path]:
    """VOC: train a,b  val c,d (c, d and a have official masks). SBD: train a,e  val c,f."""
    voc = tmp_path / "VOCdevkit/VOC2012"
    (voc / "ImageSets/Segmentation").mkdir(parents=True)
    (voc / "SegmentationClass").mkdir()
    (voc / "ImageSets/Segmentation/train.txt").write_text("a\nb\n")
    (voc / "ImageSets/Segmentation/val.txt").write_text("c\nd\n")
    for s in "abcdef":
        _jpg(voc / "JPEGImages" / f"{s}.jpg", 3, 4)
    for s in "abcd":
        m = np.array([[0, 1, 255, 15]] * 3, np.uint8)  # official masks: 255 borders
        m[0, 0] = ord(s) - ord("a")  # a tag per file to trace which source was used
        Image.fromarray(m).save(voc / "SegmentationClass" / f"{s}.png")
    sbd = tmp_path / "benchmark_RELEASE/dataset"
    (sbd / "cls").mkdir(parents=True)
    (sbd / "train.txt").write_text("a\ne\n")
    (sbd / "val.txt").write_text("c\nf\n")
    for s in "acef":
        _sbd_mat(sbd / "cls" / f"{s}.mat", np.array([[20, 0, 3, 7]] * 3))
    return tmp_path / "benchmark_RELEASE", voc


def test_train_aug_ids_is_union_minus_val():
    assert train_aug_ids(["a", "e"], ["c", "f"], ["a", "b"], ["c", "d"]) == ["a", "b", "e", "f"]


def test_prepare_voc_aug_values_and_lists(tmp_path):
    sbd, voc = _voc_sbd(tmp_path)
    summary = prepare_voc_aug(sbd, tmp_path / "VOCdevkit")
    assert summary["train_aug"] == 4 and summary["val"] == 2
    assert summary["masks_from_voc"] == 4 and summary["masks_from_sbd"] == 2
    lists = voc / "ImageSets/Segmentation"
    assert (lists / "train_aug.txt").read_text().split() == ["a", "b", "e", "f"]
    aug = voc / "SegmentationClassAug"
    # e, f exist only in SBD: the .mat values, exactly
    assert np.asarray(Image.open(aug / "e.png")).tolist() == [[20, 0, 3, 7]] * 3
    # a is in both: VOC's official mask wins, with its 255 border
    assert (
        np.asarray(Image.open(aug / "a.png")).tolist() == [[0, 1, 255, 15]] + [[0, 1, 255, 15]] * 2
    )
    assert np.asarray(Image.open(aug / "d.png"))[0].tolist() == [3, 1, 255, 15]
    ds = build_dataset("voc-aug", voc, split="train")
    assert [Path(ds.files(i)[0]).stem for i in range(len(ds))] == ["a", "b", "e", "f"]
    assert ds[2][1].tolist() == [[20, 0, 3, 7]] * 3
    val = build_dataset("voc-aug", voc, split="val")
    assert val[0][1][0].tolist() == [2, 1, 255, 15]


def test_prepare_voc_aug_to_separate_out(tmp_path):
    sbd, voc = _voc_sbd(tmp_path)
    out = tmp_path / "out"
    prepare_voc_aug(sbd, voc, out)
    ds = build_dataset("voc-aug", out, split="train")
    assert len(ds) == 4 and ds[0][0].shape == (3, 3, 4)
    assert not (voc / "SegmentationClassAug").exists()


def test_sbd_bad_values_named(tmp_path):
    sbd, voc = _voc_sbd(tmp_path)
    _sbd_mat(sbd / "dataset/cls/e.mat", np.array([[21, 0]]))
    with pytest.raises(ValueError, match=r"e\.mat: GTcls\.Segmentation is not"):
        prepare_voc_aug(sbd, voc)


def test_known_archive_checksum_mismatch_refused(tmp_path):
    sbd, voc = _voc_sbd(tmp_path)
    archive = tmp_path / "benchmark.tgz"  # the official name, but not the official bytes
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(sbd, arcname="benchmark_RELEASE")
    with pytest.raises(
        ValueError, match=r"MD5 is [0-9a-f]{32}, expected 82b4d87c.*pass skip_checksum=True"
    ):
        prepare_voc_aug(archive, voc, tmp_path / "out")
    with (
        flag_names({"skip_checksum": "--skip-checksum"}),
        pytest.raises(ValueError, match=r"pass --skip-checksum if"),
    ):
        prepare_voc_aug(archive, voc, tmp_path / "out")
    summary = prepare_voc_aug(archive, voc, tmp_path / "out", skip_checksum=True)
    assert summary["train_aug"] == 4


def test_known_archive_checksum_match_unpacks(tmp_path, monkeypatch):
    sbd, voc = _voc_sbd(tmp_path)
    archive = tmp_path / "benchmark.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(sbd, arcname="benchmark_RELEASE")
    digest = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(KNOWN_MD5, "benchmark.tgz", (digest, True))
    assert prepare_voc_aug(archive, voc, tmp_path / "out")["masks_from_sbd"] == 2


def _context(tmp_path: Path) -> tuple[Path, Path]:
    voc = tmp_path / "VOCdevkit/VOC2010"
    (voc / "ImageSets/Main").mkdir(parents=True)
    (voc / "ImageSets/Main/train.txt").write_text("2008_000002\n2008_000003\n")
    (voc / "ImageSets/Main/val.txt").write_text("2008_000008\n2008_000099\n")  # 99: no label map
    ctx = tmp_path / "trainval"
    ctx.mkdir()
    # 0 unlabeled, 2 aeroplane, 9 bag, 284 person, 458 wood, 1 accordion (not in the 59)
    label_map = np.array([[0, 2, 9], [284, 458, 1], [440, 397, 100]], np.uint16)
    for stem in ("2008_000002", "2008_000003", "2008_000008"):
        _jpg(voc / "JPEGImages" / f"{stem}.jpg", 3, 3)
        savemat(ctx / f"{stem}.mat", {"LabelMap": label_map})
    _jpg(voc / "JPEGImages/2008_000099.jpg", 3, 3)
    return ctx, voc


def test_prepare_pascal_context_values(tmp_path):
    ctx, voc = _context(tmp_path)
    summary = prepare_pascal_context(ctx, tmp_path / "VOCdevkit")
    assert (summary["train"], summary["val"], summary["masks"]) == (2, 1, 3)
    png = np.asarray(Image.open(voc / "SegmentationClassContext/2008_000002.png"))
    # aeroplane 1, bag 2, person 37, wood 59, wall(440) 56, table(397) 50; others 0
    assert png.tolist() == [[0, 1, 2], [37, 59, 0], [56, 50, 0]]
    ds = build_dataset("pascal-context", voc, split="train")
    assert ds[0][1].tolist() == [[255, 0, 1], [36, 58, 255], [55, 49, 255]]
    assert ds.class_names[36] == "person" and ds.class_names[55] == "wall"
    assert (voc / "ImageSets/SegmentationContext/val.txt").read_text() == "2008_000008\n"


def test_context59_list_file(tmp_path):
    names = ["x"] * 59
    lines = [f"{cid}: n{cid}" for cid in reversed(CONTEXT59_IDS)]  # order in the file is irrelevant
    (tmp_path / "59_labels.txt").write_text("\n".join(lines) + "\n")
    ids, names = read_context59_list(tmp_path / "59_labels.txt")
    assert ids == CONTEXT59_IDS and names[0] == "n2"
    (tmp_path / "bad.txt").write_text("aeroplane\n")
    with pytest.raises(ValueError, match="'<id>: <name>'"):
        read_context59_list(tmp_path / "bad.txt")


def test_context_missing_mats_explained(tmp_path):
    _, voc = _context(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no \.mat label maps"):
        prepare_pascal_context(tmp_path / "empty", voc)


@pytest.mark.parametrize("generator", ["scenes", "glyphs"])
def test_prepare_synthetic_matches_generator(tmp_path, generator):
    prepare_synthetic(tmp_path, num_train=3, num_val=2, size=40, seed=5, generator=generator)
    folder = build_dataset("folder", tmp_path, split="val")
    gen = build_dataset(
        "synthetic", None, split="val", num_images=2, size=40, seed=5, generator=generator
    )
    assert len(folder) == 2 and folder.class_names == gen.class_names
    assert folder.palette == gen.palette
    for i in range(2):
        assert np.array_equal(folder[i][0].numpy(), gen[i][0].numpy())
        assert np.array_equal(folder[i][1].numpy(), gen[i][1].numpy())
    assert len(list((tmp_path / "images/train").glob("*.png"))) == 3


def test_voc_archive_without_out_unpacks_next_to_it(tmp_path):
    sbd, voc = _voc_sbd(tmp_path)
    archive = tmp_path / "my_voc.tar"  # not an official name: no checksum to check
    with tarfile.open(archive, "w") as tar:
        tar.add(voc.parent, arcname="VOCdevkit")
    summary = prepare_voc_aug(sbd, archive)
    assert Path(summary["root"]).is_relative_to(tmp_path / "my_voc_extracted")
    assert len(build_dataset("voc-aug", summary["root"], split="train")) == 4


def test_cli_prepare_voc_aug_and_context(tmp_path, capsys):
    from sanet.cli import main

    sbd, voc = _voc_sbd(tmp_path / "a")
    assert main(["prepare", "voc-aug", "--sbd", str(sbd), "--voc", str(voc)]) == 0
    assert "train_aug=4" in capsys.readouterr().out
    ctx, voc2010 = _context(tmp_path / "b")
    args = ["prepare", "pascal-context", "--context", str(ctx), "--voc2010", str(voc2010)]
    assert main(args) == 0
    assert "train=2" in capsys.readouterr().out
    assert main(["prepare", "voc-aug", "--sbd", str(tmp_path / "nope"), "--voc", str(voc)]) == 2
    assert "not found" in capsys.readouterr().err


def test_voc_aug_reads_sbd_mat_directly(tmp_path):
    _voc_sbd(tmp_path)  # VOCdevkit/VOC2012 and benchmark_RELEASE/dataset side by side
    ds = build_dataset("voc-aug", tmp_path, split="train")
    assert [Path(ds.files(i)[0]).stem for i in range(len(ds))] == ["a", "b", "e", "f"]
    assert ds.files(2)[1].endswith("cls/e.mat") and ds.files(0)[1].endswith("a.png")
    assert ds[2][1].tolist() == [[20, 0, 3, 7]] * 3  # the .mat values, exactly
    assert ds[0][1][0].tolist() == [0, 1, 255, 15]
    assert len(build_dataset("voc-aug", tmp_path, split="val")) == 2


def test_prepare_synthetic_refuses_a_folder_with_old_scenes(tmp_path) -> None:
    prepare_synthetic(tmp_path / "s", num_train=2, num_val=1, size=48)
    before = sorted(p.name for p in (tmp_path / "s/images/train").iterdir())
    with pytest.raises(FileExistsError, match="already holds images"):
        prepare_synthetic(tmp_path / "s", num_train=1, num_val=1, size=48)
    assert sorted(p.name for p in (tmp_path / "s/images/train").iterdir()) == before
