"""``examples/onnx_predict.py`` (numpy, Pillow and onnxruntime only) gives the masks ``sanet
predict`` gives for the same ``.onnx`` file, pixel for pixel, at odd sizes, below the minimum
input size and at sizes that need many sliding windows, under the recorded protocol and under
multi-scale + flip.

The model is a hand-built ONNX graph with spatial context (two 5×5 convolutions, zero padding,
asymmetric weights), so windows, their borders, mirror images and scales all change the logits.
A real SANet export is checked too (marked ``slow`` and ``export``).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sanet.cli import main
from sanet.inference import EvalProtocol

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "onnx_predict.py"
SIZES = [(97, 65), (29, 45), (333, 501), (1001, 751)]  # odd; under 32 px; many windows
MULTI = ["--scales", "0.75,1.25", "--flip", "--base-size", "120"]


def example():
    spec = importlib.util.spec_from_file_location("onnx_predict", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def context_graph(path: Path) -> Path:
    """conv 5×5 (3 → 8) → ReLU → conv 5×5 (8 → 4), zero padding: logits that depend on the
    neighbourhood, the window borders and the direction (the weights are not mirror-symmetric)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 5, 5)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.3, (4, 8, 5, 5)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["image", "w1"], ["a"], pads=[2, 2, 2, 2]),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["logits"], pads=[2, 2, 2, 2]),
    ]
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4, "H", "W"])
    graph = helper.make_graph(nodes, "context", [image], [logits], [w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    protocol = EvalProtocol(crop_size=64, stride=48)
    meta = {
        "sanet_format": 1,
        "class_names": ["background", "a", "b", "c"],
        "palette": [[0, 0, 0], [200, 0, 0], [0, 200, 0], [0, 0, 200]],
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "min_size": 32,
        "model": {"name": "context", "num_classes": 4},
        "protocol": protocol.to_dict(),
        "run_config": {"eval": {"crop_size": 64, "stride": 48}, "data": {"base_size": None}},
    }
    helper.set_model_props(model, {k: json.dumps(v) for k, v in meta.items()})
    onnx.save(model, str(path))
    return path


def photos(folder: Path) -> list[Path]:
    """Smooth colour fields with noise (no large flat areas, where ties would be common)."""
    paths = []
    for i, (h, w) in enumerate(SIZES):
        rng = np.random.default_rng(i)
        small = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8))
        base = np.asarray(small.resize((w, h), Image.BICUBIC)).astype(float)
        rgb = (base + rng.normal(0, 8, base.shape)).clip(0, 255).astype(np.uint8)
        paths.append(folder / f"photo{i}_{w}x{h}.png")
        Image.fromarray(rgb).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    folder = tmp_path_factory.mktemp("example")
    return context_graph(folder / "context.onnx"), photos(folder)


def sanet_predict(model: Path, images: list[Path], out: Path, *flags: str) -> list[np.ndarray]:
    assert (
        main(["predict", "--checkpoint", str(model), *map(str, images), "--out", str(out), *flags])
        == 0
    )
    return [np.asarray(Image.open(out / f"{p.stem}.png")) for p in images]


@pytest.mark.parametrize("flags", [[], MULTI], ids=["recorded", "multi-scale-flip"])
def test_the_example_agrees_with_sanet_predict(setup, tmp_path: Path, flags: list[str]) -> None:
    model, images = setup
    want = sanet_predict(model, images, tmp_path / "sanet", *flags)
    overrides = {"scales": [0.75, 1.25], "flip": True, "base_size": 120} if flags else {}
    segmenter = example().OnnxSegmenter(model, **overrides)
    for path, mask in zip(images, want, strict=True):
        got = segmenter.predict(np.asarray(Image.open(path).convert("RGB")))
        assert got.shape == mask.shape
        assert (got == mask).mean() == 1.0, f"{path.name}: {(got != mask).sum()} pixels differ"
        assert len(np.unique(mask)) >= 3  # a mask worth comparing: several classes


def test_the_example_runs_without_torch_or_sanet(setup, tmp_path: Path) -> None:
    model, images = setup
    blocker = (
        "import sys, runpy; sys.modules['torch'] = None; sys.modules['sanet'] = None; "
        f"sys.argv = ['onnx_predict.py', {str(model)!r}, {str(images[0])!r}, '--out', "
        f"{str(tmp_path)!r}]; runpy.run_path({str(EXAMPLE)!r}, run_name='__main__')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", blocker], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    mask = Image.open(tmp_path / f"{images[0].stem}.png")
    assert mask.mode == "P" and mask.size == (SIZES[0][1], SIZES[0][0])
    assert "background" in proc.stdout or " a " in proc.stdout


@pytest.mark.slow
@pytest.mark.export
def test_the_example_agrees_on_a_real_sanet_export(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny.onnx"
    assert (
        main(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--size", "64"])
        == 0
    )
    images = photos(tmp_path)[:3]
    flags = ["--crop-size", "96", "--stride", "64"]
    want = sanet_predict(out, images, tmp_path / "sanet", *flags)
    segmenter = example().OnnxSegmenter(out, crop_size=96, stride=64)
    for path, mask in zip(images, want, strict=True):
        got = segmenter.predict(np.asarray(Image.open(path).convert("RGB")))
        assert (got == mask).mean() == 1.0, f"{path.name}: {(got != mask).sum()} pixels differ"
