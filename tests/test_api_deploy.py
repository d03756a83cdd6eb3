"""One meaning of a run across the stack: ``sanet.Predictor(run)``, ``sanet predict``, the served
answer (``sanet.api.serving.serving_app``) and the exported file (``sanet.api.export.export``)
all use the run's own protocol; and the library's refusals of export, serving and bench name
parameters the way a Python caller writes them.

The run is built by hand (config.yaml + model/ from save_pretrained, no training): its ``eval``
section is multi-scale + flip with small sliding windows, and its untrained SANet's classifier
is redrawn so that the mask holds every class and depends on the protocol (checked: the
default single-scale protocol gives another mask).
"""

from __future__ import annotations

import io
import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import sanet
import sanet.inference
from sanet.api.bench import bench
from sanet.api.export import export
from sanet.api.serving import serve, serving_app
from sanet.cli import main
from sanet.errors import NotFoundError, OutputExistsError, SanetError, UsageError
from sanet.inference import EvalProtocol, read_onnx_metadata
from sanet.inference.predictor import image_to_tensor, normalize
from sanet.inference.runs import embedded_run_config, run_protocol
from sanet.serve.limits import ServeLimits

BASE = "http://127.0.0.1"
NAMES = ["background", "disc", "square"]
EVAL = {"scales": [0.75, 1.0], "flip": True, "crop_size": 48, "stride": 32}


def odd_image() -> np.ndarray:
    """45×61 RGB (odd sides; at base size 64 the scale-1.0 image takes two windows of 48)."""
    rgb = np.random.default_rng(0).integers(0, 256, (45, 61, 3), dtype=np.uint8)
    rgb[10:30, 5:25] = [250, 20, 20]
    rgb[20:40, 35:55] = [20, 250, 60]
    return rgb


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder whose eval section is multi-scale + flip (base size 64, 48-px windows)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ms") / "run"
    model = sanet.build_model("sanet", backbone="resnet18d", num_classes=3).eval()
    with torch.no_grad():  # a classifier whose classes all win somewhere on odd_image()
        w = model.head.mask.weight.normal_(0, 1.0)
        w -= w.mean(1, keepdim=True)
        x = normalize(image_to_tensor(odd_image()))[None]
        x = torch.nn.functional.interpolate(x, size=(47, 64), mode="bilinear")
        model.head.mask.bias.zero_()
        model.head.mask.bias -= model(x)["out"][0].mean((1, 2))
    palette = [[0, 0, 0], [230, 25, 75], [60, 180, 75]]
    model.save_pretrained(folder / "model", metadata={"class_names": NAMES, "palette": palette})
    cfg = {"data": {"base_size": 64, "crop_size": 48}, "eval": EVAL}
    (folder / "config.yaml").write_text(json.dumps(cfg))  # JSON is YAML
    return folder


def png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def test_predictor_predict_and_the_server_agree_pixel_for_pixel(run: Path, tmp_path: Path):
    rgb = odd_image()
    predictor = sanet.Predictor(run)
    assert predictor.protocol == run_protocol(run)
    assert predictor.protocol.scales == (0.75, 1.0) and predictor.protocol.flip
    assert (predictor.protocol.base_size, predictor.protocol.crop_size) == (64, 48)
    in_memory = predictor.predict(rgb)
    assert set(np.unique(in_memory)) == {0, 1, 2}  # a mask worth comparing
    single = sanet.Predictor(run, protocol=EvalProtocol()).predict(rgb)
    assert (single != in_memory).mean() > 0.1  # the protocol matters on this run

    image = tmp_path / "odd.png"
    image.write_bytes(png(rgb))
    assert (
        main(["predict", "--checkpoint", str(run), str(image), "--out", str(tmp_path / "d")]) == 0
    )
    from_cli = np.asarray(Image.open(tmp_path / "d" / "odd.png"))

    served = serving_app(run)
    assert served.predictor.protocol.scales == (0.75, 1.0) and served.predictor.protocol.flip
    assert served.predictor.protocol.window_batch == 1  # one window per forward on a CPU
    assert served.working_side == 64  # base size × the largest scale: 45×61 stays as it is
    with TestClient(served.app, base_url=BASE) as client:
        r = client.post("/v1/segment?format=png", files={"image": ("odd.png", png(rgb))})
        assert r.status_code == 200, r.text
        info = client.get("/v1/model").json()
    from_server = np.asarray(Image.open(io.BytesIO(r.content)))
    assert r.headers["x-sanet-scale"] == "1.0"
    assert info["protocol"]["scales"] == [0.75, 1.0] and info["protocol"]["flip"] is True

    assert in_memory.shape == from_cli.shape == from_server.shape == (45, 61)
    np.testing.assert_array_equal(from_cli, in_memory)
    np.testing.assert_array_equal(from_server, in_memory)


@pytest.mark.export
def test_the_exported_file_carries_the_runs_protocol(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "ms.onnx"
    result = export(run, out)
    meta = read_onnx_metadata(out)
    assert meta["protocol"] == run_protocol(run).to_dict()  # the whole protocol, not the window
    assert meta["run_config"] == embedded_run_config(run) and meta["run_config"]["eval"] == EVAL
    from_file, from_run = sanet.Predictor(out), sanet.Predictor(run)
    assert from_file.backend == "onnxruntime"
    assert from_file.protocol == from_run.protocol == result.protocol
    # the result, against the file itself
    import onnx

    proto = onnx.load(str(out))
    assert result.path == out and result.size_bytes == len(out.read_bytes())
    assert result.opset == next(o.version for o in proto.opset_import if o.domain == "") == 20
    assert result.class_names == meta["class_names"] == NAMES
    assert result.outputs == ("logits",) and result.quantization is None
    assert [tuple(r["size"]) for r in result.parity] == [(48, 48), (97, 65), (333, 501)]
    rgb = odd_image()
    assert (from_file.predict(rgb) == from_run.predict(rgb)).mean() > 0.99  # float32 near-ties


# ---------------------------------------------------------------------------------------------
# Refusals in library words
# ---------------------------------------------------------------------------------------------


def _never(*args, **kwargs):
    raise AssertionError("the model was loaded before the arguments were checked")


EXPORT_REFUSALS = [
    ({"size": 16}, UsageError, "size=16 is below 32"),
    ({"opset": 7}, UsageError, "opset=7 is outside 18.."),
    ({"atol": -1.0}, UsageError, "atol must be ≥ 0 .* or check=False to skip"),
    ({"outputs": "logit"}, UsageError, "outputs 'logit': expected .* outputs='logits,mask'"),
    ({"calib_data": "synthetic:"}, UsageError, r"calib_data only apply with int8=True"),
    ({"int8": True}, UsageError, "int8=True needs calib_data"),
    ({"int8": True, "calib_data": "synthetic:", "eval_images": 0}, UsageError, "eval_images must"),
    ({"int8": True, "calib_data": "nope:x"}, UsageError, "calib_data='nope:x' has an unknown kind"),
    (
        {"int8": True, "calib_data": "synthetic:", "eval_split": "train"},
        UsageError,
        "Choose another eval_split or calib_split",
    ),
]


@pytest.mark.parametrize(("kwargs", "error", "words"), EXPORT_REFUSALS)
def test_export_refuses_in_library_words(run, tmp_path, monkeypatch, kwargs, error, words):
    import sanet.models.registry

    monkeypatch.setattr(sanet.models.registry, "load_model", _never)
    out = tmp_path / "m.onnx"
    with pytest.raises(error, match=words) as info:
        export(run, out, **kwargs)
    assert "--" not in str(info.value) and not out.exists()


def test_export_refuses_outputs_it_would_replace_or_misname(run, tmp_path, monkeypatch):
    import sanet.models.registry

    monkeypatch.setattr(sanet.models.registry, "load_model", _never)
    with pytest.raises(UsageError, match=r"out must name an \.onnx file.*out='model.onnx'"):
        export(run, tmp_path / "m.txt")
    taken = tmp_path / "taken.onnx"
    taken.write_text("mine")
    with pytest.raises(OutputExistsError, match=r"out '.*taken.onnx' already exists.*overwrite"):
        export(run, taken)
    assert taken.read_text() == "mine"
    with pytest.raises(UsageError, match="already an ONNX file"):
        export(taken, tmp_path / "again.onnx")


def test_serving_app_refuses_in_library_words(run: Path, tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(NotFoundError, match=r"^checkpoint '.*missing' does not exist"):
        serving_app(tmp_path / "missing")
    monkeypatch.setattr(sanet.inference, "Predictor", _never)  # refused before any loading
    with pytest.raises(UsageError, match=r"Unknown serving limit 'max_sid'.*'max_side'"):
        serving_app(run, max_sid=100)
    with pytest.raises(UsageError, match=r"^max_side must be 0 \(native size\) or ≥ 32"):
        serving_app(run, max_side=10)
    with pytest.raises(UsageError, match="limits or its fields"):
        serving_app(run, limits=ServeLimits(), timeout_s=5)
    with pytest.raises(UsageError, match=r"port must be between 1 and 65535.*port=8000"):
        serve(run, port=99999)
    with socket.socket() as taken:  # the port is bound before the model loads
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(UsageError, match=r"already in use.*choose another port"):
            serve(run, port=port)


def test_serving_app_limits_by_keyword_and_the_runs_working_size(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    sanet.build_model("sanet", backbone="resnet18d", num_classes=3).save_pretrained(
        folder / "model"
    )
    (folder / "config.yaml").write_text(json.dumps({"data": {"base_size": 96}}))
    served = serving_app(folder, timeout_s=5, max_queue=2)
    assert (served.limits.timeout_s, served.limits.max_queue) == (5, 2)
    assert served.limits.max_side == served.working_side == 96  # the size the run trained at
    assert served.window_seconds > 0
    with TestClient(served.app, base_url=BASE) as client:
        assert client.get("/healthz").json()["queue"]["capacity"] == 3


def test_bench_writes_its_report_and_refuses_in_library_words(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    out = tmp_path / "bench.json"
    try:
        result = bench(
            ["sanet:resnet18d"],
            device="cpu",
            mode="infer",
            size=32,
            batch=1,
            classes=3,
            steps=1,
            warmup=0,
            json=out,
            threads=1,
        )
    finally:
        torch.set_num_threads(threads)
    assert json.loads(out.read_text()) == json.loads(json.dumps(result.report))
    assert [(r["model"], r["mode"]) for r in result.rows] == [("sanet:resnet18d", "infer")]
    command = result.report["command"]  # the Python call, with what differs from the defaults
    assert command.startswith("sanet.bench(models=['sanet:resnet18d'], device='cpu', mode=")
    assert "size=32" in command and "json='" in command and "overwrite" not in command
    assert result.settings.size == 32 and result.json == out
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        bench(["sanet:resnet18d"], device="cpu", json=out)
    for kwargs, words in [
        ({"steps": 0}, "^steps must be ≥ 1"),
        ({"mode": "inference"}, "mode must be one of .* Did you mean 'infer'"),
        ({"image": "500"}, "image must be WxH, e.g. image='500x375'"),
        ({"models": ["onnx:x.onnx"], "mode": "eval"}, "does not exist"),
    ]:
        with pytest.raises(SanetError, match=words) as info:
            bench(**{"models": ["sanet:resnet18d"], "device": "cpu", **kwargs})
        assert "--" not in str(info.value)


def test_serving_app_reads_the_reference_stored_with_the_model(tmp_path: Path) -> None:
    """The calibration record in ``model/config.json`` (as ``sanet calibrate`` stores it, here
    written by hand) carries the reference the served app's drift is measured against."""
    folder = tmp_path / "run"
    sanet.build_model("sanet", backbone="resnet18d", num_classes=3).save_pretrained(
        folder / "model", metadata={"class_names": NAMES}
    )
    (folder / "config.yaml").write_text(json.dumps({"data": {"base_size": 64}}))
    rng = np.random.default_rng(0)
    shares = rng.dirichlet([1, 1, 1], size=12)
    per_image = {
        "mean_confidence": rng.uniform(0.4, 0.9, 12).round(6).tolist(),
        "unsure_share": None,  # calibrated without --risk
        "class_shares": shares.round(6).tolist(),
        "pixels": [64 * 64] * 12,
    }
    config = json.loads((folder / "model/config.json").read_text())
    record = {"temperature": 1.3, "reference": {"images": 12, "per_image": per_image}}
    config["metadata"]["calibration"] = record
    (folder / "model/config.json").write_text(json.dumps(config))
    with pytest.raises(UsageError, match=r"^drift_window must be .* Try drift_window=50"):
        serving_app(folder, drift_window=1)
    served = serving_app(folder, drift_window=3)
    assert "drift: the last 3 requests against 12 calibration images" in served.description
    with TestClient(served.app, base_url=BASE) as client:
        drift = client.get("/healthz").json()["drift"]
        assert (drift["status"], drift["reference_images"], drift["window"]) == (
            "collecting",
            12,
            3,
        )
        for _ in range(3):
            client.post("/v1/segment", files={"image": ("a.png", png(odd_image()))})
        drift = client.get("/v1/model").json()["drift"]
    assert drift["status"] in ("in distribution", "drifting") and drift["requests"] == 3
    features = {"mean_confidence", "pixels", *(f"class_share:{n}" for n in NAMES)}
    assert set(drift["features"]) == features  # no unsure share: the record has none
    pixels = drift["features"]["pixels"]
    assert (pixels["window_mean"], pixels["reference_mean"]) == (45 * 61, 64 * 64)
    assert pixels["distance"] == 1.0  # every request is 45×61, every calibration image 64×64
