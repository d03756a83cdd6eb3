"""A ViT-backed SANet through the deployment path: the ONNX export with dynamic H, W passes the
parity gate at the export size and at odd sizes (padding to the patch, resized position
embeddings and the crop back all inside the graph), the exported file predicts what PyTorch
predicts through the run's sliding windows, the INT8 export's gate measures and decides, and
``sanet predict --tiled`` (the streamed window grid into GeoTIFF, docs/large-images.md) gives
the whole-image answer.

The run is built by hand (config.yaml + model/ from save_pretrained, no training), as in
tests/test_api_deploy.py, on the tiny DINOv2-shaped ViT of tests/_vit_tiny.py.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import sanet
from _tiled_rasters import read_layer, write_tif
from _vit_tiny import TINY_VIT
from sanet.api.export import export
from sanet.data.synthetic import SYNTHETIC_CLASSES
from sanet.errors import Int8Refused
from sanet.inference import read_onnx_metadata

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

EVAL = {"scales": [0.75, 1.0], "flip": True, "crop_size": 56, "stride": 28}


def odd_image() -> np.ndarray:
    """90×130 RGB: at base size 112 the scale-1.0 image is 78×112, 3×4 windows of 56."""
    rgb = np.random.default_rng(0).integers(0, 256, (90, 130, 3), dtype=np.uint8)
    rgb[10:50, 5:45] = [250, 20, 20]
    rgb[40:80, 70:120] = [20, 250, 60]
    return rgb


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder of an untrained SANet on the tiny ViT for the synthetic scenes' 7 classes,
    its eval section multi-scale + flip with 56-px windows."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("vit") / "run"
    model = sanet.build_model("sanet", backbone=TINY_VIT, num_classes=len(SYNTHETIC_CLASSES))
    with torch.no_grad():  # a classifier whose classes differ from pixel to pixel
        model.head.mask.weight.normal_(0, 1.0)
    model.save_pretrained(folder / "model", metadata={"class_names": list(SYNTHETIC_CLASSES)})
    data = {"dataset": "synthetic", "options": {"num_images": 8, "size": 56, "seed": 0}}
    cfg = {"data": {**data, "base_size": 112, "crop_size": 56}, "eval": EVAL}
    (folder / "config.yaml").write_text(json.dumps(cfg))  # JSON is YAML
    return folder


@pytest.mark.export
@pytest.mark.slow
def test_onnx_export_with_dynamic_sizes_passes_the_parity_gate(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "vit.onnx"
    result = export(run, out)
    assert [tuple(r["size"]) for r in result.parity] == [(56, 56), (97, 65), (333, 501)]
    assert all(r["max_abs_diff"] < 1e-3 and r["argmax_agreement"] >= 0.999 for r in result.parity)
    dims = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param != "" for d in dims] == [True, False, True, True]  # N, 3, H, W
    assert read_onnx_metadata(out)["model"]["backbone"] == TINY_VIT
    # the run's protocol (two scales, mirrors, 56-px windows at stride 28) on an odd image,
    # through the file and through PyTorch
    rgb = odd_image()
    from_file, from_run = sanet.Predictor(out), sanet.Predictor(run)
    assert from_file.backend == "onnxruntime"
    a, b = from_file.predict(rgb), from_run.predict(rgb)
    assert a.shape == b.shape == (90, 130)
    assert len(np.unique(b)) > 1 and (a == b).mean() > 0.99  # float32 near-ties


@pytest.mark.export
@pytest.mark.slow
def test_int8_export_of_a_vit_measures_and_gates(run: Path, tmp_path: Path) -> None:
    """The gate compares the int8 graph's mIoU with the fp32 graph's on the same scenes: a
    generous bound writes the file with both figures; a bound below the measured drop writes
    nothing (a drop of 0 can pass any bound: then only the first half is checked)."""
    kwargs = dict(calib_data="synthetic:", calib_images=4, eval_images=8)
    out = tmp_path / "int8.onnx"
    result = export(run, out, int8=True, max_miou_drop=1.0, **kwargs)
    q = result.quantization
    assert out.is_file() and q is not None
    drop = q["miou"]["fp32"] - q["miou"]["int8"]
    assert q["miou"]["drop"] == pytest.approx(drop) and q["miou"]["images"] == 8
    with torch.no_grad():
        mask = sanet.Predictor(out).predict(odd_image())
    assert mask.shape == (90, 130)
    if drop > 0:
        refused = tmp_path / "refused.onnx"
        with pytest.raises(Int8Refused, match="nothing written"):
            export(run, refused, int8=True, max_miou_drop=drop / 2, **kwargs)
        assert not refused.exists()


@pytest.mark.slow
def test_cli_predict_tiled_equals_the_whole_image_protocol(run: Path, tmp_path: Path) -> None:
    """``sanet predict --tiled`` on a 62×87 GeoTIFF, blocks of 32 rows in strips of 64 columns
    (the 56-px windows every 28 px cross both): the same mask as ``Predictor.predict`` of the
    whole image under the run's protocol at the image's own resolution (scales 0.75, 1 + flip;
    tiled prediction does not use the base size)."""
    from sanet.cli import main

    rgb = np.ascontiguousarray(odd_image()[:62, :87])
    src = write_tif(tmp_path / "scene.tif", rgb.transpose(2, 0, 1))
    argv = ["predict", "--checkpoint", str(run), str(src), "--out", str(tmp_path / "out")]
    argv += ["--tiled", "--tile-size", "32", "--strip-width", "64", "--device", "cpu"]
    assert main(argv) == 0
    mask, info = read_layer(tmp_path / "out" / "scene.tif")
    whole = sanet.Predictor(run)
    whole.protocol = dataclasses.replace(whole.protocol, base_size=None)
    want = whole.predict(rgb)
    assert (info["height"], info["width"]) == (62, 87) and len(np.unique(want)) > 1
    assert np.array_equal(mask, want)
