"""Bad input never reaches the loss as garbage: each case is handled as documented or named."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sanet.data import DataError, build_dataset, load_image, load_mask


def _voc(tmp_path: Path, image: Image.Image | None = None, mask: Image.Image | None = None):
    """A one-image VOC2012 layout; returns (root, image path, mask path)."""
    base = tmp_path / "VOC2012"
    (base / "JPEGImages").mkdir(parents=True)
    (base / "SegmentationClass").mkdir()
    (base / "ImageSets/Segmentation").mkdir(parents=True)
    (base / "ImageSets/Segmentation/train.txt").write_text("x\n")
    ip, mp = base / "JPEGImages/x.jpg", base / "SegmentationClass/x.png"
    (image or Image.new("RGB", (6, 4), (10, 20, 30))).save(ip, format="JPEG")
    (mask or Image.fromarray(np.zeros((4, 6), np.uint8))).save(mp)
    return base, ip, mp


def test_good_pair_loads(tmp_path):
    root, _, _ = _voc(tmp_path)
    image, mask = build_dataset("voc", root)[0]
    assert image.shape == (3, 4, 6) and mask.shape == (4, 6)


def test_corrupt_image_names_file(tmp_path):
    root, ip, _ = _voc(tmp_path)
    ip.write_bytes(b"this is not a jpeg" * 10)
    with pytest.raises(DataError, match=r"x\.jpg: cannot read the image.*Fix: re-download"):
        build_dataset("voc", root)[0]


def test_truncated_image_names_file(tmp_path):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    root, ip, _ = _voc(tmp_path, image=img)
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(root / "SegmentationClass/x.png")
    data = ip.read_bytes()
    ip.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"x\.jpg: the image is truncated or corrupt"):
        build_dataset("voc", root)[0]


def test_mask_size_mismatch_names_both_files(tmp_path):
    root, _, _ = _voc(tmp_path, mask=Image.fromarray(np.zeros((5, 6), np.uint8)))
    with pytest.raises(DataError, match=r"x\.png: mask is 6×5.*x\.jpg is 6×4"):
        build_dataset("voc", root)[0]


def test_label_77_in_21_class_dataset(tmp_path):
    mask = np.zeros((4, 6), np.uint8)
    mask[1, 1] = 77
    mask[2, 2] = 255  # ignore stays legal
    root, _, _ = _voc(tmp_path, mask=Image.fromarray(mask))
    with pytest.raises(
        DataError, match=r"x\.png: mask holds values \[77\].*raw values 0\.\.20, 255"
    ):
        build_dataset("voc", root)[0]


def test_colour_rgb_mask_refused(tmp_path):
    mask = np.zeros((4, 6, 3), np.uint8)
    mask[1, 1] = (128, 0, 0)  # the VOC colour of "aeroplane", not an index
    root, _, _ = _voc(tmp_path, mask=Image.fromarray(mask))
    with pytest.raises(DataError, match=r"colour-coded RGB.*palette"):
        build_dataset("voc", root)[0]


def test_gray_saved_as_rgb_mask_accepted(tmp_path):
    mask = np.zeros((4, 6, 3), np.uint8)
    mask[1, 1] = 15
    root, _, _ = _voc(tmp_path, mask=Image.fromarray(mask))
    assert build_dataset("voc", root)[0][1][1, 1] == 15


def test_palette_mask_read_as_indices_not_colours(tmp_path):
    idx = np.array([[0, 1, 15, 255, 20, 0]] * 4, np.uint8)
    im = Image.fromarray(idx)
    im.putpalette([200, 100, 50] * 256)  # colours unrelated to the indices
    root, _, mp = _voc(tmp_path, mask=im)
    assert Image.open(mp).mode == "P"
    assert build_dataset("voc", root)[0][1][0].tolist() == [0, 1, 15, 255, 20, 0]


def test_16bit_grayscale_image_scaled_to_8bit_rgb(tmp_path):
    arr = np.array([[0, 65535, 32896]], dtype=np.uint16)  # 32896 = 128.5 × 257
    p = tmp_path / "g16.png"
    Image.fromarray(arr).save(p)
    assert Image.open(p).mode.startswith("I")
    out = load_image(p)
    assert out.dtype == np.uint8 and out.shape == (1, 3, 3)
    assert out[0, :, 0].tolist() == [0, 255, 128] and (out[..., 0] == out[..., 2]).all()


def test_rgba_drops_alpha_and_gray_replicates(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[..., 3] = (0, 255)  # transparency does not change the colour
    Image.fromarray(rgba).save(tmp_path / "a.png")
    assert load_image(tmp_path / "a.png").reshape(-1, 3).tolist() == [[10, 20, 30]] * 4
    Image.fromarray(np.full((2, 3), 77, np.uint8)).save(tmp_path / "g.png")
    assert load_image(tmp_path / "g.png").tolist() == [[[77] * 3] * 3] * 2


def test_16bit_mask_with_small_values_ok_large_refused(tmp_path):
    Image.fromarray(np.array([[3, 255]], np.uint16)).save(tmp_path / "ok.png")
    assert load_mask(tmp_path / "ok.png").tolist() == [[3, 255]]
    Image.fromarray(np.array([[3, 1000]], np.uint16)).save(tmp_path / "bad.png")
    with pytest.raises(DataError, match=r"bad\.png: 16/32-bit mask with values up to 1000"):
        load_mask(tmp_path / "bad.png")


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that claims a huge size (a decompression bomb's header) with a tiny body."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("side", [20_000, 10_000])  # above 2× and between 1× and 2× Pillow's limit
def test_decompression_bomb_refused_before_decoding(tmp_path, side):
    p = tmp_path / "bomb.png"
    _png_header_only(p, side, side)
    with pytest.raises(DataError, match=r"bomb\.png.*decompression bomb"):
        load_image(p)


def test_max_pixels_is_configurable(tmp_path):
    root, _, _ = _voc(tmp_path)
    with pytest.raises(DataError, match=r"6×4 = 24 pixels, more than max_pixels=10"):
        build_dataset("voc", root, max_pixels=10)[0]


def _exif_jpeg(path: Path, w: int, h: int, orientation: int) -> None:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, exif=exif)


def test_exif_orientation_ignored_by_default_for_image_and_mask(tmp_path):
    root, ip, _ = _voc(tmp_path)
    _exif_jpeg(ip, 6, 4, orientation=6)  # "rotate 90° to display"
    image, mask = build_dataset("voc", root)[0]
    assert image.shape == (3, 4, 6) and mask.shape == (4, 6)  # as stored


def test_exif_mismatch_explains_option(tmp_path):
    root, ip, _ = _voc(tmp_path, mask=Image.fromarray(np.zeros((6, 4), np.uint8)))
    _exif_jpeg(ip, 6, 4, orientation=6)
    with pytest.raises(DataError, match=r"EXIF orientation 6.*exif_transpose=True"):
        build_dataset("voc", root)[0]
    image, mask = build_dataset("voc", root, exif_transpose=True)[0]
    assert image.shape == (3, 6, 4) and mask.shape == (6, 4)


def test_error_survives_dataloader_workers(tmp_path):
    import pickle

    import torch

    root, ip, _ = _voc(tmp_path)
    ip.write_bytes(b"garbage")
    err = pickle.loads(pickle.dumps(DataError(ip, "bad", "fix it")))
    assert isinstance(err, DataError) and "x.jpg: bad. Fix: fix it" in str(err)
    loader = torch.utils.data.DataLoader(build_dataset("voc", root), num_workers=1)
    it = iter(loader)
    with pytest.raises(DataError, match=r"x\.jpg: cannot read the image"):
        next(it)
    it._shutdown_workers()  # join now, not at garbage collection (which waits 5 s)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.png"):
        load_image(tmp_path / "nope.png")
