"""Bugs that once survived the default suite (issue 34), each pinned by a fast test that fails
with it: the INT8 gate on a NaN mIoU, a streamed upload one byte over the limit, the side of the
unsure threshold a tie falls on (in ``Predictor``, the server and ``sanet predict``), the ONNX
file losing its calibration, and the k-fold audit scoring images with a model that trained on
them. Each has its planted bug in ``tests/mutations/catalogue.yaml``; docs/testing.md lists them.

References: the definitions written in the test (an exact tie of two equal logits, the
conformal loss's "sure when ≥ λ" from docs/trust.md, softmax in float64 numpy), byte counts by
hand, and the training images each fold's run actually reads (``build_data``).
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from torch import nn

from sanet.errors import Int8Refused
from sanet.inference import EvalProtocol, Predictor
from sanet.inference.confidence import protocol_settings
from sanet.serve.app import create_app
from sanet.serve.limits import ServeLimits
from test_deploy_serve import BASE, hand_predictor

pytestmark = pytest.mark.usefixtures("one_thread")

# --- INT8: a NaN mIoU never passes the gate --------------------------------------------------


@pytest.mark.parametrize(("fp32", "int8"), [(0.5, float("nan")), (float("nan"), 0.5)])
def test_int8_gate_refuses_an_accuracy_it_could_not_measure(fp32: float, int8: float) -> None:
    from sanet.exporting.quantize import gate

    with pytest.raises(Int8Refused):  # `drop > max_drop` is False for NaN: it would pass
        gate(fp32, int8, 0.05, "synthetic: val (4 images)")


def test_int8_gate_takes_a_drop_at_its_bound_and_refuses_one_above() -> None:
    from sanet.exporting.quantize import gate

    assert gate(0.5, 0.25, 0.25, "x") == 0.25  # exactly at the bound: accepted (≤)
    with pytest.raises(Int8Refused, match=r"a drop of 0\.2500 exceeds"):
        gate(0.5, 0.25, 0.2, "x")


# --- serve: a streamed body of exactly the limit is taken, one byte more is 413 ---------------


@pytest.mark.parametrize(("size", "refused"), [(1000, False), (1001, True)])
def test_streamed_upload_limit_is_exact_to_the_byte(size: int, refused: bool) -> None:
    """No Content-Length (a chunked upload): the limit is counted over the bytes received."""
    kind = {"content-type": "multipart/form-data; boundary=x"}
    chunks = iter([b"-" * 600, b"-" * (size - 600)])
    with TestClient(
        create_app(hand_predictor(), ServeLimits(max_upload_bytes=1000)), base_url=BASE
    ) as c:
        r = c.post("/v1/segment", content=chunks, headers=kind)
    assert "content-length" not in {k.lower() for k in r.request.headers}
    if refused:
        assert r.status_code == 413 and "at most 1,000" in r.json()["detail"], r.text
    else:  # read whole, then refused for what it is (not a multipart body), not for its size
        assert r.status_code == 400, r.text


# --- unsure pixels: a confidence equal to the threshold is sure -------------------------------

TIE_THRESHOLD = 0.5  # on the grid of thresholds (every 0.001), and a two-class tie's confidence


class TieModel(nn.Module):
    """Two classes; class 1 wins on the left half, the two logits are equal on the right half,
    so there the calibrated confidence is exactly 0.5 at any temperature (softmax of a tie)."""

    num_classes = 2

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        n, _, h, w = x.shape
        out = torch.zeros(n, 2, h, w)
        out[:, 1, :, : w // 2] = 3.0
        return {"out": out}


def tie_predictor(threshold: float = TIE_THRESHOLD) -> Predictor:
    record = {
        "temperature": 2.0,
        "protocol": protocol_settings(EvalProtocol()),
        "risk": {"alpha": 0.1, "threshold": threshold},
    }
    meta = {"class_names": ["a", "b"], "palette": [[0, 0, 0], [200, 0, 0]], "calibration": record}
    return Predictor.from_model(TieModel(), metadata=meta)


def test_a_tie_with_the_threshold_counts_as_sure_as_the_risk_control_counted_it() -> None:
    """docs/trust.md: a pixel is sure when its confidence is ≥ λ; the loss curve the threshold
    was chosen on counts a wrong pixel of confidence exactly λ as sure, so the guarantee is for
    that set: applying the threshold with ≤ would mark pixels the guarantee counted as sure."""
    from sanet.trust.risk import loss_curve

    curve = loss_curve(torch.tensor([0.5]), torch.tensor([True]), 1, np.array([0.4, 0.5, 0.6]))
    np.testing.assert_array_equal(curve, [1.0, 1.0, 0.0])  # at λ = 0.5 the pixel is sure
    h, w = 33, 40
    image = np.full((h, w, 3), 128, np.uint8)
    pred = tie_predictor()
    mask, conf = pred.predict_with_confidence(image)
    assert (conf[:, w // 2 :] == 0.5).all()  # the exact tie the test is about
    assert not pred.unsure_pixels(conf).any()
    np.testing.assert_array_equal(pred.predict(image, unsure=True), mask)
    # one step above 0.5 the tied half is unsure: the test can see unsure pixels
    above = tie_predictor(float(np.nextafter(TIE_THRESHOLD, 1.0)))
    marked = above.predict(image, unsure=True)
    assert (marked[:, w // 2 :] == 255).all() and (marked[:, : w // 2] == 1).all()


def _served_mask(pred: Predictor, h: int, w: int) -> tuple[np.ndarray, float]:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (128, 128, 128)).save(buf, "PNG")
    with TestClient(create_app(pred), base_url=BASE) as c:
        r = c.post(
            "/v1/segment?unsure=true", files={"image": ("a.png", buf.getvalue(), "image/png")}
        )
    assert r.status_code == 200, r.text
    body = r.json()
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask_png_base64"]))))
    return mask, body["unsure_share"]


def test_the_server_and_sanet_predict_keep_a_tie_sure(tmp_path: Path, monkeypatch) -> None:
    import sanet.api.prediction as prediction

    h, w = 33, 40
    left = np.zeros((h, w), np.uint8)
    left[:, : w // 2] = 1
    mask, share = _served_mask(tie_predictor(), h, w)
    assert share == 0.0
    np.testing.assert_array_equal(mask, left)
    mask, share = _served_mask(tie_predictor(float(np.nextafter(0.5, 1.0))), h, w)
    assert share == 0.5 and (mask[:, w // 2 :] == 255).all()
    # `sanet predict --unsure` (sanet.predict_files): the same model behind the checkpoint
    Image.new("RGB", (w, h), (128, 128, 128)).save(tmp_path / "a.png")
    for threshold, right in ((TIE_THRESHOLD, 0), (float(np.nextafter(0.5, 1.0)), 255)):
        monkeypatch.setattr(prediction, "Predictor", lambda *a, t=threshold, **k: tie_predictor(t))
        out = tmp_path / f"out{right}"
        prediction.predict_files(
            "x", [tmp_path / "a.png"], out, unsure=True, protocol=EvalProtocol()
        )
        written = np.asarray(Image.open(out / "a.png"))
        assert (written[:, : w // 2] == 1).all() and (written[:, w // 2 :] == right).all()


# --- export: the ONNX file keeps the calibration --------------------------------------------


def test_the_exported_file_serves_calibrated_confidence(tmp_path: Path) -> None:
    """``build_metadata`` → ``write_onnx`` → ``Predictor(file)``: the temperature and risk
    threshold of ``sanet calibrate`` reach the file's confidences (raw ones would differ)."""
    from onnx import TensorProto, helper, numpy_helper

    from sanet.exporting.export import build_metadata, write_onnx

    weights = np.array([[0.0, 0.0, 1.0], [1.0, -0.5, 0.0]], np.float32)  # (K=2, RGB)
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2, "H", "W"])
    w = numpy_helper.from_array(weights.reshape(2, 3, 1, 1), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["logits"])], "g", [image], [logits], [w]
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    proto.ir_version = 9
    record = {
        "temperature": 3.0,
        "protocol": protocol_settings(EvalProtocol()),
        "risk": {"alpha": 0.1, "threshold": 0.55},
    }
    model = SimpleNamespace(name="conv1x1", config={"num_classes": 2})
    meta = {"class_names": ["a", "b"], "palette": [[0, 0, 0], [9, 9, 9]], "calibration": record}
    metadata = build_metadata(model, meta, EvalProtocol())
    write_onnx(proto, metadata, tmp_path / "m.onnx")
    pred = Predictor(tmp_path / "m.onnx")
    assert pred.unsure_threshold() == 0.55 and pred.temperature == 3.0
    rgb = np.random.default_rng(0).integers(0, 256, (35, 41, 3), dtype=np.uint8)
    _, conf = pred.predict_with_confidence(rgb)
    x = (rgb / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    z = x @ weights.T.astype(np.float64) / 3.0
    e = np.exp(z - z.max(-1, keepdims=True))
    np.testing.assert_allclose(conf, (e / e.sum(-1, keepdims=True)).max(-1), atol=1e-5)
    assert json.loads(json.dumps(metadata["calibration"])) == record


# --- label audit: every image scored by a model that never trained on it ---------------------


def test_kfold_audit_scores_each_fold_with_the_model_that_held_it_out(
    tmp_path: Path, monkeypatch
) -> None:
    """Training and scoring replaced by recorders: each fold's model must score only images
    its own run does not train on (what ``build_data`` gives that run's config)."""
    import sanet.experiments.folds as folds
    from sanet.training.loaders import build_data

    configs, scored = {}, {}

    def ensure_run(cfg, run, *args):
        configs[run.model] = cfg

    def audit_split(model, dataset, names, protocol, *, indices, **kwargs):
        scored[model] = list(indices)
        return [{"index": i, "score": 0.0} for i in indices], [], None  # found, best, agreement

    monkeypatch.setattr(folds, "ensure_run", ensure_run)
    monkeypatch.setattr(folds, "load_model", lambda path: (path, {}))
    monkeypatch.setattr(folds, "audit_split", audit_split)
    options = ["data.options={num_images: 10, size: 40}"]
    entries, *_ = folds.kfold_audit(
        "src/sanet/configs/demo_scratch.yaml", 3, "synthetic", tmp_path, overrides=options
    )
    assert sorted(e["index"] for e in entries) == list(range(10))  # each image once
    assert len(scored) == len(configs) == 3
    for model, images in scored.items():
        train, _ = build_data(configs[model])
        assert not set(images) & set(train.indices), f"{model} scored images it trained on"
        assert len(images) + len(train.indices) == 10
