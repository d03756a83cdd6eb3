"""``sanet export`` and the onnxruntime backend.

Default suite (fast): the backend on a hand-built ONNX graph (a 1×1 convolution, so the expected
mask is a few lines of numpy), the metadata read back through onnxruntime, and the CLI's
refusals. Marked ``export`` (torch's exporter takes tens of seconds on 2 CPU cores): a real
export of SANet through the CLI, parity at odd sizes, the metadata round-trip, both backends
giving the same masks through ``Predictor`` and through ``sanet serve``'s API.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import sanet
from sanet.cli import main
from sanet.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from sanet.inference import EvalProtocol, OnnxModel, Predictor, read_onnx_metadata
from sanet.serve.app import create_app

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

NAMES = ["background", "disc", "square"]
WEIGHTS = np.array([[0.0, 0.0, 1.0], [1.0, -0.5, 0.0], [-0.2, 1.0, -0.3]], np.float32)  # (K, 3)
BIAS = np.array([0.1, -0.2, 0.0], np.float32)


def conv1x1_onnx(path: Path, metadata: dict) -> Path:
    """An ONNX file computing ``logits = WEIGHTS · image + BIAS`` per pixel, with metadata."""
    from onnx import TensorProto, helper, numpy_helper

    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3, "H", "W"])
    w = numpy_helper.from_array(WEIGHTS.reshape(3, 3, 1, 1), "w")
    b = numpy_helper.from_array(BIAS, "b")
    node = helper.make_node("Conv", ["image", "w", "b"], ["logits"])
    graph = helper.make_graph([node], "conv1x1", [image], [logits], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    helper.set_model_props(model, {k: json.dumps(v) for k, v in metadata.items()})
    onnx.save(model, str(path))
    return path


def hand_mask(rgb: np.ndarray) -> np.ndarray:
    """What the 1×1 convolution predicts, in numpy: normalise, project, arg-max."""
    x = (rgb / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)  # (H, W, 3)
    return (x @ WEIGHTS.T.astype(np.float64) + BIAS).argmax(-1)


@pytest.fixture(scope="module")
def conv_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    meta = {
        "sanet_format": 1,
        "class_names": NAMES,
        "palette": [[0, 0, 0], [200, 0, 0], [0, 200, 0]],
        "min_size": 32,
        "model": {"name": "conv1x1", "num_classes": 3},
    }
    return conv1x1_onnx(tmp_path_factory.mktemp("onnx") / "conv.onnx", meta)


def rgb_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_onnx_backend_predicts_what_the_graph_computes(conv_file: Path) -> None:
    predictor = Predictor(conv_file)
    assert predictor.backend == "onnxruntime" and predictor.class_names == NAMES
    assert predictor.palette == [(0, 0, 0), (200, 0, 0), (0, 200, 0)]
    for h, w in [(65, 97), (20, 45)]:  # 20 px < 32: padded by the shared protocol code
        rgb = rgb_image(h, w)
        got = predictor.predict(rgb)
        assert got.shape == (h, w)
        np.testing.assert_array_equal(got, hand_mask(rgb))
    probs = predictor.predict_proba(rgb_image(40, 50))
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)


def test_onnx_backend_refuses_what_the_graph_would_not_check(conv_file: Path) -> None:
    model = OnnxModel(conv_file)
    assert model.num_classes == 3
    with pytest.raises(ValueError, match="too small: H and W must be ≥ 32"):
        model(torch.zeros(1, 3, 20, 45))
    with pytest.raises(ValueError, match=r"Expected a \(N, 3, H, W\)"):
        model(torch.zeros(3, 40, 40))
    with pytest.raises(FileNotFoundError):
        OnnxModel(conv_file.with_name("missing.onnx"))
    broken = conv_file.with_name("broken.onnx")
    broken.write_bytes(b"not a protobuf")
    with pytest.raises(ValueError, match="re-export"):
        OnnxModel(broken)


def test_metadata_round_trips_through_onnxruntime(conv_file: Path) -> None:
    meta = read_onnx_metadata(conv_file)
    assert meta["class_names"] == NAMES and meta["model"] == {"name": "conv1x1", "num_classes": 3}
    raw = ort.InferenceSession(str(conv_file)).get_modelmeta().custom_metadata_map
    assert json.loads(raw["palette"])[1] == [200, 0, 0]


def test_serve_runs_an_onnx_file(conv_file: Path) -> None:
    rgb = rgb_image(33, 47)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    with TestClient(create_app(Predictor(conv_file)), base_url="http://127.0.0.1") as client:
        assert client.get("/healthz").json()["backend"] == "onnxruntime"
        assert client.get("/v1/model").json()["model"]["name"] == "conv1x1"
        r = client.post("/v1/segment?format=png", files={"image": ("a.png", buf.getvalue())})
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(r.content))), hand_mask(rgb))


def test_pytorch_only_commands_name_the_onnx_file(conv_file: Path) -> None:
    with pytest.raises(ValueError, match="is an ONNX export"):
        sanet.load_model(conv_file)


def test_export_cli_refuses_wrong_arguments(tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    assert main(["export", "--checkpoint", "x.onnx", "--out", str(tmp_path / "y.onnx")]) == 2
    assert "already an ONNX file" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--out", "m.txt"]) == 2
    assert "must name an .onnx file" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# A real export (marked `export`: tens of seconds on 2 CPU cores)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    """A run-like folder (config.yaml + model/) exported with ``sanet export``."""
    run = tmp_path_factory.mktemp("run")
    shutil.copytree(tiny_checkpoint, run / "model")
    cfg = {"data": {"base_size": 64, "crop_size": 64}, "eval": {"crop_size": 64, "stride": 48}}
    (run / "config.yaml").write_text(json.dumps(cfg))  # JSON is YAML
    out = run / "exported" / "model.onnx"
    assert main(["export", "--checkpoint", str(run), "--out", str(out)]) == 0
    return run, out


@pytest.mark.export
def test_export_is_one_file_with_its_metadata(exported) -> None:
    _, out = exported
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx"]
    proto = onnx.load(str(out), load_external_data=False)
    assert not any(onnx.external_data_helper.uses_external_data(t) for t in proto.graph.initializer)
    meta = read_onnx_metadata(out)
    assert meta["class_names"] == NAMES and meta["palette"][1] == [230, 25, 75]
    assert meta["mean"] == list(IMAGENET_MEAN) and meta["std"] == list(IMAGENET_STD)
    assert meta["min_size"] == 32 and meta["opset"] == 20
    assert meta["model"]["name"] == "sanet" and meta["model"]["backbone"] == "resnet18d"
    assert meta["model"]["num_classes"] == 3
    assert (meta["protocol"]["crop_size"], meta["protocol"]["stride"]) == (64, 48)
    assert meta["run_config"]["eval"] == {"crop_size": 64, "stride": 48}
    assert meta["sanet_version"] == sanet.__version__
    assert meta["torch_version"] == torch.__version__
    checked = [tuple(r["size"]) for r in meta["parity"]["sizes"]]
    assert checked == [(64, 64), (97, 65), (333, 501)]  # the export size, then two odd ones
    assert all(r["max_abs_diff"] <= 1e-4 for r in meta["parity"]["sizes"])


@pytest.mark.export
def test_exported_graph_matches_pytorch_at_odd_sizes(exported) -> None:
    """onnxruntime called directly (not through sanet), input prepared as the metadata says."""
    run, out = exported
    model, _ = sanet.load_model(run / "model")
    meta = read_onnx_metadata(out)
    session = ort.InferenceSession(str(out))
    for n, h, w in [(1, 45, 45), (1, 65, 97), (2, 45, 37)]:  # dynamic batch, odd sizes
        rgb = np.stack([rgb_image(h, w, seed) for seed in range(n)])
        x = ((rgb / 255.0 - np.array(meta["mean"])) / np.array(meta["std"])).astype(np.float32)
        x = x.transpose(0, 3, 1, 2)
        got = session.run(None, {"image": x})[0]
        with torch.no_grad():
            ref = model(torch.from_numpy(x))["out"].numpy()
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.export
def test_both_backends_give_the_same_masks(exported) -> None:
    run, out = exported
    protocol = EvalProtocol(scales=(0.75, 1.25), flip=True, crop_size=64, stride=48)
    onnx_pred, torch_pred = Predictor(out, protocol=protocol), Predictor(run, protocol=protocol)
    for h, w in [(97, 65), (20, 45)]:  # sliding windows + flips + scales; a padded small image
        rgb = rgb_image(h, w)
        a, b = onnx_pred.predict_proba(rgb), torch_pred.predict_proba(rgb)
        np.testing.assert_allclose(a, b, atol=1e-4)
        assert (a.argmax(0) == b.argmax(0)).mean() > 0.999


@pytest.mark.export
def test_serve_answers_the_same_from_both_backends(exported) -> None:
    run, out = exported
    buf = io.BytesIO()
    Image.fromarray(rgb_image(81, 121)).save(buf, "JPEG")
    answers = []
    for checkpoint in (run, out):
        with TestClient(create_app(Predictor(checkpoint)), base_url="http://127.0.0.1") as client:
            r = client.post("/v1/segment", files={"image": ("a.jpg", buf.getvalue())})
            assert r.status_code == 200
            answers.append(r.json())
    a, b = answers
    assert (a["width"], a["height"]) == (b["width"], b["height"]) == (121, 81)
    assert [c["id"] for c in a["classes"]] == [c["id"] for c in b["classes"]]
    masks = [
        np.asarray(Image.open(io.BytesIO(base64.b64decode(x["mask_png_base64"])))) for x in answers
    ]
    assert (masks[0] == masks[1]).mean() > 0.999


@pytest.mark.export
def test_failed_check_leaves_out_untouched(exported, tmp_path: Path, monkeypatch) -> None:
    from sanet.exporting import export as export_module

    _, out = exported
    torch.manual_seed(1)  # not the seed of tiny_checkpoint: other weights
    other = sanet.build_model("sanet", backbone="resnet18d", num_classes=3).eval()
    with pytest.raises(export_module.ExportCheckError, match="disagrees with PyTorch"):
        export_module.check_parity(other, out.read_bytes(), [(64, 64)])
    # export_onnx with a failing check: the graph goes to *.unchecked.onnx, nothing at --out
    monkeypatch.setattr(export_module, "to_onnx_proto", lambda *a: onnx.load(str(out)))
    target = tmp_path / "bad.onnx"
    with pytest.raises(export_module.ExportCheckError):
        export_module.export_onnx(other, target, {"class_names": NAMES}, example_size=(64, 64))
    assert not target.exists() and (tmp_path / "bad.unchecked.onnx").is_file()
