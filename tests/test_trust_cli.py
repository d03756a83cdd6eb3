"""``sanet calibrate``, ``predict --unsure --confidence``, ``audit-labels`` and ``rank`` end to
end on a tiny model, and their bad inputs (docs/reliability.md r60–r64).

References: torchmetrics' ``MulticlassCalibrationError`` and ``−log p`` in numpy on
``Predictor.predict_proba``'s outputs (calibrated and raw); entropy and mirror disagreement in
numpy; the files' bytes before and after.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _trust_scenes import FOLDER_NAMES as NAMES
from _trust_scenes import save_sharp_model, write_folder_dataset
from sanet.cli import main
from sanet.inference import Predictor

# tiny tensors: on a shared 2-core machine thread wake-ups cost ten times the work
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A 3-class folder dataset, split val: four 41×47 pairs with ignore pixels."""
    return write_folder_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """An untrained 3-class FCN-resnet10t with sharpened logits (an over-confident model)."""
    return save_sharp_model(tmp_path_factory.mktemp("ckpt") / "model")


@pytest.fixture(scope="module")
def calibrated(model_dir, data, tmp_path_factory) -> dict:
    """The model copied and calibrated with --risk 0.4 (what every other test reads)."""
    folder = tmp_path_factory.mktemp("calibrated") / "model"
    shutil.copytree(model_dir, folder)
    weights = (folder / "model.safetensors").read_bytes()
    out = folder.parent / "cal"
    args = ["calibrate", "--checkpoint", str(folder), "--data", f"folder:{data}", "--risk", "0.4"]
    assert main([*args, "--out", str(out)]) == 0
    record = json.loads((out / "calibration.json").read_text())
    return {"folder": folder, "out": out, "record": record, "weights": weights}


def _pixels(predictor: Predictor, data: Path) -> tuple[torch.Tensor, torch.Tensor]:
    probs, labels = [], []
    for image in sorted((data / "images/val").glob("*.png")):
        p = predictor.predict_proba(image)  # (K, H, W)
        probs.append(torch.from_numpy(p).reshape(p.shape[0], -1).T)
        mask = np.asarray(Image.open(data / "masks/val" / image.name))
        labels.append(torch.from_numpy(mask.astype(np.int64)).reshape(-1))
    return torch.cat(probs), torch.cat(labels)


def test_calibrate_reports_the_ece_torchmetrics_measures_on_the_predictor(calibrated, data):
    from torchmetrics.classification import MulticlassCalibrationError

    record, folder = calibrated["record"], calibrated["folder"]
    ece = MulticlassCalibrationError(3, n_bins=15, norm="l1", ignore_index=255)
    for predictor, key in (
        (Predictor(folder), "after"),
        (Predictor(folder, calibrated=False), "before"),
    ):
        probs, labels = _pixels(predictor, data)
        assert record[f"ece_{key}"] == pytest.approx(ece(probs, labels).item(), abs=1e-3)
        valid = labels != 255
        nll = -np.log(probs[valid].numpy()[np.arange(int(valid.sum())), labels[valid].numpy()])
        assert record[f"nll_{key}"] == pytest.approx(nll.mean(), rel=1e-4)
    assert record["nll_after"] <= record["nll_before"]
    assert (
        record["bins"] == 15
        and record["images"] == 4
        and set(record["per_class_ece"]) == set(NAMES)
    )
    assert record["risk"]["alpha"] == 0.4 and "exchangeable" in record["risk"]["assumption"]
    stored = json.loads((folder / "config.json").read_text())["metadata"]["calibration"]
    assert stored["temperature"] == record["temperature"] == Predictor(folder).temperature
    assert stored["risk"]["threshold"] == record["risk"]["threshold"]
    card = (folder / "README.md").read_text()  # the model card shows the calibration
    assert "## Calibration" in card and f"temperature: {record['temperature']}" in card
    assert (folder / "model.safetensors").read_bytes() == calibrated["weights"]  # untouched
    assert Image.open(calibrated["out"] / "reliability.png").size[0] > 500


def test_predict_writes_unsure_masks_and_confidence_maps(calibrated, data, tmp_path):
    folder, threshold = calibrated["folder"], calibrated["record"]["risk"]["threshold"]
    out = tmp_path / "pred"
    args = ["predict", "--checkpoint", str(folder), str(data / "images/val"), "--out", str(out)]
    assert main([*args, "--unsure", "--confidence"]) == 0
    for image in sorted((data / "images/val").glob("*.png")):
        conf = Predictor(folder).predict_proba(image).max(0)
        raw = Predictor(folder, calibrated=False).predict_proba(image).argmax(0)
        mask = np.asarray(Image.open(out / image.name))
        assert np.array_equal(mask, np.where(conf < threshold, 255, raw))
        grey = np.asarray(Image.open(out / f"{image.stem}_confidence.png"))
        assert (
            grey.shape == conf.shape and np.abs(grey.astype(int) - np.rint(255 * conf)).max() <= 1
        )


def test_audit_labels_with_a_checkpoint_writes_the_report_most_suspicious_first(
    calibrated, data, tmp_path, capsys
):
    out = tmp_path / "audit"
    args = ["audit-labels", "--checkpoint", str(calibrated["folder"]), "--data", f"folder:{data}"]
    args += ["--min-miou", "0"]  # an untrained model: the agreement check (r71) waived
    assert main([*args, "--out", str(out), "--confidence", "0.5", "--top", "2"]) == 0
    report = json.loads((out / "label_audit.json").read_text())
    agreement = report["agreement"]  # printed first: how far to trust the suspicions
    assert f"agreement with the labels: mIoU {agreement['mIoU']:.3f} on 4 images" in (
        capsys.readouterr().out
    )
    scores = [e["score"] for e in report["images"]]
    assert len(scores) == 4 and scores == sorted(scores, reverse=True)
    assert {Path(e["image"]).name for e in report["images"]} == {"a.png", "b.png", "c.png", "d.png"}
    assert report["temperature"] == calibrated["record"]["temperature"]
    for region in (r for e in report["images"] for r in e["regions"]):
        assert region["label"] in NAMES and region["pixels"] >= 16
    assert Image.open(out / "suspects.png").size[0] > 300


def test_rank_orders_images_by_entropy_and_mirror_disagreement(calibrated, data, tmp_path):
    folder, out = calibrated["folder"], tmp_path / "rank.csv"
    assert (
        main(["rank", "--checkpoint", str(folder), str(data / "images/val"), "--out", str(out)])
        == 0
    )
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4]
    assert [float(r["score"]) for r in rows] == sorted(
        (float(r["score"]) for r in rows), reverse=True
    )
    predictor = Predictor(folder)
    for row in rows:
        rgb = np.asarray(Image.open(row["image"]).convert("RGB"))
        p = predictor.predict_proba(rgb)
        q = predictor.predict_proba(np.ascontiguousarray(rgb[:, ::-1]))[:, :, ::-1]
        mean = (p + q) / 2
        entropy = (-(mean * np.log(np.maximum(mean, 1e-12))).sum(0) / np.log(3)).mean()
        disagree = (p.argmax(0) != q.argmax(0)).mean()
        assert float(row["mean_entropy"]) == pytest.approx(entropy, abs=1e-5)
        assert float(row["flip_disagreement"]) == pytest.approx(disagree, abs=1e-6)
        assert float(row["score"]) == pytest.approx((entropy + disagree) / 2, abs=1e-5)


@pytest.mark.slow
@pytest.mark.export
def test_export_carries_the_calibration_into_the_onnx_file(calibrated, tmp_path):
    from sanet.inference import read_onnx_metadata

    onnx = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(calibrated["folder"]), "--out", str(onnx)]) == 0
    meta = read_onnx_metadata(onnx)
    assert meta["calibration"]["temperature"] == calibrated["record"]["temperature"]
    assert Predictor(onnx).unsure_threshold() == calibrated["record"]["risk"]["threshold"]


# ------------------------------------------------------------------ bad input (docs/reliability.md)


def _one_error_line(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sanet "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


R60_CASES = ["risk-above-1", "risk-needs-more-images", "pt-checkpoint", "fit-images-0"]


@pytest.mark.reliability("r60")
@pytest.mark.parametrize("case", R60_CASES)
def test_calibrate_refuses_bad_input_before_any_work(case, model_dir, data, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    config = (folder / "config.json").read_bytes()
    pt = tmp_path / "last.pt"
    pt.write_bytes(b"not used")
    checkpoint, extra, needle = {
        "risk-above-1": (folder, ["--risk", "1.5"], "between 0 and 1"),
        "risk-needs-more-images": (
            folder,
            ["--risk", "0.1"],
            "needs at least 9 calibration images",
        ),
        "pt-checkpoint": (pt, [], "Pass the run directory or its model/ folder"),
        "fit-images-0": (folder, ["--fit-images", "0"], "--fit-images must be at least 1"),
    }[case]
    out = tmp_path / "out"
    args = ["calibrate", "--checkpoint", str(checkpoint), "--data", f"folder:{data}"]
    assert main([*args, "--out", str(out), *extra]) == 2
    _one_error_line(capsys.readouterr().err, needle)
    assert not out.exists() and (folder / "config.json").read_bytes() == config


@pytest.mark.reliability("r61")
def test_predict_unsure_without_a_risk_threshold_writes_nothing(model_dir, data, tmp_path, capsys):
    out = tmp_path / "pred"
    args = ["predict", "--checkpoint", str(model_dir), str(data / "images/val"), "--out", str(out)]
    assert main([*args, "--unsure"]) == 2
    _one_error_line(capsys.readouterr().err, "no risk threshold", "sanet calibrate")
    assert not list(out.glob("*.png"))


R62_CASES = [
    "both",
    "neither",
    "recipe-without-folds",
    "one-fold",
    "confidence-above-1",
    "protocol-flag-with-recipe",
]


@pytest.mark.reliability("r62")
@pytest.mark.parametrize("case", R62_CASES)
def test_audit_labels_refuses_bad_combinations(case, model_dir, data, tmp_path, capsys):
    ckpt, spec = ["--checkpoint", str(model_dir)], ["--data", f"folder:{data}"]
    argv, needle = {
        "both": (["demo", *ckpt], "not both or neither"),
        "neither": ([], "not both or neither"),
        "recipe-without-folds": (["demo"], "needs --folds, the number of folds"),
        "one-fold": (["demo", "--folds", "1"], "--folds must be at least 2"),
        "confidence-above-1": ([*ckpt, "--confidence", "1.5"], "--confidence must lie"),
        "protocol-flag-with-recipe": (["demo", "--folds", "2", "--ms-flip"], "--ms-flip goes with"),
    }[case]
    out = tmp_path / "audit"
    assert main(["audit-labels", *argv, *spec, "--out", str(out)]) == 2
    _one_error_line(capsys.readouterr().err, needle)
    assert not (out / "label_audit.json").exists() and not (out / "runs").exists()


@pytest.mark.reliability("r63")
def test_rank_finishes_the_readable_images_and_lists_the_bad_one(model_dir, data, tmp_path, capsys):
    images = tmp_path / "images"
    shutil.copytree(data / "images/val", images)
    (images / "b.png").write_bytes((images / "b.png").read_bytes()[:60])  # truncated
    out = tmp_path / "rank.csv"
    assert main(["rank", "--checkpoint", str(model_dir), str(images), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "1 of 4 inputs failed" in err and "b.png" in err
    ranked = [Path(r["image"]).name for r in csv.DictReader(out.read_text().splitlines())]
    assert sorted(ranked) == ["a.png", "c.png", "d.png"]


@pytest.mark.reliability("r64")
def test_predict_confidence_refuses_a_map_that_would_overwrite_another_output(
    model_dir, data, tmp_path, capsys
):
    images = tmp_path / "images"
    shutil.copytree(data / "images/val", images)
    shutil.copy(images / "b.png", images / "a_confidence.png")  # a's map would overwrite its mask
    out = tmp_path / "pred"
    args = ["predict", "--checkpoint", str(model_dir), str(images), "--out", str(out)]
    assert main([*args, "--confidence"]) == 2
    _one_error_line(capsys.readouterr().err, "a_confidence.png", "another --out folder")
    assert not out.exists()


R65_CASES = ["calibrate", "audit-labels", "rank", "predict-confidence"]


@pytest.mark.reliability("r65")
@pytest.mark.parametrize("case", R65_CASES)
def test_trust_outputs_are_never_replaced_silently(
    case, model_dir, data, tmp_path, monkeypatch, capsys
):
    import sanet.inference.predictor
    import sanet.models.registry

    def never(*a, **k):
        raise AssertionError("a model was loaded although the output is refused first")

    monkeypatch.setattr(sanet.models.registry, "load_model", never)
    monkeypatch.setattr(sanet.inference.predictor, "open_model", never)
    out = tmp_path / "out"
    out.mkdir()
    ckpt, spec = ["--checkpoint", str(model_dir)], ["--data", f"folder:{data}"]
    images = str(data / "images/val")
    argv, mine = {
        "calibrate": (["calibrate", *ckpt, *spec, "--out", str(out)], out / "reliability.png"),
        "audit-labels": (["audit-labels", *ckpt, *spec, "--out", str(out)], out / "suspects.png"),
        "rank": (["rank", *ckpt, images, "--out", str(out / "r.csv")], out / "r.csv"),
        "predict-confidence": (
            ["predict", *ckpt, images, "--out", str(out), "--confidence"],
            out / "c_confidence.png",
        ),
    }[case]
    mine.write_text("the user's file")
    assert main(argv) == 2
    _one_error_line(capsys.readouterr().err, str(mine), "--overwrite")
    assert mine.read_text() == "the user's file" and sorted(out.iterdir()) == [mine]
