"""The trust verbs from Python (``sanet.api.calibration.calibrate``, ``sanet.api.audit.
audit_labels`` and ``rank``): the same numbers and files as ``sanet calibrate``, ``sanet
audit-labels`` and ``sanet rank``; refusals in library words; the record a model keeps.

References: the command line's files (byte for byte where no path is inside), torchmetrics'
``MulticlassCalibrationError`` and ``−log p`` in numpy on ``Predictor.predict_proba``'s outputs,
the CSV read back with the ``csv`` module.
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

from _trust_scenes import save_sharp_model, write_folder_dataset
from sanet.api.audit import audit_labels, rank
from sanet.api.calibration import calibrate
from sanet.cli import main
from sanet.errors import NotFoundError, OutputExistsError, UsageError
from sanet.inference import Predictor
from sanet.trust.store import STORED_KEYS

# tiny tensors: on a shared 2-core machine thread wake-ups cost ten times the work
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_folder_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_sharp_model(tmp_path_factory.mktemp("ckpt") / "model")


def _copy(model_dir: Path, where: Path) -> Path:
    shutil.copytree(model_dir, where / "model")
    return where / "model"


@pytest.fixture(scope="module")
def both(model_dir, data, tmp_path_factory) -> dict:
    """The model calibrated twice with risk 0.4: by ``sanet calibrate`` and by ``calibrate``."""
    cli, py = (_copy(model_dir, tmp_path_factory.mktemp(name)) for name in ("cli", "py"))
    spec = f"folder:{data}"
    argv = ["calibrate", "--checkpoint", str(cli), "--data", spec, "--risk", "0.4"]
    assert main(argv) == 0
    result = calibrate(py, spec, risk=0.4)
    return {"cli": cli, "py": py, "result": result, "data": data}


def _without_checkpoint(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "checkpoint"}


def test_calibrate_gives_the_cli_numbers_and_files(both):
    result, cli, py = both["result"], both["cli"], both["py"]
    assert result.report == py.parent / "calibration" / "calibration.json"  # RUN/calibration
    assert result.plot == py.parent / "calibration" / "reliability.png" and result.plot.is_file()
    assert result.stored == py / "config.json"
    by_cli = json.loads((cli.parent / "calibration" / "calibration.json").read_text())
    by_py = json.loads(result.report.read_text())
    assert by_py["checkpoint"] == str(py) and by_cli["checkpoint"] == str(cli)
    assert (
        _without_checkpoint(by_py)
        == _without_checkpoint(by_cli)
        == _without_checkpoint(result.record)
    )
    stored = [json.loads((m / "config.json").read_text()) for m in (cli, py)]
    assert stored[0] == stored[1]  # the model folders hold the same record
    assert (cli / "README.md").read_text() == (py / "README.md").read_text()
    assert (result.temperature, result.threshold, result.alpha) == (
        by_cli["temperature"],
        by_cli["risk"]["threshold"],
        0.4,
    )


def test_calibrate_result_fields_match_the_predictor_measured_by_torchmetrics(both):
    from torchmetrics.classification import MulticlassCalibrationError

    result, py, data = both["result"], both["py"], both["data"]
    ece = MulticlassCalibrationError(3, n_bins=15, norm="l1", ignore_index=255)
    for predictor, key in ((Predictor(py), "after"), (Predictor(py, calibrated=False), "before")):
        probs, labels = [], []
        for image in sorted((data / "images/val").glob("*.png")):
            p = predictor.predict_proba(image)
            probs.append(torch.from_numpy(p).reshape(3, -1).T)
            mask = np.asarray(Image.open(data / "masks/val" / image.name), np.int64)
            labels.append(torch.from_numpy(mask).reshape(-1))
        probs, labels = torch.cat(probs), torch.cat(labels)
        assert getattr(result, f"ece_{key}") == pytest.approx(ece(probs, labels).item(), abs=1e-3)
        valid = labels != 255
        p_label = probs[valid].numpy()[np.arange(int(valid.sum())), labels[valid].numpy()]
        assert getattr(result, f"nll_{key}") == pytest.approx(-np.log(p_label).mean(), rel=1e-4)
    assert Predictor(py).temperature == result.temperature
    assert Predictor(py).unsure_threshold() == result.threshold


def test_the_model_keeps_exactly_the_stored_keys(both, model_dir, data, tmp_path):
    stored = json.loads(both["result"].stored.read_text())["metadata"]["calibration"]
    assert list(stored) == list(STORED_KEYS)  # with a risk level: every key, in this order
    assert stored["data"] == f"folder:{data}" and stored["split"] == "val"
    assert stored == {k: both["result"].record[k] for k in STORED_KEYS}
    plain = calibrate(_copy(model_dir, tmp_path), f"folder:{data}", limit=2, fit_images=1)
    kept = json.loads(plain.stored.read_text())["metadata"]["calibration"]
    assert list(kept) == [k for k in STORED_KEYS if k != "risk"]
    assert kept["images"] == 2 and plain.record["fit"]["images"] == 1
    assert plain.threshold is None and plain.alpha is None


def test_audit_labels_gives_the_cli_report(both, tmp_path):
    py, spec = both["py"], f"folder:{both['data']}"
    argv = ["audit-labels", "--checkpoint", str(py), "--data", spec, "--confidence", "0.5"]
    argv += ["--min-miou", "0"]  # an untrained model: the agreement check (r71) waived
    assert main([*argv, "--top", "2", "--out", str(tmp_path / "cli")]) == 0
    out = tmp_path / "py"
    result = audit_labels(spec, checkpoint=py, out=out, confidence=0.5, top=2, min_miou=0)
    by_cli = json.loads((tmp_path / "cli" / "label_audit.json").read_text())
    assert json.loads(result.report.read_text()) == by_cli == result.audit
    assert result.suspects == tmp_path / "py" / "suspects.png" and result.suspects.is_file()
    assert result.audit["temperature"] == Predictor(py).temperature  # scored calibrated
    scores = [e["score"] for e in result.images]
    assert len(scores) == 4 and scores == sorted(scores, reverse=True)


def test_rank_gives_the_cli_csv_and_lists_unreadable_images(both, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(both["data"] / "images/val", images)
    (images / "b.png").write_bytes((images / "b.png").read_bytes()[:60])  # truncated
    py = both["py"]
    argv = ["rank", "--checkpoint", str(py), str(images), "--out", str(tmp_path / "c.csv")]
    assert main(argv) == 1  # the truncated image is listed
    result = rank(py, images, out=tmp_path / "p.csv")
    assert result.out.read_bytes() == (tmp_path / "c.csv").read_bytes()
    assert len(result.failed) == 1 and "b.png" in result.failed[0]
    written = list(csv.DictReader(result.out.read_text().splitlines()))
    assert [r["rank"] for r in result.rows] == [1, 2, 3]
    for row, line in zip(result.rows, written, strict=True):
        assert row["image"] == line["image"] and str(row["rank"]) == line["rank"]
        for key in ("score", "mean_entropy", "flip_disagreement"):
            assert row[key] == pytest.approx(float(line[key]), abs=1e-6)
    assert [r["score"] for r in result.rows] == sorted(r["score"] for r in result.rows)[::-1]


# ------------------------------------------------------------- refusals, in the caller's words


def _refuses(error: type, needle: str, call, *args, **kwargs) -> str:
    with pytest.raises(error) as caught:
        call(*args, **kwargs)
    message = str(caught.value)
    assert needle in message, message
    assert "--" not in message, message  # a Python caller typed no flag
    return message


CALIBRATE_REFUSALS = {
    "risk-above-1": ({"risk": 1.5}, "risk must lie between 0 and 1 (e.g. risk=0.05)"),
    "risk-needs-more-images": ({"risk": 0.1}, "risk=0.1 needs at least 9 calibration images"),
    "fit-images-0": ({"fit_images": 0}, "fit_images must be at least 1"),
    "no-images": ({"limit": 0}, "has no images to calibrate on"),
}


@pytest.mark.parametrize("case", CALIBRATE_REFUSALS)
def test_calibrate_refuses_bad_arguments_before_any_work(case, model_dir, data, tmp_path):
    folder = _copy(model_dir, tmp_path)
    config = (folder / "config.json").read_bytes()
    kwargs, needle = CALIBRATE_REFUSALS[case]
    out = tmp_path / "out"
    _refuses(UsageError, needle, calibrate, folder, f"folder:{data}", out=out, **kwargs)
    assert not out.exists() and (folder / "config.json").read_bytes() == config


def test_calibrate_refuses_a_pt_file_and_a_missing_checkpoint(data, tmp_path):
    pt = tmp_path / "last.pt"
    pt.write_bytes(b"not used")
    message = _refuses(UsageError, "Pass the run directory", calibrate, pt, f"folder:{data}")
    assert message.startswith(f"checkpoint {str(pt)!r} is a .pt file") and "sanet.export" in message
    _refuses(NotFoundError, "does not exist", calibrate, tmp_path / "gone", f"folder:{data}")


def test_calibrate_never_replaces_its_outputs_unless_asked(model_dir, data, tmp_path, monkeypatch):
    import sanet.models.registry

    folder, out = _copy(model_dir, tmp_path), tmp_path / "out"
    out.mkdir()
    (out / "reliability.png").write_text("the user's file")
    monkeypatch.setattr(sanet.models.registry, "load_model", lambda *a: 1 / 0)  # never reached
    needle = "overwrite=True to replace it"
    _refuses(OutputExistsError, needle, calibrate, folder, f"folder:{data}", out=out)
    assert (out / "reliability.png").read_text() == "the user's file"
    monkeypatch.undo()
    calibrate(folder, f"folder:{data}", out=out, overwrite=True, limit=1)
    assert (out / "reliability.png").read_bytes().startswith(b"\x89PNG")


AUDIT_REFUSALS = {
    "both": ({"checkpoint": "CKPT", "recipe": "demo"}, "not both or neither"),
    "neither": ({}, "either checkpoint (score with a trained model) or a recipe with folds"),
    "recipe-without-folds": ({"recipe": "demo"}, "needs folds, the number of folds (e.g. folds=5)"),
    "one-fold": ({"recipe": "demo", "folds": 1}, "folds must be at least 2"),
    "folds-with-checkpoint": ({"checkpoint": "CKPT", "folds": 2}, "folds and overrides go with"),
    "protocol-with-recipe": (
        {"recipe": "demo", "folds": 2, "protocol": "paper"},
        "protocol goes with checkpoint",
    ),
    "confidence-above-1": ({"checkpoint": "CKPT", "confidence": 1.5}, "confidence must lie"),
    "min-region-1": ({"checkpoint": "CKPT", "min_region": 1.0}, "min_region must lie in [0, 1)"),
    "negative-top": ({"checkpoint": "CKPT", "top": -1}, "top must be 0 or more"),
}


@pytest.mark.parametrize("case", AUDIT_REFUSALS)
def test_audit_labels_refuses_bad_combinations_in_library_words(case, model_dir, data, tmp_path):
    kwargs, needle = AUDIT_REFUSALS[case]
    if kwargs.get("checkpoint") == "CKPT":
        kwargs = {**kwargs, "checkpoint": model_dir}
    out = tmp_path / "audit"
    _refuses(UsageError, needle, audit_labels, f"folder:{data}", out=out, **kwargs)
    assert not out.exists()


def test_audit_and_rank_never_replace_their_outputs_unless_asked(model_dir, data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("label_audit.json", "r.csv"):
        (out / name).write_text("the user's file")
    spec, images = f"folder:{data}", data / "images/val"
    needle = "overwrite=True to replace it"
    _refuses(OutputExistsError, needle, audit_labels, spec, checkpoint=model_dir, out=out)
    _refuses(OutputExistsError, needle, rank, model_dir, images, out=out / "r.csv")
    assert all((out / n).read_text() == "the user's file" for n in ("label_audit.json", "r.csv"))
    assert rank(model_dir, images, out=out / "r.csv", overwrite=True).rows


def test_unsure_pixels_without_a_threshold_name_the_python_call(model_dir):
    from sanet.errors import flag_names

    predictor = Predictor(model_dir)
    image = np.zeros((20, 24, 3), np.uint8)
    message = _refuses(UsageError, "no risk threshold", predictor.predict, image, unsure=True)
    assert "sanet.calibrate(run, data, risk=0.05)" in message and "calibrated=True" in message
    flags = {"checkpoint": "--checkpoint", "data": "--data", "risk": "--risk"}
    with flag_names(flags), pytest.raises(UsageError) as caught:  # what the command line says
        predictor.predict(image, unsure=True)
    assert "`sanet calibrate --checkpoint RUN --data KIND:ROOT --risk 0.05`" in str(caught.value)
