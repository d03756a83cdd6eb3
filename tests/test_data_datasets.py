"""Loaders per dataset kind, on tiny fixtures written in the real on-disk layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sanet.data import build_dataset, list_datasets, parse_data_spec, train_transforms
from sanet.data.classes import voc_palette


def _jpg(path: Path, h: int = 9, w: int = 11, seed: int = 0) -> np.ndarray:
    arr = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=95)
    return arr


def _png(path: Path, arr: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(np.asarray(arr, dtype=np.uint8))
    if palette:  # an "L" image becomes "P" with the same indices, as in the VOC release
        im.putpalette([c for rgb in voc_palette(256) for c in rgb])
        assert im.mode == "P"
    im.save(path)


# raw mask values with a 255 border: every layout's mapping is checked against these by hand
RAW = np.array(
    [
        [0, 0, 255, 1, 1],
        [0, 255, 3, 3, 20],
        [255, 7, 8, 33, 59],
    ],
    dtype=np.uint8,
)


def _voc_root(tmp_path: Path, mask_dir: str = "SegmentationClass") -> Path:
    base = tmp_path / "VOCdevkit" / "VOC2012"
    for i, stem in enumerate(["2007_000032", "2007_000033"]):
        _jpg(base / "JPEGImages" / f"{stem}.jpg", 3, 5, seed=i)
        _png(base / mask_dir / f"{stem}.png", np.minimum(RAW, 20) | (RAW == 255) * 255, True)
    lists = base / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("2007_000032\n")
    (lists / "val.txt").write_text("2007_000033\n")
    return base


def test_voc_reads_palette_indices_and_keeps_255(tmp_path):
    _voc_root(tmp_path)
    ds = build_dataset("voc", tmp_path, split="train")  # root may be the VOCdevkit parent
    image, mask = ds[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 3, 5)
    assert mask.dtype == torch.int64 and mask.shape == (3, 5)
    expected = np.minimum(RAW, 20) | (RAW == 255) * 255
    assert mask.numpy().tolist() == expected.tolist()
    assert ds.num_classes == 21 and ds.class_names[15] == "person"
    assert ds.palette[1] == (128, 0, 0) and len(ds.palette) == 21
    assert ds.files(0)[0].endswith("JPEGImages/2007_000032.jpg")
    assert ds.files(0)[1].endswith("SegmentationClass/2007_000032.png")
    assert len(build_dataset("voc", tmp_path / "VOCdevkit" / "VOC2012", split="val")) == 1


def test_voc_aug_uses_train_aug_list(tmp_path):
    base = _voc_root(tmp_path, "SegmentationClassAug")
    (base / "ImageSets/Segmentation/train_aug.txt").write_text("2007_000032\n2007_000033\n")
    ds = build_dataset("voc-aug", base, split="train")
    assert len(ds) == 2 and ds.files(1)[1].endswith("SegmentationClassAug/2007_000033.png")
    assert ds[1][1][0, 2] == 255


def test_voc_aug_without_list_says_run_prepare(tmp_path):
    from sanet.errors import flag_names

    _voc_root(tmp_path, "SegmentationClassAug")
    python = r"sanet\.prepare\('voc-aug', sbd='SBD', voc='VOC2012'\)"
    with pytest.raises(FileNotFoundError, match=python):  # the caller's words: Python
        build_dataset("voc-aug", tmp_path, split="train")
    cli = "sanet prepare voc-aug --sbd SBD --voc VOC2012"  # or the command line's
    with flag_names({"sbd": "--sbd", "voc": "--voc"}), pytest.raises(FileNotFoundError, match=cli):
        build_dataset("voc-aug", tmp_path, split="train")


def test_voc_aug_without_aug_or_sbd_explains(tmp_path):
    _voc_root(tmp_path)  # plain VOC: neither SegmentationClassAug nor SBD
    with pytest.raises(FileNotFoundError, match="no VOC2012 \\+ SBD pair"):
        build_dataset("voc-aug", tmp_path, split="train")


def test_pascal_context_maps_background_to_255_and_shifts(tmp_path):
    base = tmp_path / "VOCdevkit" / "VOC2010"
    _jpg(base / "JPEGImages" / "2008_000002.jpg", 3, 5)
    raw = np.minimum(RAW, 59)
    raw[RAW == 255] = 255
    _png(base / "SegmentationClassContext" / "2008_000002.png", raw)
    (base / "ImageSets/SegmentationContext").mkdir(parents=True)
    (base / "ImageSets/SegmentationContext/val.txt").write_text("2008_000002\n")
    ds = build_dataset("pascal-context", tmp_path, split="val")
    expected = [
        [255, 255, 255, 0, 0],
        [255, 255, 2, 2, 19],
        [255, 6, 7, 32, 58],
    ]
    assert ds[0][1].tolist() == expected
    assert ds.num_classes == 59 and ds.class_names[0] == "aeroplane"
    assert ds.class_names[58] == "wood" and len(ds.palette) == 59


def test_ade20k_maps_zero_to_255(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    raw = np.array([[0, 1, 150], [2, 0, 75]], np.uint8)
    _jpg(base / "images/validation/ADE_val_00000001.jpg", 2, 3)
    _png(base / "annotations/validation/ADE_val_00000001.png", raw)
    ds = build_dataset("ade20k", tmp_path, split="val")
    assert ds[0][1].tolist() == [[255, 0, 149], [1, 255, 74]]
    assert ds.num_classes == 150 and ds.class_names[0] == "wall"
    assert ds.class_names[149] == "flag"


def test_cityscapes_label_ids_to_train_ids(tmp_path):
    base = tmp_path / "cityscapes"
    img = base / "leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png"
    img.parent.mkdir(parents=True)
    Image.fromarray(np.zeros((2, 6, 3), np.uint8)).save(img)
    raw = np.array([[0, 7, 8, 11, 24, 26], [33, 9, 15, 31, 23, 1]], np.uint8)
    _png(base / "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png", raw)
    ds = build_dataset("cityscapes", base, split="val")
    # road 7->0, sidewalk 8->1, building 11->2, person 24->11, car 26->13, bicycle 33->18,
    # parking 9 / bridge 15 / ego vehicle 1 / unlabeled 0 -> 255, train 31->16, sky 23->10
    assert ds[0][1].tolist() == [[255, 0, 1, 2, 11, 13], [18, 255, 255, 16, 10, 255]]
    assert ds.num_classes == 19 and ds.palette[0] == (128, 64, 128)


def _folder(tmp_path: Path) -> Path:
    (tmp_path / "classes.txt").write_text("sky\ngrass 0 200 0\ncow\n".replace(" 0 200 0", ""))
    for stem, ext in [("a", ".jpg"), ("b", ".png")]:
        p = tmp_path / "images/train" / f"{stem}{ext}"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((4, 6, 3), 100, np.uint8)).save(p)
        _png(tmp_path / "masks/train" / f"{stem}.png", np.array([[0, 1, 2, 255, 0, 1]] * 4))
    return tmp_path


def test_folder_layout(tmp_path):
    ds = build_dataset("folder", _folder(tmp_path), split="train")
    assert len(ds) == 2 and ds.class_names == ["sky", "grass", "cow"]
    assert ds[1][1][0].tolist() == [0, 1, 2, 255, 0, 1]
    assert ds.files(0)[1].endswith("masks/train/a.png")


def test_folder_classes_txt_with_colours(tmp_path):
    _folder(tmp_path)
    (tmp_path / "classes.txt").write_text("sky 0 0 255\ngrass 0 200 0\ncow 90 60 30\n")
    ds = build_dataset("folder", tmp_path, split="train")
    assert ds.palette == [(0, 0, 255), (0, 200, 0), (90, 60, 30)]


def test_folder_missing_mask_named(tmp_path):
    _folder(tmp_path)
    (tmp_path / "masks/train/b.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"masks/train/b\.png"):
        build_dataset("folder", tmp_path, split="train")


def test_transforms_are_applied(tmp_path):
    ds = build_dataset(
        "folder", _folder(tmp_path), transforms=train_transforms(base_size=8, crop_size=8)
    )
    image, mask = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 8, 8)
    assert mask.dtype == torch.int64 and mask.shape == (8, 8)


def test_synthetic_is_deterministic_and_split_dependent():
    a = build_dataset("synthetic", None, split="train", num_images=3, size=64, seed=1)
    b = build_dataset("synthetic", "ignored", split="train", num_images=3, size=64, seed=1)
    v = build_dataset("synthetic", None, split="val", num_images=3, size=64, seed=1)
    c = build_dataset("synthetic", None, split="train", num_images=3, size=64, seed=2)
    assert torch.equal(a[2][0], b[2][0]) and torch.equal(a[2][1], b[2][1])
    assert not torch.equal(a[2][0], v[2][0])
    assert not torch.equal(a[2][0], c[2][0])
    assert a.files(2) == ("synthetic:scenes:seed=1:split=train:index=2",) * 2
    image, mask = a[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.uint8
    assert set(mask.unique().tolist()) <= {*range(a.num_classes), 255}
    assert a.num_classes == len(a.class_names) == len(a.palette) >= 6


def test_unknown_kind_suggests_closest():
    with pytest.raises(ValueError, match="Did you mean 'cityscapes'"):
        build_dataset("citiscapes", "x")
    with pytest.raises(ValueError, match="Did you mean 'voc-aug'"):
        parse_data_spec("vocaug:/data")
    assert "synthetic" in list_datasets()


def test_unknown_option_suggests_closest(tmp_path):
    with pytest.raises(ValueError, match="Did you mean 'num_images'"):
        build_dataset("synthetic", None, num_image=3)
    with pytest.raises(ValueError, match="unknown dataset option 'seed'"):
        build_dataset("voc", tmp_path, seed=3)


def test_synthetic_generator_option():
    glyphs = build_dataset("synthetic", None, num_images=2, size=48, generator="glyphs")
    scenes = build_dataset("synthetic", None, num_images=2, size=48)
    assert glyphs.class_names[0] == "background" and "hexagon" in glyphs.class_names
    assert glyphs.class_names != scenes.class_names
    assert glyphs.files(1) == ("synthetic:glyphs:seed=0:split=train:index=1",) * 2
    with pytest.raises(ValueError, match="Did you mean 'glyphs'"):
        build_dataset("synthetic", None, generator="glyph")


def test_synthetic_size_from_yaml_list():
    ds = build_dataset("synthetic", None, num_images=1, size=[32, 48])
    assert ds[0][0].shape == (3, 32, 48)


def test_parse_data_spec():
    assert parse_data_spec("voc:/data/VOC2012") == ("voc", "/data/VOC2012")
    assert parse_data_spec("synthetic") == ("synthetic", None)
    with pytest.raises(ValueError, match="KIND:PATH"):
        parse_data_spec("voc")


def test_missing_root_explains_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="SegmentationClass"):
        build_dataset("voc", tmp_path)
