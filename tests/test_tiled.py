"""Tiled prediction gives the whole-image answer (docs/large-images.md, issue 29): the streamed
global window grid against ``Predictor.predict`` on the same pixels, single and multi-scale,
odd sizes, strips narrower than a window; GeoTIFF outputs keep the georeference, the colour
table and nodata; the band, 16-bit and nodata rules; bad input is one line naming the file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from _tiled_rasters import (
    CRS,
    PALETTE,
    PROTOCOL,
    TRANSFORM,
    predictor,
    read_layer,
    scene,
    tiny_model,
    write_tif,
)
from sanet.errors import DataError, UsageError
from sanet.inference.confidence import arg_max, largest, protocol_views
from sanet.inference.predictor import normalize


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return tiny_model()


def _whole(pred, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The whole-image protocol's mask and calibrated confidence (what ``predict`` gives)."""
    x = normalize(torch.from_numpy(rgb).permute(2, 0, 1))
    views = [(1.0, arg_max), (pred.temperature, largest)]
    mask, conf = protocol_views(pred.model, x, pred.protocol, views)
    return mask.numpy(), conf.numpy()


def test_tiled_equals_the_whole_image_sliding_window_and_keeps_the_georeference(
    model, tmp_path: Path
) -> None:
    # 203 × 341: odd sizes; strips of 128 columns (the windows of 64 every 48 cross each strip
    # boundary) and blocks of 32 rows: 7 × 3 = 21 blocks.
    rgb = scene(203, 341)
    src = write_tif(tmp_path / "scene.tif", rgb.transpose(2, 0, 1))
    pred = predictor(model, temperature=2.0)
    want_mask, want_conf = _whole(pred, rgb)
    threshold = float(np.median(want_conf))  # about half the pixels unsure
    pred.calibration = dataclasses.replace(pred.calibration, threshold=threshold)
    out = pred.predict_tiled(
        src,
        tmp_path / "out" / "scene.tif",
        confidence=True,
        unsure=True,
        tile_size=32,
        strip_width=128,
    )
    assert out.blocks == 21 and out.resumed_from == 0 and not out.complete
    mask, info = read_layer(out.mask)
    conf, conf_info = read_layer(out.confidence)
    assert (mask == want_mask).mean() >= 0.999  # measured: 1.0
    want = np.rint(np.clip(want_conf, 0, 1) * 255).astype(np.uint8)
    assert np.abs(conf.astype(int) - want).max() <= 1 and (conf == want).mean() >= 0.999
    assert np.array_equal(pred.predict(rgb), want_mask)  # the reference is predict's answer
    unsure, unsure_info = read_layer(out.unsure)  # 1 = unsure: the predictor's own rule
    want_unsure = pred.unsure_pixels(want_conf).astype(np.uint8)
    assert (unsure == want_unsure).mean() >= 0.999 and 0 < unsure.mean() < 1
    assert unsure_info["nodata"] == 255 and float(unsure_info["tags"]["threshold"]) == threshold
    for layer in (info, conf_info, unsure_info):
        assert layer["crs"] == rasterio.crs.CRS.from_string(CRS)
        assert layer["transform"] == TRANSFORM
        assert layer["tiled"] and layer["blockxsize"] == 32 and layer["compress"] == "deflate"
        assert layer["dtype"] == "uint8" and (layer["height"], layer["width"]) == (203, 341)
    assert info["nodata"] == 255 and conf_info["nodata"] == 0
    assert info["colormap"][2] == (*PALETTE[2], 255) and info["colormap"][255][3] == 0
    assert info["description"] == "mask" and conf_info["description"] == "confidence"
    assert "background" in info["tags"]["class_names"]
    names = sorted(p.name for p in out.mask.parent.iterdir())
    assert names == ["scene.tif", "scene_confidence.tif", "scene_unsure.tif"]


def test_multi_scale_with_flips_matches_the_whole_image_protocol(model, tmp_path: Path) -> None:
    # strips of 32 columns: narrower than a window, so every window is computed in 2-3 strips
    rgb = scene(83, 101, seed=1)
    protocol = dataclasses.replace(PROTOCOL, scales=(0.75, 1.25), flip=True)
    pred = predictor(model, protocol)
    out = pred.predict_tiled(rgb, tmp_path / "ms.tif", tile_size=16, strip_width=32)
    mask, _ = read_layer(out.mask)
    assert (mask == pred.predict(rgb)).mean() >= 0.999  # exact taps: measured 1.0


def test_an_image_smaller_than_a_window_and_than_32_px(model, tmp_path: Path) -> None:
    rgb = scene(21, 45, seed=2)
    pred = predictor(model)
    out = pred.predict_tiled(rgb, tmp_path / "small.tif", tile_size=16, strip_width=16)
    mask, info = read_layer(out.mask)
    assert np.array_equal(mask, pred.predict(rgb)) and info["crs"] is None  # an array: no CRS


def test_band_rules_single_band_16_bit_multispectral_float(model, tmp_path: Path) -> None:
    pred = predictor(model)
    rgb = scene(70, 90, seed=3)
    gray = rgb[..., 0]

    def tiled(path: Path, **kw) -> np.ndarray:
        out = pred.predict_tiled(path, tmp_path / "out" / f"{path.stem}.tif", overwrite=True, **kw)
        return read_layer(out.mask)[0]

    one = write_tif(tmp_path / "gray.tif", gray[None])  # 1 band: repeated to RGB
    assert np.array_equal(tiled(one), pred.predict(np.repeat(gray[..., None], 3, -1)))
    # 16-bit: 0..65535 → 0..255 by default; value_range stretches (12-bit data)
    wide = write_tif(tmp_path / "u16.tif", (rgb.astype(np.uint16) * 257).transpose(2, 0, 1))
    assert np.array_equal(tiled(wide), pred.predict(rgb))
    note = pred.predict_tiled(wide, tmp_path / "n" / "u16.tif", tile_size=64).notes
    assert note == [
        "u16.tif is 16-bit: values 0..65535 scaled to 0..255 (pass "
        "value_range=(0, 4095) to stretch e.g. 12-bit data)"
    ]
    twelve = write_tif(tmp_path / "u12.tif", (rgb.astype(np.uint16) * 16).transpose(2, 0, 1))
    assert np.array_equal(tiled(twelve, value_range=(0, 4080)), pred.predict(rgb))
    # 5 bands: refused without bands (one line naming the count and the fix), used with them
    five = np.stack([rgb[..., 2], gray, rgb[..., 1], rgb[..., 0], gray])
    multi = write_tif(tmp_path / "multi.tif", five)
    with pytest.raises(UsageError, match=r"multi\.tif has 5 bands .* bands=\(4, 3, 2\)") as err:
        tiled(multi)
    assert "\n" not in str(err.value)
    assert np.array_equal(tiled(multi, bands=(4, 3, 1)), pred.predict(rgb))
    with pytest.raises(UsageError, match="has 5 band"):
        tiled(multi, bands=(6, 3, 1))
    floats = write_tif(tmp_path / "f.tif", rgb.transpose(2, 0, 1).astype(np.float32) / 255)
    with pytest.raises(UsageError, match=r"f\.tif holds float32 values: pass value_range"):
        tiled(floats)
    assert (tiled(floats, value_range=(0, 1)) == pred.predict(rgb)).mean() >= 0.999


def test_nodata_and_alpha_skip_windows_and_write_nodata(model, tmp_path: Path) -> None:
    rgb = scene(96, 160, seed=4)
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:, :80] = 0  # the left half is outside the scan
    src = write_tif(
        tmp_path / "rgba.tif",
        np.concatenate([rgb, alpha[..., None]], -1).transpose(2, 0, 1),
        photometric="RGB",
        alpha="YES",
    )
    pred = predictor(model)
    calls = []
    handle = model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        out = pred.predict_tiled(
            src, tmp_path / "o" / "rgba.tif", confidence=True, tile_size=32, strip_width=256
        )
        tiled_windows = sum(calls) - 1  # less the probe of the number of classes
        calls.clear()
        want = pred.predict(rgb)
        whole_windows = sum(calls)
    finally:
        handle.remove()
    mask, _ = read_layer(out.mask)
    conf, _ = read_layer(out.confidence)
    assert (mask[:, :80] == 255).all() and (conf[:, :80] == 0).all()
    assert tiled_windows < whole_windows  # windows entirely nodata were not computed
    # the valid half equals the whole image's answer away from the nodata border (windows
    # reaching into the nodata part see the same pixels in both)
    assert (mask[:, 80:] == want[:, 80:]).mean() >= 0.999
    assert out.notes == ["rgba.tif: band 4 is alpha; alpha 0 = nodata"]

    # a nodata value (0 in every band): black pixels are nodata
    black = rgb.copy()
    black[:40, :40] = 0
    nod = write_tif(tmp_path / "nod.tif", black.transpose(2, 0, 1), nodata=0)
    mask, info = read_layer(pred.predict_tiled(nod, tmp_path / "o" / "nod.tif").mask)
    assert (mask[:40, :40] == 255).all() and (mask[40:] != 255).all() and info["nodata"] == 255


def test_a_tiff_without_georeference_works_and_writes_no_crs(model, tmp_path: Path) -> None:
    rgb = scene(50, 70, seed=5)
    src = write_tif(tmp_path / "plain.tif", rgb.transpose(2, 0, 1), georef=False, tiled=False)
    out = predictor(model).predict_tiled(src, tmp_path / "o" / "plain.tif", tile_size=16)
    mask, info = read_layer(out.mask)
    assert info["crs"] is None and info["transform"].is_identity
    assert np.array_equal(mask, predictor(model).predict(rgb))


def test_png_input_is_decoded_once_and_its_alpha_is_nodata(model, tmp_path: Path) -> None:
    from PIL import Image

    rgb = scene(40, 60, seed=6)
    rgba = np.concatenate([rgb, np.full((40, 60, 1), 255, np.uint8)], -1)
    rgba[:10, :10, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "img.png")
    out = predictor(model).predict_tiled(tmp_path / "img.png", tmp_path / "o" / "img.tif")
    mask, info = read_layer(out.mask)
    assert (mask[:10, :10] == 255).all() and (mask[10:] != 255).all() and info["crs"] is None
    with pytest.raises(UsageError, match="bands and value_range apply to rasters GDAL reads"):
        predictor(model).predict_tiled(
            tmp_path / "img.png", tmp_path / "o" / "x.tif", bands=(1, 2, 3)
        )


def test_truncated_and_unreadable_files_are_one_line_and_leave_nothing(
    model, tmp_path: Path
) -> None:
    src = write_tif(tmp_path / "cut.tif", scene(256, 256, seed=7).transpose(2, 0, 1))
    data = src.read_bytes()
    src.write_bytes(data[: len(data) // 2])
    (tmp_path / "text.tif").write_text("not a raster")
    out = tmp_path / "out"
    for bad, words in (("cut.tif", "truncated or corrupt"), ("text.tif", "cannot be read")):
        with pytest.raises(DataError, match=words) as err:
            predictor(model).predict_tiled(tmp_path / bad, out / bad)
        assert str(err.value).startswith(str(tmp_path / bad)) and "Fix:" in str(err.value)
        assert "\n" not in str(err.value)
    assert not out.exists() or not any(out.iterdir())
    with pytest.raises(UsageError, match="multiple of 16"):
        predictor(model).predict_tiled(scene(20, 20), out / "x.tif", tile_size=24)
