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
    ("fixed-size", "cannot run on a 65×97 image"),
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
    [("fastapi", "fastapi"), ("uvicorn", "uvicorn"), ("multipart", "python-multipart")],
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
