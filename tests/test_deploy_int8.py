"""``sanet export --int8`` and ``--outputs``, and ``sanet bench`` on exported files.

Default suite: hand-built ONNX graphs (1×1 convolutions, whose masks are a line of numpy), so
the added outputs, the calibration windows, the quantization gate and the bench peers are
checked against numbers computed here. Slow: the whole CLI on a real (tiny, untrained) SANet —
the int8 file runs through ``Predictor``, ``sanet eval``, ``sanet serve``'s start-up check and
``sanet bench``, and an impossible ``--max-miou-drop`` is refused in one line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from sanet.cli import main
from sanet.conventions import IMAGENET_MEAN, IMAGENET_STD
from sanet.devices import cpu_features
from sanet.exporting.outputs import add_outputs, check_request, parse_outputs
from sanet.exporting.quantize import (
    Int8Data,
    Int8Refused,
    calibration_inputs,
    choose_scheme,
    quantize_checked,
)
from sanet.inference import EvalProtocol, OnnxModel, Predictor, read_onnx_metadata

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

# A benign model (the export tests' 1×1 convolution) and one int8 cannot represent: classes 1
# and 2 differ from class 0 by weights 500× smaller than its largest, which per-channel int8
# rounds to zero, so every pixel ties and the arg-max falls back to class 0.
BENIGN = np.array([[0.0, 0.0, 1.0], [1.0, -0.5, 0.0], [-0.2, 1.0, -0.3]], np.float32)
FRAGILE = np.array([[100.0, 0.0, 0.0], [100.0, 0.2, 0.0], [100.0, -0.2, 0.0]], np.float32)
BIAS = np.array([0.1, -0.2, 0.0], np.float32)
META = {
    "sanet_format": 1,
    "class_names": ["a", "b", "c"],
    "palette": [[0, 0, 0], [200, 0, 0], [0, 200, 0]],
    "min_size": 32,
    "model": {"name": "conv1x1", "num_classes": 3},
}


def conv_proto(weights: np.ndarray, bias: np.ndarray = BIAS):
    """``logits = weights · image + bias`` per pixel, dynamic N, H, W, opset 20."""
    from onnx import TensorProto, helper, numpy_helper

    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3, "H", "W"])
    w = numpy_helper.from_array(weights.reshape(3, 3, 1, 1), "w")
    b = numpy_helper.from_array(bias, "b")
    node = helper.make_node("Conv", ["image", "w", "b"], ["logits"])
    graph = helper.make_graph([node], "conv1x1", [image], [logits], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    helper.set_model_props(model, {k: json.dumps(v) for k, v in META.items()})
    return model


def normalised(rgb: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 → ``(H, W, 3)`` float64, as the metadata says."""
    return (rgb / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)


def hand_mask(rgb: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return (normalised(rgb) @ weights.T.astype(np.float64) + BIAS).argmax(-1)


def rgb_image(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def cli_words() -> contextlib.AbstractContextManager:
    """Messages as the ``sanet`` command line words them (its flags)."""
    from sanet.cli import build_parser, flags_of
    from sanet.errors import flag_names

    return flag_names(flags_of(build_parser()))


# ---------------------------------------------------------------------------------------------
# The CPU and the scheme
# ---------------------------------------------------------------------------------------------

EPYC = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n"
ALDER = "model name\t: 12th Gen Intel(R) Core(TM) i7\nflags\t: avx2 avx_vnni\n"
SAPPHIRE = "model name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t: avx512f avx512_vnni amx_int8\n"
HASWELL = "model name\t: Intel(R) Xeon(R) CPU E5-2680 v3\nflags\t: avx avx2 fma\n"
GRAVITON = "processor\t: 0\nFeatures\t: fp asimd asimddp\n"


@pytest.mark.parametrize(
    ("text", "arch", "flags", "activations", "reduce_range"),
    [
        (EPYC, "x86_64", (True, False, False), "uint8", False),
        (ALDER, "x86_64", (False, True, False), "uint8", False),
        (SAPPHIRE, "x86_64", (True, False, True), "uint8", False),
        (HASWELL, "x86_64", (False, False, False), "uint8", True),
        ("", "x86_64", (None, None, None), "uint8", True),  # no /proc/cpuinfo: assume no VNNI
        (GRAVITON, "aarch64", (False, False, False), "int8", False),
    ],
)
def test_cpu_flags_choose_the_scheme(text, arch, flags, activations, reduce_range) -> None:
    cpu = cpu_features(text, arch)
    assert (cpu["avx512_vnni"], cpu["avx_vnni"], cpu["amx"]) == flags
    scheme = choose_scheme(cpu)
    assert (scheme.activations, scheme.reduce_range, scheme.weights) == (
        activations,
        reduce_range,
        "int8",
    )
    assert scheme.per_channel and scheme.reason


def test_this_machines_cpu_is_read() -> None:
    cpu = cpu_features()
    with open("/proc/cpuinfo") as f:
        text = f.read()
    assert cpu["avx512_vnni"] == (" avx512_vnni" in text)
    assert cpu["name"] and cpu["name"] in text


# ---------------------------------------------------------------------------------------------
# Outputs a server can use
# ---------------------------------------------------------------------------------------------


def softmax_top(logits: np.ndarray, t: float) -> np.ndarray:
    """max_k softmax(logits / t) over axis 1, written out in float64."""
    z = logits.astype(np.float64) / t
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).max(axis=1)


def test_mask_and_confidence_outputs_at_odd_sizes() -> None:
    t = 1.7
    proto = add_outputs(conv_proto(BENIGN), parse_outputs("confidence,logits,mask"), t)
    session = ort.InferenceSession(proto.SerializeToString())
    assert [o.name for o in session.get_outputs()] == ["logits", "mask", "confidence"]
    for i, (h, w) in enumerate([(97, 65), (33, 45), (1, 1)]):
        rgb = np.stack([rgb_image(h, w, i), rgb_image(h, w, i + 10)])  # a batch of 2
        x = normalised(rgb).transpose(0, 3, 1, 2).astype(np.float32)
        logits, mask, conf = session.run(None, {"image": x})
        assert mask.dtype == np.uint8 and conf.dtype == np.uint8 and mask.shape == (2, h, w)
        np.testing.assert_array_equal(mask, logits.argmax(1))  # the file's own arg-max
        np.testing.assert_array_equal(mask, np.stack([hand_mask(c, BENIGN) for c in rgb]))
        want = np.round(255 * softmax_top(logits, t))
        assert np.abs(conf.astype(int) - want).max() <= 1  # float32 graph vs float64 numpy


def test_the_files_description_names_the_outputs_it_has(tmp_path: Path) -> None:
    from sanet.exporting.export import write_onnx

    for outputs in ("mask", "logits,mask,confidence"):
        proto = add_outputs(conv_proto(BENIGN), parse_outputs(outputs), 1.5)
        write_onnx(proto, {"class_names": ["a", "b", "c"]}, tmp_path / "m.onnx")
        text = onnx.load(str(tmp_path / "m.onnx")).doc_string
        for name in ("logits", "mask", "confidence"):
            assert (f"'{name}'" in text) == (name in outputs), (outputs, text)


@pytest.mark.reliability("r84")
def test_mask_only_file_gives_the_arg_max_and_sanet_names_what_it_lacks(tmp_path: Path) -> None:
    proto = add_outputs(conv_proto(BENIGN), parse_outputs("mask"))
    session = ort.InferenceSession(proto.SerializeToString())
    assert [o.name for o in session.get_outputs()] == ["mask"]
    rgb = rgb_image(65, 97, 3)
    x = normalised(rgb).transpose(2, 0, 1)[None].astype(np.float32)
    np.testing.assert_array_equal(session.run(None, {"image": x})[0][0], hand_mask(rgb, BENIGN))
    path = tmp_path / "mask.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(ValueError, match=r"no 'logits'.*outputs='logits,mask'"):
        OnnxModel(path)  # from Python: the parameter of sanet.export
    with cli_words(), pytest.raises(ValueError, match=r"no 'logits'.*--outputs logits,mask"):
        OnnxModel(path)


@pytest.mark.reliability("r80")
@pytest.mark.parametrize(
    ("text", "classes", "temperature", "match"),
    [
        ("logit", 3, None, "subset of logits, mask, confidence"),
        ("mask,mask", 3, None, "without repeats"),
        ("", 3, None, "subset of"),
        ("logits,confidence", 3, None, "needs a calibrated model.*sanet calibrate"),
        ("mask", 300, None, "300 classes"),
        ("logits,confidence", 3, -1.0, "temperature must be > 0"),
    ],
)
def test_outputs_the_model_cannot_give_are_refused(text, classes, temperature, match) -> None:
    with pytest.raises(ValueError, match=match):
        check_request(parse_outputs(text), classes, temperature)


# ---------------------------------------------------------------------------------------------
# Calibration and the gate
# ---------------------------------------------------------------------------------------------


def test_calibration_inputs_are_the_protocols_windows() -> None:
    # 97×65 with 64-px windows every 48 px: rows start at 0 and 33 (the last window ends at the
    # border), columns at 0 and 1; mirrored copies follow with flip.
    rgb = rgb_image(97, 65, 0)
    protocol = EvalProtocol(crop_size=64, stride=48, flip=True)
    windows = calibration_inputs([rgb], protocol, num_classes=3)
    x = normalised(rgb).transpose(2, 0, 1)
    starts = [(0, 0), (0, 1), (33, 0), (33, 1)]
    want = [x[:, y : y + 64, c : c + 64] for y, c in starts]
    want += [w[:, :, ::-1] for w in want]
    assert len(windows) == 8 and all(w.shape == (1, 3, 64, 64) for w in windows)
    for ref in want:  # each window once, in whatever order the protocol batches them
        assert sum(np.allclose(got[0], ref, atol=1e-5) for got in windows) == 1
    small = calibration_inputs([rgb_image(20, 45, 1)], EvalProtocol(crop_size=64, stride=48), 3)
    assert [w.shape for w in small] == [(1, 3, 32, 45)]  # padded to 32 rows, as inference does


def _data(weights: np.ndarray, max_drop: float) -> Int8Data:
    calib = [rgb_image(64, 64, s) for s in range(4)]
    evals = [rgb_image(45, 61, 100 + s) for s in range(3)]
    return Int8Data(
        calibration=calib,
        evaluation=[(e, hand_mask(e, weights)) for e in evals],  # fp32 is right everywhere
        calibration_source={"data": "hand", "split": "train"},
        evaluation_source={"data": "hand", "split": "val"},
        max_drop=max_drop,
    )


def test_int8_graph_is_qdq_and_within_the_bound() -> None:
    protocol = EvalProtocol(crop_size=64, stride=48)
    fp32 = conv_proto(BENIGN).SerializeToString()
    int8, record = quantize_checked(fp32, _data(BENIGN, 0.05), protocol, num_classes=3)
    graph = onnx.load_from_string(int8).graph
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= {n.op_type for n in graph.node}
    inits = {t.name: t for t in graph.initializer}
    int8 = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    weight = next(t for t in int8 if len(t.dims) == 4)  # the weights are stored as int8
    assert list(weight.dims) == [3, 3, 1, 1]
    dq = next(
        n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] == weight.name
    )
    assert list(inits[dq.input[1]].dims) == [3]  # one scale per output channel
    activation = next(n for n in graph.node if n.op_type == "QuantizeLinear")
    assert inits[activation.input[2]].data_type == onnx.TensorProto.UINT8  # VNNI: uint8
    m = record["miou"]
    assert m["fp32"] == 1.0  # the masks are the fp32 model's own arg-max
    assert m["drop"] == pytest.approx(1.0 - m["int8"]) and m["drop"] <= 0.05
    assert (m["images"], m["split"], record["calibration"]["images"]) == (3, "val", 4)
    assert record["format"] == "QDQ" and record["onnxruntime"] == ort.__version__
    assert set(record["cpu"]) >= {"name", "avx512_vnni", "avx_vnni", "amx"}
    assert record["speedup"]["ratio"] > 0 and record["speedup"]["size"] == [64, 64]


def _miou_by_hand(cm: np.ndarray) -> float:
    inter, union = np.diag(cm), cm.sum(0) + cm.sum(1) - np.diag(cm)
    return float(np.mean(inter[union > 0] / union[union > 0]))


def test_the_drop_and_its_standard_error_equal_a_jackknife_by_hand() -> None:
    from sanet.exporting.int8_gate import measured_drop

    rng = np.random.default_rng(0)
    fp32 = [rng.integers(0, 50, (3, 3)) for _ in range(6)]
    int8 = [m + rng.integers(0, 8, (3, 3)) * (1 - np.eye(3, dtype=int)) for m in fp32]
    int8[0][2] = 0  # class 2 absent from one image's labels
    got = measured_drop(fp32, int8)
    whole = _miou_by_hand(sum(fp32)) - _miou_by_hand(sum(int8))
    loo = [
        _miou_by_hand(sum(fp32) - a) - _miou_by_hand(sum(int8) - b)
        for a, b in zip(fp32, int8, strict=True)
    ]
    assert got["drop"] == pytest.approx(whole) and got["drop"] > 0
    assert got["drop_se"] == pytest.approx(np.std(loo) * np.sqrt(len(loo) - 1))  # (n-1)/n · n
    assert measured_drop(fp32[:1], int8[:1])["drop_se"] is None


R95_CASES = [(2, 1, "it needs at least 20"), (24, 4, None)]


@pytest.mark.reliability("r95")
@pytest.mark.parametrize(("images", "calibration", "warning"), R95_CASES)
def test_r95_a_gate_on_too_few_images_warns_and_records_its_uncertainty(
    images: int, calibration: int, warning: str | None, caplog
) -> None:
    """Issue 28.6: an INT8 file was written after a gate on 2 images and 1 calibration window
    without a word. Below 20 images the gate warns (and the file records it); above, the drop's
    standard error is recorded and the gate is silent when drop + 2 SE is within the bound."""
    protocol = EvalProtocol(crop_size=64, stride=48)
    evals = [rgb_image(33, 40, 100 + s) for s in range(images)]
    data = Int8Data(
        calibration=[rgb_image(64, 64, 0)] * calibration,  # one window each
        evaluation=[(e, hand_mask(e, BENIGN)) for e in evals],
        calibration_source={"data": "hand", "split": "train"},
        evaluation_source={"data": "hand", "split": "val"},
        max_drop=0.05,
    )
    fp32 = conv_proto(BENIGN).SerializeToString()
    with caplog.at_level(logging.WARNING, logger="sanet"):
        _, record = quantize_checked(fp32, data, protocol, num_classes=3)
    m, said = record["miou"], [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert record["calibration_windows"] == calibration and m["images"] == images
    if warning is None:
        assert said == [] and m["warning"] is None
        assert m["drop_se"] >= 0 and m["drop"] + 2 * m["drop_se"] <= 0.05
    else:
        assert len(said) == 1 and warning in said[0] and warning in m["warning"]
        assert "eval_images" in said[0]  # the parameter that fixes it


@pytest.mark.reliability("r83")
def test_int8_that_loses_accuracy_is_refused_in_one_line() -> None:
    protocol = EvalProtocol(crop_size=64, stride=48)
    fp32 = conv_proto(FRAGILE).SerializeToString()
    with pytest.raises(Int8Refused) as info:
        quantize_checked(fp32, _data(FRAGILE, 0.01), protocol, num_classes=3)
    message = str(info.value)
    assert "\n" not in message and "max_miou_drop=0.01" in message  # sanet.export's parameter
    assert "(calib_images, calib_data)" in message
    with cli_words(), pytest.raises(Int8Refused, match=r"exceeds --max-miou-drop 0\.01;"):
        quantize_checked(fp32, _data(FRAGILE, 0.01), protocol, num_classes=3)
    # fp32 is right everywhere (1.0); int8 mostly predicts class 0, absent from the masks
    found = re.search(r"int8 mIoU (\d\.\d{4}) vs fp32 (\d\.\d{4}).*drop of (\d\.\d{4})", message)
    assert found, message
    int8, fp32, drop = (float(v) for v in found.groups())
    assert fp32 == 1.0 and int8 < 0.5 and drop == pytest.approx(fp32 - int8, abs=1e-4)


# ---------------------------------------------------------------------------------------------
# The CLI's refusals (before any export work)
# ---------------------------------------------------------------------------------------------

R81_CASES = [
    (["--calib-data", "synthetic:"], "only apply with --int8"),
    (["--int8"], "--int8 needs --calib-data"),
    (["--int8", "--calib-data", "synthetic:", "--calib-images", "0"], "--calib-images must be"),
    (["--int8", "--calib-data", "synthetic:", "--max-miou-drop", "2"], "between -1 and 1"),
    (["--int8", "--calib-data", "synthetic:", "--eval-split", "train"], "calibration images"),
    (["--int8", "--calib-data", "nope:x"], "--calib-data nope:x has an unknown kind"),
    (["--int8", "--calib-data", "synthetic:"], "predicts 3 classes but the dataset has 7"),
    (["--outputs", "logits,confidence"], "needs a calibrated model"),
]


@pytest.mark.reliability("r81")
@pytest.mark.parametrize(("flags", "match"), R81_CASES)
def test_export_flags_that_cannot_work_are_one_line(
    flags, match, tiny_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sanet export: error:") and "\n" not in err and match in err
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# sanet bench on exported files
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def torch_threads_kept() -> Iterator[None]:
    """``sanet bench --threads`` sets torch's thread count for the process: restore it."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def test_bench_times_onnx_files_side_by_side(tmp_path: Path, capsys) -> None:
    fp32, other = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(conv_proto(BENIGN), str(fp32))
    onnx.save(conv_proto(FRAGILE), str(other))
    report = tmp_path / "bench.json"
    argv = ["bench", "--device", "cpu", "--models", f"onnx:{fp32}", f"onnx:{other}"]
    argv += ["--mode", "infer", "--threads", "1", "--size", "45", "--batch", "2", "--steps", "3"]
    with torch_threads_kept():
        assert main([*argv, "--json", str(report)]) == 0
    data = json.loads(report.read_text())
    rows = data["rows"]
    assert [r["model"] for r in rows] == [f"onnx:{fp32}", f"onnx:{other}"]
    assert all(len(r["call_ms"]) == 3 and r["gflops_per_image"] is None for r in rows)
    assert rows[0]["ratio"] == 1.0
    assert rows[1]["ratio"] == pytest.approx(rows[1]["images_per_s"] / rows[0]["images_per_s"])
    assert data["settings"]["threads"] == 1 and data["environment"]["threads"] == 1
    assert data["environment"]["onnxruntime"] == ort.__version__
    assert "avx512_vnni" in data["environment"]["cpu_int8_flags"]
    assert "classes: each file's own" in capsys.readouterr().out  # not --classes' 59


R82_CASES = [
    (["--models", "onnx:{a}"], "not train"),  # --mode both includes train
    (["--models", "onnx:{missing}", "--mode", "infer"], "does not exist"),
    (["--models", "onnx:model.pt", "--mode", "infer"], "expected onnx:PATH to an .onnx file"),
    (["--models", "onnx:{a}", "--mode", "infer", "--threads", "0"], "--threads must be"),
]


@pytest.mark.reliability("r82")
@pytest.mark.parametrize(("flags", "match"), R82_CASES)
def test_bench_peers_that_cannot_run_are_one_line(flags, match, tmp_path: Path, capsys):
    a = tmp_path / "a.onnx"
    onnx.save(conv_proto(BENIGN), str(a))
    flags = [f.format(a=a, missing=tmp_path / "missing.onnx") for f in flags]
    assert main(["bench", "--device", "cpu", "--steps", "1", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sanet bench: error:") and "\n" not in err and match in err


R94_CASES = [
    ("mask", "infer", 0, ""),  # the mask-only file for servers (docs/deploy.md)
    ("logits,mask", "infer", 0, ""),  # the one docs/deploy.md's example writes
    ("logits,mask,confidence", "infer", 0, ""),
    ("mask", "eval", 2, "no 'logits': --mode eval runs sanet's protocol"),
    ("pooled", "infer", 2, "has shape ['N', 3] (rank 2)"),  # not a segmentation model: refused
]


@pytest.mark.reliability("r94")
@pytest.mark.parametrize(("outputs", "mode", "status", "match"), R94_CASES)
def test_r94_bench_times_every_file_export_writes_as_a_server_runs_it(
    outputs: str, mode: str, status: int, match: str, tmp_path: Path, capsys
) -> None:
    """Issue 28.7: ``sanet bench onnx:FILE`` refused files exported with ``--outputs``. In
    ``infer`` mode the graph runs as a server runs it, every output fetched; ``eval`` (sanet's
    protocol) needs the logits and says so in one line."""
    from test_deploy_startup import graph_file

    path, report = tmp_path / "served.onnx", tmp_path / "bench.json"
    if outputs == "pooled":  # a classifier's head on an image: (N, 3, H, W) → (N, 3)
        graph_file(path, outputs)
    else:
        onnx.save(add_outputs(conv_proto(BENIGN), parse_outputs(outputs), 1.5), str(path))
    argv = ["bench", "--device", "cpu", "--models", f"onnx:{path}", "--mode", mode]
    argv += ["--threads", "1", "--size", "45", "--image", "45x33", "--protocol", "single"]
    with torch_threads_kept():
        assert main([*argv, "--batch", "2", "--steps", "2", "--json", str(report)]) == status
    err = capsys.readouterr().err.strip()
    if status:
        assert err.startswith("sanet bench: error:") and "\n" not in err and match in err
        assert ("--mode infer" in err) == (mode == "eval") and not report.exists()
        return
    (row,) = json.loads(report.read_text())["rows"]
    assert row["outputs"] == [o.name for o in onnx.load(str(path)).graph.output]
    assert row["outputs"] == list(parse_outputs(outputs)) and len(row["call_ms"]) == 2


# ---------------------------------------------------------------------------------------------
# The whole CLI on a real (tiny) SANet: slow, torch's exporter takes a minute on 2 cores
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run-like folder: an untrained 7-class SANet-resnet18d and the synthetic data it
    would have trained on (64 px scenes)."""
    import sanet

    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("int8run")
    sanet.build_model("sanet", backbone="resnet18d", num_classes=7).save_pretrained(run / "model")
    options = {"num_images": 16, "size": 64, "seed": 0}
    cfg = {
        "data": {"dataset": "synthetic", "base_size": 64, "crop_size": 64, "options": options},
        "eval": {"crop_size": 64, "stride": 48},
    }
    (run / "config.yaml").write_text(json.dumps(cfg))  # JSON is YAML
    return run


INT8_FLAGS = ["--int8", "--calib-data", "synthetic:", "--calib-images", "4", "--eval-images", "4"]


@pytest.mark.slow
def test_int8_export_runs_everywhere_an_export_runs(tiny_run: Path, tmp_path: Path, capsys):
    from sanet.serve.startup import check_model

    out = tmp_path / "int8.onnx"
    argv = ["export", "--checkpoint", str(tiny_run), "--out", str(out), *INT8_FLAGS]
    assert main([*argv, "--outputs", "logits,mask"]) == 0
    printed = capsys.readouterr().out
    assert "int8 (quantized from the fp32 graph checked below): mIoU" in printed
    meta = read_onnx_metadata(out)
    q = meta["quantization"]
    assert q["format"] == "QDQ" and q["calibration"] == {
        "data": "synthetic:",
        "split": "train",
        "images": 4,
    }
    assert (q["miou"]["split"], q["miou"]["images"]) == ("val", 4)
    assert q["miou"]["drop"] == pytest.approx(q["miou"]["fp32"] - q["miou"]["int8"])
    assert q["cpu"] == cpu_features() and q["onnxruntime"] == ort.__version__
    assert q["speedup"]["ratio"] > 0 and meta["outputs"] == ["logits", "mask"]
    assert [r["mask_agreement"] for r in meta["parity"]["outputs"]] == [1.0, 1.0, 1.0]
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(out)).graph.node)
    predictor = Predictor(out, protocol=EvalProtocol(crop_size=64, stride=48))
    assert predictor.predict(rgb_image(97, 65, 0)).shape == (97, 65)
    assert check_model(predictor) > 0  # sanet serve's start-up check accepts it
    eval_dir = tmp_path / "eval"
    argv = ["eval", "--checkpoint", str(out), "--data", "synthetic:", "--limit", "2"]
    assert main([*argv, "--out", str(eval_dir)]) == 0
    # bench: the fp32 export beside the int8 one, interleaved, 2 threads
    fp32 = tmp_path / "fp32.onnx"
    assert main(["export", "--checkpoint", str(tiny_run), "--out", str(fp32)]) == 0
    report = tmp_path / "bench.json"
    argv = ["bench", "--device", "cpu", "--models", f"onnx:{fp32}", f"onnx:{out}", "--mode"]
    argv += ["infer", "--threads", "2", "--size", "64", "--batch", "1", "--steps", "2"]
    with torch_threads_kept():
        assert main([*argv, "--json", str(report)]) == 0
    assert [r["model"] for r in json.loads(report.read_text())["rows"]][1] == f"onnx:{out}"


@pytest.mark.reliability("r83")
@pytest.mark.slow
def test_an_impossible_max_miou_drop_is_refused(tiny_run: Path, tmp_path: Path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    out = run / "int8.onnx"
    argv = ["export", "--checkpoint", str(run), "--out", str(out), *INT8_FLAGS]
    assert main([*argv, "--max-miou-drop", "-1"]) == 2  # int8 would have to gain 1.0 mIoU
    err = capsys.readouterr().err.strip()
    assert err.startswith("sanet export: error: int8 mIoU") and "\n" not in err
    assert "vs fp32" in err and "--max-miou-drop -1" in err
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "model"]  # nothing written


@pytest.mark.slow
def test_real_export_with_every_output(tiny_run: Path, tmp_path: Path) -> None:
    """A calibrated SANet (a temperature in config.json, as `sanet calibrate` stores it)
    exported with all three outputs: checked at export, and right at odd sizes here."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    config = json.loads((run / "model/config.json").read_text())
    config["metadata"]["calibration"] = {"temperature": 2.5}
    (run / "model/config.json").write_text(json.dumps(config))
    out = tmp_path / "all.onnx"
    argv = ["export", "--checkpoint", str(run), "--out", str(out)]
    assert main([*argv, "--outputs", "logits,mask,confidence"]) == 0
    meta = read_onnx_metadata(out)
    assert meta["outputs"] == ["logits", "mask", "confidence"]
    rows = meta["parity"]["outputs"]
    assert [r["size"] for r in rows] == [[64, 64], [97, 65], [333, 501]]
    assert all(r["mask_agreement"] >= 0.999 and r["confidence_max_diff"] <= 1 for r in rows)
    session = ort.InferenceSession(str(out))
    for h, w in [(45, 61), (33, 97)]:
        x = normalised(rgb_image(h, w, h)).transpose(2, 0, 1)[None].astype(np.float32)
        logits, mask, conf = session.run(None, {"image": x})
        np.testing.assert_array_equal(mask, logits.argmax(1))
        assert np.abs(conf.astype(int) - np.round(255 * softmax_top(logits, 2.5))).max() <= 1
