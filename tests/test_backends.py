"""``sanet backends`` / ``sanet.compare_backends`` and ``sanet serve --backend`` (issue 35,
part 5).

The selection rule is checked on hand-written rows (a backend that fails the gate is never
picked, however fast; without labels INT8 is never picked); the gate's statistic per backend on
hand-built 1×1 convolution graphs whose masks are a line of numpy (tests/test_deploy_int8.py);
``serve --backend auto`` end to end on the tests' tiny model at 64 px, with a stand-in "INT8"
file far faster than it; and the bad inputs (r73–r76) in one line before any model loads.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import sanet
from _trust_scenes import write_folder_dataset
from sanet.cli import main
from sanet.errors import NotFoundError, UsageError
from sanet.exporting.backends import BackendRow, Candidate, accuracy, choose
from sanet.exporting.int8_gate import measured_drop
from sanet.inference import EvalProtocol, OnnxModel, Predictor
from sanet.metrics import ConfusionMatrix
from test_deploy_int8 import BENIGN, FRAGILE, META, conv_proto, hand_mask, rgb_image

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
SMALL = EvalProtocol(crop_size=64, stride=48, window_batch=1)  # noise images of 64 px: fast


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True)
    return folder


def row(name: str, ms: float, passed: bool | None = None, why: str = "") -> dict:
    return BackendRow(name, "x", latency_ms=ms, passed=passed, why=why).to_dict()


# ---------------------------------------------------------------------------------------------
# The choice
# ---------------------------------------------------------------------------------------------


def test_a_backend_that_fails_the_gate_is_never_picked_however_fast() -> None:
    rows = [
        row("torch-fp32", 100.0, True, "the reference"),
        row("torch-bf16", 60.0, True, "drop 0.001"),
        row("onnxruntime-fp32", 70.0, True, "drop 0.0"),
        row("onnxruntime-int8", 10.0, False, "mIoU drop 0.03 > 0.01 on 24 images"),
    ]
    choice = choose(rows, "folder:x val (24 images)")
    assert choice.backend == "torch-bf16" and choice.gated
    assert "1.67× torch-fp32" in choice.reason
    assert "refused onnxruntime-int8 (mIoU drop 0.03 > 0.01 on 24 images)" in choice.reason
    assert "onnxruntime-int8" not in choice.candidates
    # everything but the reference refused: the reference, which is always allowed
    refused = [row("torch-fp32", 100.0, True), *(row(r["name"], 1.0, False) for r in rows[1:])]
    assert choose(refused, "folder:x val (24 images)").backend == "torch-fp32"


def test_without_labels_int8_is_never_picked_and_the_reason_says_so() -> None:
    rows = [row("torch-fp32", 100.0), row("onnxruntime-fp32", 90.0), row("onnxruntime-int8", 5.0)]
    choice = choose(rows, None)
    assert choice.backend == "onnxruntime-fp32" and not choice.gated
    assert "INT8 not considered: no labelled images to gate it on" in choice.reason


def test_the_gate_statistic_of_every_backend_is_the_int8_gates(tmp_path) -> None:
    """Two hand-built graphs as the reference and a candidate: agreement and drop against
    numpy's masks of the same 1×1 convolutions."""
    files = {}
    for name, weights in (("ref", BENIGN), ("fragile", FRAGILE)):
        files[name] = tmp_path / f"{name}.onnx"
        onnx.save(conv_proto(weights), files[name])
    images = [rgb_image(40, 44, seed) for seed in range(6)]
    labels = [hand_mask(im, BENIGN).astype(np.uint8) for im in images]  # the reference is right
    pairs = list(zip(images, labels, strict=True))
    candidates = [
        Candidate(n, Predictor.from_model(OnnxModel(files[k]), "cpu", SMALL, META), str(files[k]))
        for n, k in (("torch-fp32", "ref"), ("onnxruntime-int8", "fragile"))
    ]
    ref, fragile = accuracy(candidates, pairs, 3, labelled=True, max_drop=0.01)
    ours = [hand_mask(im, FRAGILE) for im in images]
    agree = sum(int((a == b).sum()) for a, b in zip(ours, labels, strict=True)) / (6 * 40 * 44)
    assert fragile.agreement == pytest.approx(agree)
    matrices = [
        [_matrix(p, t) for p, t in zip(preds, labels, strict=True)] for preds in (labels, ours)
    ]
    expected = measured_drop(*matrices)
    assert ref.miou == pytest.approx(1.0) and ref.drop == pytest.approx(0.0) and ref.passed
    assert fragile.drop == pytest.approx(expected["drop"]) and fragile.drop > 0.01
    assert fragile.drop_se == pytest.approx(expected["drop_se"])
    assert fragile.passed is False and "> 0.01 on 6 images" in fragile.why


def _matrix(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    cm = ConfusionMatrix(3)
    cm.update(torch.as_tensor(pred)[None], torch.as_tensor(target)[None])
    return cm.matrix_cpu().numpy()


# ---------------------------------------------------------------------------------------------
# serve --backend auto on the tiny model
# ---------------------------------------------------------------------------------------------


def stand_ins(folder: Path) -> tuple[Path, Path]:
    """An fp32 "export" and an "INT8 export" of 3 classes: 1×1 convolutions (the INT8 one says
    it is quantized), each far faster than the tiny SANet."""
    fp32, int8 = folder / "fp32.onnx", folder / "int8.onnx"
    onnx.save(conv_proto(BENIGN), fp32)
    proto = conv_proto(BENIGN)
    onnx.helper.set_model_props(
        proto, {**{k: json.dumps(v) for k, v in META.items()}, "quantization": "{}"}
    )
    onnx.save(proto, int8)
    return fp32, int8


@pytest.fixture
def model_copy(tiny_checkpoint, tmp_path) -> Path:
    """The tiny model in a folder of its own (a record written next to it stays here)."""
    return Path(shutil.copytree(tiny_checkpoint, tmp_path / "model"))


@pytest.mark.reliability("r76")
@pytest.mark.parametrize("labels", ["none", "folder of images"])
def test_auto_without_labels_never_serves_int8_and_says_why(model_copy, tmp_path, labels) -> None:
    from fastapi.testclient import TestClient

    _, int8 = stand_ins(tmp_path)
    if labels == "none":
        served = sanet.serving_app(model_copy, protocol=SMALL, backend="auto", int8=int8)
    else:
        folder = write_folder_dataset(_made(tmp_path / "data"), "abcd") / "images/val"
        result = sanet.compare_backends(
            model_copy, int8=int8, data=folder, rounds=2, protocol=SMALL
        )
        assert result.choice.backend != "onnxruntime-int8" and not result.choice.gated
        served = sanet.serving_app(model_copy, protocol=SMALL, backend="auto")  # the record
    line = served.description
    assert "INT8 not considered: no labelled images to gate it on" in line
    assert served.predictor.backend == "torch"
    with TestClient(served.app, base_url="http://127.0.0.1") as client:
        choice = client.get("/v1/model").json()["backend_choice"]
    assert choice["backend"] in ("torch-fp32", "torch-bf16") and choice["gated"] is False
    assert "onnxruntime-int8" not in choice["candidates"]


def test_auto_reads_the_record_and_explicit_backends_still_work(
    model_copy, tmp_path, caplog
) -> None:
    fp32, int8 = stand_ins(tmp_path)
    result = sanet.compare_backends(model_copy, onnx=fp32, rounds=2, protocol=SMALL)
    assert result.json == model_copy / "backends.json" and result.choice.backend
    served = sanet.serving_app(model_copy, protocol=SMALL, backend="auto")
    assert str(model_copy / "backends.json") in served.description
    assert served.predictor.backend_choice["backend"] == result.choice.backend
    # a second comparison does not replace the record silently
    with pytest.raises(sanet.errors.OutputExistsError, match="overwrite"):
        sanet.compare_backends(model_copy, onnx=fp32, rounds=2, protocol=SMALL)
    record = json.loads(result.json.read_text())
    record["environment"]["device_name"] = "Another CPU"  # measured elsewhere: said, still used
    result.json.write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING, logger="sanet"):
        elsewhere = sanet.serving_app(model_copy, protocol=SMALL, backend="auto")
    assert elsewhere.predictor.backend_choice["backend"] == result.choice.backend
    assert "was measured on Another CPU" in caplog.text and "--overwrite" in caplog.text
    with caplog.at_level(logging.WARNING, logger="sanet"):  # files the record did not compare
        now = sanet.serving_app(model_copy, protocol=SMALL, backend="auto", int8=int8)
    assert "compared other exported files" in caplog.text
    assert now.predictor.backend_choice["source"] == "measured at start-up"
    explicit = sanet.serving_app(model_copy, protocol=SMALL, backend="onnxruntime", onnx=fp32)
    assert explicit.predictor.backend == "onnxruntime"
    assert "(onnxruntime-fp32; as asked" in explicit.description
    plain = sanet.serving_app(model_copy, protocol=SMALL)  # no backend: as before
    assert plain.predictor.backend == "torch" and plain.predictor.backend_choice is None


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------


@pytest.mark.reliability("r73")
@pytest.mark.parametrize("case", ["no masks", "too few", "serve too few"])
def test_a_gate_folder_without_labels_or_with_too_few_is_one_line(
    model_copy, tmp_path, capsys, case
) -> None:
    data = write_folder_dataset(_made(tmp_path / "data"), "abcde")
    if case == "no masks":
        shutil.rmtree(data / "masks")
    spec = f"folder:{data}"
    if case == "serve too few":
        args = ["serve", "--checkpoint", str(model_copy), "--backend", "auto", "--port", "0"]
        args += ["--gate-data", spec]
    else:
        args = ["backends", "--checkpoint", str(model_copy), "--data", spec]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    if case == "no masks":
        assert "masks/val" in err[0] and "Traceback" not in err[0]
    else:
        assert "gives 5 labelled images; the gate needs at least 20" in err[0]
    assert not (model_copy / "backends.json").exists()


@pytest.mark.reliability("r74")
@pytest.mark.parametrize(
    "given,words",
    [
        ({"backend": "onnx"}, "Did you mean 'onnxruntime'?"),
        ({"int8": "INT8"}, "apply with backend='auto'"),
        ({"backend": "auto", "amp": "bf16"}, "chooses the precision itself"),
        ({"backend": "onnxruntime"}, "needs an exported file"),
        ({"backend": "torch", "checkpoint": "FP32"}, "needs the PyTorch model"),
    ],
)
def test_unknown_or_contradictory_backends_are_refused_before_loading(
    model_copy, tmp_path, monkeypatch, given, words
) -> None:
    fp32, int8 = stand_ins(tmp_path)
    monkeypatch.setattr(sanet.inference, "Predictor", None)  # never reached
    files = {"INT8": str(int8), "FP32": str(fp32)}
    kwargs = {k: files.get(v, v) for k, v in given.items()}
    checkpoint = kwargs.pop("checkpoint", model_copy)
    with pytest.raises(UsageError, match="^.*" + words.replace("(", r"\(").replace("?", r"\?")):
        sanet.serving_app(checkpoint, **kwargs)


@pytest.mark.reliability("r75")
@pytest.mark.parametrize("case", ["missing", "fp32 as int8", "int8 as onnx"])
def test_a_missing_or_wrong_int8_file_is_one_line(model_copy, tmp_path, capsys, case) -> None:
    fp32, int8 = stand_ins(tmp_path)
    flags = {
        "missing": ["--int8", str(tmp_path / "gone.onnx")],
        "fp32 as int8": ["--int8", str(fp32)],
        "int8 as onnx": ["--onnx", str(int8)],
    }[case]
    assert main(["backends", "--checkpoint", str(model_copy), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    words = {
        "missing": "gone.onnx' does not exist. Expected the file of `sanet export --int8`",
        "fp32 as int8": "is not an INT8 export; give it as --onnx",
        "int8 as onnx": "is an INT8 export; give it as --int8",
    }[case]
    assert words in err[0]
    with pytest.raises((NotFoundError, UsageError)):
        sanet.serving_app(model_copy, backend="auto", **dict([(flags[0][2:], flags[1])]))
