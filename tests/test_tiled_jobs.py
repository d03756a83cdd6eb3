"""Long tiled work behaves (docs/large-images.md, issue 29): a stop after a block leaves nothing
under the final name and ``resume`` finishes the same pixels; a full disk is one line and
resumable; ``sanet predict --tiled`` / the verbs refuse before any work and exit 130 on SIGINT;
large images go tile by tile automatically; ``sanet eval`` streams large images to the same
confusion matrix."""

from __future__ import annotations

import errno
import json
import signal
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image

import sanet
from _tiled_rasters import CLASSES, PROTOCOL, predictor, read_layer, scene, tiny_model, write_tif
from sanet.api.prediction import predict_files
from sanet.api.tiled import predict_tiled
from sanet.errors import Interrupted, NotWritableError, OutputExistsError, UsageError
from sanet.inference import tiled_job

OPTIONS = {"tile_size": 32, "strip_width": 64}


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return tiny_model()


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt") / "model"
    palette = [[0, 0, 0], [230, 25, 75], [60, 180, 75], [0, 130, 200]]
    model.save_pretrained(folder, metadata={"class_names": CLASSES, "palette": palette})
    return folder


@pytest.fixture(scope="module")
def raster(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("rasters")
    return write_tif(folder / "field.tif", scene(100, 150, seed=11).transpose(2, 0, 1))


def _layers(out) -> dict[str, np.ndarray]:
    return {p.name: read_layer(p)[0] for p in (out.mask, out.confidence) if p is not None}


def _stop_after(n: int):
    seen = []

    def should_stop() -> str | None:
        seen.append(1)
        return "SIGTERM" if len(seen) >= n else None

    return should_stop


def test_a_stop_keeps_no_final_file_and_resume_writes_the_same_pixels(
    model, raster: Path, tmp_path: Path
) -> None:
    pred = predictor(model, temperature=1.5)
    whole = pred.predict_tiled(raster, tmp_path / "a" / "field.tif", confidence=True, **OPTIONS)
    target = tmp_path / "b" / "field.tif"
    with pytest.raises(Interrupted, match=r"after block 4 of 12 .* resume=True") as err:
        pred.predict_tiled(raster, target, confidence=True, should_stop=_stop_after(4), **OPTIONS)
    assert err.value.signal == "SIGTERM"
    names = sorted(p.name for p in target.parent.iterdir())
    assert names == [
        ".field.tif.partial",
        ".field.tif.resume.json",
        ".field_confidence.tif.partial",
    ]
    assert json.loads((target.parent / ".field.tif.resume.json").read_text())["done"] == 4
    with pytest.raises(OutputExistsError, match=r"partial prediction .* resume=True .* overwrite"):
        pred.predict_tiled(raster, target, confidence=True, **OPTIONS)
    with pytest.raises(UsageError, match="cannot be continued: its settings differ"):
        pred.predict_tiled(raster, target, confidence=True, resume=True, tile_size=16)
    done = pred.predict_tiled(raster, target, confidence=True, resume=True, **OPTIONS)
    assert done.resumed_from == 4 and not done.complete
    assert sorted(p.name for p in target.parent.iterdir()) == ["field.tif", "field_confidence.tif"]
    got, want = _layers(done), _layers(whole)
    for name in want:
        assert np.array_equal(got[name], want[name]), name
    for a, b in ((done.mask, whole.mask), (done.confidence, whole.confidence)):
        assert read_layer(a)[1] == read_layer(b)[1]  # profile, CRS, colour table, tags
    again = pred.predict_tiled(raster, target, confidence=True, resume=True, **OPTIONS)
    assert again.complete  # whole outputs are kept by a resume
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        pred.predict_tiled(raster, target, confidence=True, **OPTIONS)


def test_a_full_disk_is_one_line_and_resumable(
    model, raster: Path, tmp_path: Path, monkeypatch
) -> None:
    real, calls = tiled_job.write_block, []

    def full_on_the_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(tiled_job, "write_block", full_on_the_third)
    pred, target = predictor(model), tmp_path / "field.tif"
    with pytest.raises(NotWritableError, match=r"Disk full while writing block 3 of 12") as err:
        pred.predict_tiled(raster, target, **OPTIONS)
    assert "resume=True" in str(err.value) and "\n" not in str(err.value)
    assert not target.exists() and (tmp_path / ".field.tif.partial").is_file()
    monkeypatch.setattr(tiled_job, "write_block", real)
    done = pred.predict_tiled(raster, target, resume=True, **OPTIONS)
    assert done.resumed_from == 2
    assert np.array_equal(read_layer(done.mask)[0], pred.predict(scene(100, 150, seed=11)))


def test_the_verb_refuses_before_any_work_and_keeps_the_unsure_rule(
    checkpoint: Path, raster: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    with pytest.raises(UsageError, match="carries no risk threshold"):
        predict_tiled(checkpoint, raster, out, unsure=True, protocol=PROTOCOL, **OPTIONS)
    with pytest.raises(UsageError, match="strip_width must be a multiple of tile_size"):
        predict_tiled(checkpoint, raster, out, protocol=PROTOCOL, tile_size=32, strip_width=48)
    assert not out.exists()
    result = predict_tiled(checkpoint, raster, out, protocol=PROTOCOL, confidence=True, **OPTIONS)
    assert result.mask == out / "field.tif" and result.confidence == out / "field_confidence.tif"
    with pytest.raises(OutputExistsError, match=r"overwrite=True"):
        predict_tiled(checkpoint, raster, out, protocol=PROTOCOL, **OPTIONS)


def test_predict_files_tiles_large_images_automatically(
    checkpoint: Path, tmp_path: Path, caplog
) -> None:
    images = tmp_path / "in"
    images.mkdir()
    Image.fromarray(scene(60, 80, seed=12)).save(images / "big.png")
    Image.fromarray(scene(30, 40, seed=13)).save(images / "small.png")
    with caplog.at_level("INFO"):
        result = predict_files(
            checkpoint, images, tmp_path / "out", protocol=PROTOCOL, tile_above=0.003, **OPTIONS
        )
    assert result.masks == [tmp_path / "out" / "big.tif", tmp_path / "out" / "small.png"]
    assert result.notes[0].startswith("big.png is 80×60 px (0 MP, above tile_above=0.003 MP)")
    assert "predicted tile by tile" in caplog.text
    assert [t.mask.name for t in result.tiled] == ["big.tif"]
    with pytest.raises(UsageError, match=r"bands and value_range apply to images predicted tile"):
        predict_files(checkpoint, images, tmp_path / "o2", protocol=PROTOCOL, bands=(1, 2, 3))


def _run_cli(argv: list[str]) -> int:
    from sanet.cli import main

    return main(argv)


def test_cli_predict_tiled_sigint_exits_130_and_resume_finishes(
    checkpoint: Path, raster: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    real, calls = tiled_job.write_block, []

    def ctrl_c_after_the_second(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGINT)  # the block finishes, its state is saved
        return out

    monkeypatch.setattr(tiled_job, "write_block", ctrl_c_after_the_second)
    out = tmp_path / "out"
    argv = ["predict", "--checkpoint", str(checkpoint), str(raster), "--out", str(out)]
    argv += ["--tiled", "--crop-size", "64", "--stride", "48", "--tile-size", "32"]
    argv += ["--strip-width", "64", "--device", "cpu"]
    assert _run_cli(argv) == 130
    text = capsys.readouterr().err  # cli/__init__.py prints how to continue
    assert "sanet predict: Stopped by SIGINT after block 2 of 12" in text and "--resume" in text
    assert not (out / "field.tif").exists()
    assert _run_cli(argv) == 2  # a partial prediction is not discarded silently
    assert "--resume to continue it, or --overwrite" in capsys.readouterr().err
    monkeypatch.setattr(tiled_job, "write_block", real)
    assert _run_cli([*argv, "--resume"]) == 0
    assert "field.tif (150×100 px, GeoTIFF" in capsys.readouterr().out.replace("\n", "")
    with rasterio.open(out / "field.tif") as src:
        assert src.crs is not None and src.count == 1
    five = write_tif(tmp_path / "five.tif", np.zeros((5, 40, 40), np.uint8))
    assert _run_cli([*argv[:3], str(five), *argv[4:]]) == 2
    err = capsys.readouterr().err
    assert "five.tif has 5 bands" in err and "--bands 4,3,2 (1-based)" in err


def _folder_dataset(root: Path, images: dict[str, np.ndarray], masks: dict[str, np.ndarray]):
    (root / "images" / "val").mkdir(parents=True)
    (root / "masks" / "val").mkdir(parents=True)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    for stem, rgb in images.items():
        write_tif(root / "images" / "val" / f"{stem}.tif", rgb.transpose(2, 0, 1))
        Image.fromarray(masks[stem]).save(root / "masks" / "val" / f"{stem}.png")


def test_eval_streams_large_images_to_the_same_confusion_and_label_map(
    checkpoint: Path, tmp_path: Path
) -> None:
    rgb = scene(96, 128, seed=14)
    raw = np.zeros((96, 128), np.uint8)
    raw[20:70, 30:90], raw[:10] = 200, 255  # value 200 is class 2 through the label map
    _folder_dataset(tmp_path / "data", {"big": rgb}, {"big": raw})
    kw = {"split": "val", "protocol": PROTOCOL, "data_options": {"label_map": {200: 2}}}
    data = f"folder:{tmp_path / 'data'}"
    streamed = sanet.api.evaluate(checkpoint, data, tile_above=0.001, **kw).metrics
    whole = sanet.api.evaluate(checkpoint, data, tile_above=None, **kw).metrics
    assert streamed["confusion_matrix"] == whole["confusion_matrix"]
    assert (
        streamed["labelled_pixels"] == 86 * 128
        and np.array(whole["confusion_matrix"])[2].sum() == 50 * 60
    )


def test_the_miou_of_a_mosaic_equals_that_of_its_parts(checkpoint: Path, tmp_path: Path) -> None:
    # windows of 64 every 64 on 64-px parts: the mosaic's windows are the parts, so the streamed
    # mosaic and the parts one by one must agree exactly
    protocol = sanet.inference.EvalProtocol(crop_size=64, stride=64)
    parts = {f"p{i}": scene(64, 64, seed=20 + i) for i in range(4)}
    labels = {k: (np.arange(64 * 64).reshape(64, 64) % 4).astype(np.uint8) for k in parts}
    _folder_dataset(tmp_path / "parts", parts, labels)
    rgb = np.concatenate(
        [
            np.concatenate([parts["p0"], parts["p1"]], 1),
            np.concatenate([parts["p2"], parts["p3"]], 1),
        ]
    )
    lab = np.concatenate(
        [
            np.concatenate([labels["p0"], labels["p1"]], 1),
            np.concatenate([labels["p2"], labels["p3"]], 1),
        ]
    )
    _folder_dataset(tmp_path / "mosaic", {"m": rgb}, {"m": lab})
    kw = {"split": "val", "protocol": protocol}
    of_parts = sanet.api.evaluate(checkpoint, f"folder:{tmp_path / 'parts'}", **kw).metrics
    of_mosaic = sanet.api.evaluate(
        checkpoint, f"folder:{tmp_path / 'mosaic'}", tile_above=0.001, **kw
    ).metrics
    assert of_mosaic["confusion_matrix"] == of_parts["confusion_matrix"]
    assert abs(of_mosaic["mIoU"] - of_parts["mIoU"]) < 1e-12
