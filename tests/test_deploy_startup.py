"""``sanet serve`` refuses at start-up, in one line and exit 2 before "Serving on", what would
make every request fail: ONNX files that are not segmentation models, busy or invalid ports and
hosts (checked before the model loads), missing optional dependencies.

The foreign ONNX files are built here with ``onnx.helper`` (a classifier, a pooled output, a
graph fixed to one size, one that halves the resolution); the CLI runs in-process.
"""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path

import pytest

import sanet.inference
from sanet.cli import main
from sanet.inference import Predictor
from sanet.serve.startup import bind_socket, check_model, default_allowed_hosts

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def graph_file(path: Path, kind: str) -> Path:
    """A small ONNX model that is not a sanet segmentation model."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    def info(name: str, shape: list) -> object:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

    w = numpy_helper.from_array(np.ones((3, 3, 1, 1), np.float32), "w")
    if kind == "classifier":  # (N, 784) → (N, 10)
        m = numpy_helper.from_array(np.ones((784, 10), np.float32), "m")
        nodes = [helper.make_node("MatMul", ["x", "m"], ["y"])]
        io = [info("x", ["N", 784])], [info("y", ["N", 10])], [m]
    elif kind == "pooled":  # (N, 3, H, W) → (N, 3): image in, one score per class out
        nodes = [
            helper.make_node("GlobalAveragePool", ["x"], ["p"]),
            helper.make_node("Flatten", ["p"], ["y"]),
        ]
        io = [info("x", ["N", 3, "H", "W"])], [info("y", ["N", 3])], []
    elif kind == "fixed-size":  # only (1, 3, 224, 224)
        nodes = [helper.make_node("Conv", ["x", "w"], ["y"])]
        io = [info("x", [1, 3, 224, 224])], [info("y", [1, 3, 224, 224])], [w]
    else:  # "strided": logits at half the resolution
        nodes = [helper.make_node("Conv", ["x", "w"], ["y"], strides=[2, 2])]
        io = [info("x", ["N", 3, "H", "W"])], [info("y", ["N", 3, "h", "w"])], [w]
    graph = helper.make_graph(nodes, kind, io[0], io[1], io[2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


FOREIGN = [
    ("classifier", "has shape ['N', 784]"),
    ("pooled", "has shape ['N', 3] (rank 2)"),
    ("fixed-size", "is fixed to one size [1, 3, 224, 224]"),
    ("strided", "returned logits of shape (1, 3, 33, 49)"),
]


def serve_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    status = main(["serve", *args])
    out = capsys.readouterr()
    return status, out.out, out.err


@pytest.mark.reliability("r46")
@pytest.mark.parametrize("kind,words", FOREIGN)
def test_foreign_onnx_is_refused_in_one_line(tmp_path, capsys, kind, words) -> None:
    path = graph_file(tmp_path / f"{kind}.onnx", kind)
    status, out, err = serve_cli(capsys, "--checkpoint", str(path), "--port", "0")
    assert status == 2 and "Serving" not in out
    lines = err.strip().splitlines()  # no "carries no sanet metadata" warning before it
    assert len(lines) == 1 and lines[0].startswith("sanet serve: error:"), err
    assert words in lines[0] and "sanet export" in lines[0]


@pytest.mark.reliability("r85")
@pytest.mark.parametrize("kind,words", FOREIGN)
def test_predict_refuses_a_foreign_onnx_in_one_line_as_serve_does(tmp_path, capsys, kind, words):
    """Issue 28.5: ``sanet predict`` ended in a 26- or 45-line traceback on files that
    ``sanet serve`` refused in one line; both now go through the ONNX backend's one check."""
    import numpy as np
    from PIL import Image

    path = graph_file(tmp_path / f"{kind}.onnx", kind)
    Image.fromarray(np.zeros((65, 97, 3), np.uint8)).save(tmp_path / "a.png")
    out = tmp_path / "masks"
    status = main(
        ["predict", "--checkpoint", str(path), str(tmp_path / "a.png"), "--out", str(out)]
    )
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("sanet predict: error:")]
    assert len(errors) == 1 and words.split(" (1, 3")[0] in errors[0], err
    assert "sanet export" in errors[0] and not list(out.glob("*.png"))


def test_check_model_accepts_a_sanet_model_and_times_a_window(tiny_checkpoint: Path) -> None:
    seconds = check_model(Predictor(tiny_checkpoint), 64)
    assert 0 < seconds < 60


@pytest.mark.reliability("r47")
def test_a_busy_port_is_refused_before_the_model_loads(
    tiny_checkpoint: Path, capsys, monkeypatch
) -> None:
    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the port was checked")

    monkeypatch.setattr(sanet.inference, "Predictor", never)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        status, out, err = serve_cli(
            capsys, "--checkpoint", str(tiny_checkpoint), "--port", str(port)
        )
    assert status == 2 and "Serving" not in out
    assert err.strip() == (
        f"sanet serve: error: Port {port} on 127.0.0.1 is already in use (another server, or an "
        "earlier sanet serve still running). Stop it, or choose another --port."
    )


@pytest.mark.reliability("r47")
@pytest.mark.parametrize(
    "flags,words",
    [
        (["--port", "99999"], "--port must be between 1 and 65535, got 99999"),
        (["--port", "-1"], "--port must be between 1 and 65535, got -1"),
        (["--host", "192.0.2.1"], "--host 192.0.2.1 is not an address of this machine"),
    ],
)
def test_bad_ports_and_hosts_are_one_line(tiny_checkpoint, capsys, monkeypatch, flags, words):
    monkeypatch.setattr(sanet.inference, "Predictor", None)  # never reached
    status, out, err = serve_cli(capsys, "--checkpoint", str(tiny_checkpoint), *flags)
    assert status == 2 and "Serving" not in out
    assert len(err.strip().splitlines()) == 1 and words in err


@pytest.mark.reliability("r48")
@pytest.mark.parametrize(
    "module,package",
    [
        ("fastapi", "fastapi"),
        ("uvicorn", "uvicorn"),
        ("multipart", "python-multipart"),
        ("prometheus_client", "prometheus-client"),
    ],
)
def test_a_missing_dependency_is_one_line(tiny_checkpoint, capsys, monkeypatch, module, package):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a)
    )
    status, out, err = serve_cli(capsys, "--checkpoint", str(tiny_checkpoint))
    assert status == 2 and "Serving" not in out
    assert err.strip() == (
        f"sanet serve: error: sanet serve needs {package}, which is not installed. Install the "
        "extra: pip install 'sanet[serve]'."
    )


def test_bind_socket_takes_port_zero_and_ipv6_loopback() -> None:
    sock = bind_socket("127.0.0.1", 0)
    try:
        assert sock.getsockname()[1] > 0
    finally:
        sock.close()
    if socket.has_ipv6:
        try:
            six = bind_socket("::1", 0)
        except ValueError:
            pytest.skip("no IPv6 loopback here")
        six.close()


def test_allowed_hosts_default_by_interface() -> None:
    assert default_allowed_hosts("127.0.0.1") == [] and default_allowed_hosts("::1") == []
    public = default_allowed_hosts("0.0.0.0")
    assert socket.gethostname() in public and "0.0.0.0" not in public
    assert "myhost.example" in default_allowed_hosts("myhost.example")


def test_a_public_interface_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="sanet.serve.startup"):
        bind_socket("127.0.0.1", 0).close()
        assert not caplog.records
        bind_socket("0.0.0.0", 0).close()
    assert "no authentication" in caplog.text.lower() and "reverse proxy" in caplog.text


def calibrated_copy(folder: Path, dest: Path, record: dict | None) -> Path:
    """A copy of the ``save_pretrained`` folder whose ``config.json`` carries ``record`` as its
    calibration (what ``sanet calibrate`` stores), or none."""
    import json
    import shutil

    shutil.copytree(folder, dest)
    config = json.loads((dest / "config.json").read_text())
    if record is not None:
        config.setdefault("metadata", {})["calibration"] = record
    (dest / "config.json").write_text(json.dumps(config))
    return dest


MEAN_RISK = {"mode": "mean", "alpha": 0.1, "threshold": 0.6}
PER_IMAGE = {"mode": "per_image", "alpha": 0.1, "delta": 0.2, "confidence_level": 0.9}
STARTUP = [
    (None, ["not calibrated", "drift: no reference (the model is not calibrated"]),
    ({"temperature": 1.5}, ["calibrated: T = 1.5, no risk threshold", "drift: no reference"]),
    (
        {"temperature": 1.5, "risk": MEAN_RISK},
        [
            "T = 1.5, risk threshold 0.6 (mean guarantee: expected sure-and-wrong share of an image ≤ α = 0.1)"
        ],
    ),
    (
        {"temperature": 2, "risk": {**PER_IMAGE, "threshold": 0.75}},
        [
            "T = 2, risk threshold 0.75 (per-image guarantee: at most 0.2 of the images have a "
            "sure-and-wrong share above α = 0.1, with probability 0.9)"
        ],
    ),
]


@pytest.mark.reliability("r87")
@pytest.mark.parametrize("record,words", STARTUP)
def test_the_model_description_says_whether_it_is_calibrated(record, words) -> None:
    """Issues 28.8 and 30.7: the start-up line's description of the model: whether it is
    calibrated (T, the risk threshold, the guarantee's mode and level) and the drift state."""
    from sanet.serve.drift import DriftMonitor, read_reference
    from sanet.serve.slot import describe_model
    from test_deploy_serve import NAMES, HandModel

    meta = {"class_names": NAMES, **({"calibration": record} if record else {})}
    predictor = Predictor.from_model(HandModel(), metadata=meta)
    reference, why = read_reference(record, NAMES)
    monitor = DriftMonitor(reference, NAMES, reason=why)
    line = describe_model(predictor, monitor)
    assert line.startswith("HandModel (3 classes); torch backend; "), line
    for w in words:
        assert w in line, line


@pytest.mark.reliability("r87")
def test_the_startup_line_of_sanet_serve(tiny_checkpoint, tmp_path, capsys, monkeypatch) -> None:
    """The whole line, from the command: model, backend, calibration, drift, working size."""
    import sanet.serve.app

    record = {"temperature": 1.5, "risk": MEAN_RISK}
    folder = calibrated_copy(tiny_checkpoint, tmp_path / "model", record)
    monkeypatch.setattr(sanet.serve.app, "serve", lambda app, sock=None: None)  # no uvicorn
    flags = ["--port", "0", "--max-side", "64"]  # a 64-px timing window: a fast start-up
    status, out, err = serve_cli(capsys, "--checkpoint", str(folder), *flags)
    assert status == 0, err
    line = out.strip().splitlines()[-1]
    assert line.startswith(f"Serving {folder} on http://127.0.0.1:"), line
    assert line.endswith(
        "(Ctrl-C stops): sanet/resnet18d (3 classes); torch backend; calibrated: T = 1.5, risk "
        "threshold 0.6 (mean guarantee: expected sure-and-wrong share of an image ≤ α = 0.1); drift: no "
        "reference (the model's calibration has no reference statistics: it predates them; "
        "calibrate it again to store them); images longer than 64 px predicted at that size"
    ), line
