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
    record = both["result"].record
    # the per-image values stay in calibration.json; everything else is kept as it is
    assert stored["risk"]["per_image"] == {
        k: v for k, v in record["risk"]["per_image"].items() if k != "values"
    }
    assert len(record["risk"]["per_image"]["values"]) == 4
    stored["risk"]["per_image"] = record["risk"]["per_image"]
    assert stored == {k: record[k] for k in STORED_KEYS}
    plain = calibrate(_copy(model_dir, tmp_path), f"folder:{data}", limit=2, fit_images=1)
    kept = json.loads(plain.stored.read_text())["metadata"]["calibration"]
    assert list(kept) == [k for k in STORED_KEYS if k != "risk"]
    assert (
        kept["reference"]["images"] == 2 and kept["reference"]["per_image"]["unsure_share"] is None
    )
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
    "limit-0": ({"limit": 0}, "split 'val' has 4). Give limit of at least 1"),
    "per-image-needs-more-images": (
        {"risk": 0.4, "per_image": 0.1},
        "per_image=0.1 at confidence_level=0.9 needs at least 22 calibration images",
    ),
    "per-image-above-1": ({"risk": 0.4, "per_image": 1.5}, "per_image must lie between 0 and 1"),
    "per-image-0": ({"risk": 0.4, "per_image": 0.0}, "per_image must lie between 0 and 1"),
    "confidence-level-1": (
        {"risk": 0.4, "per_image": 0.5, "confidence_level": 1.0},
        "confidence_level must lie between 0 and 1",
    ),
    "per-image-without-risk": ({"per_image": 0.1}, "give both, e.g. risk=0.1 per_image=0.1"),
    "per-class-without-risk": ({"per_class": True}, "give risk too"),
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


# ------------------------------------------------- the per-image view and the stored reference


def _labelled(data: Path, image: Path) -> np.ndarray:
    return np.asarray(Image.open(data / "masks/val" / image.name), np.int64)


def test_the_reference_and_the_per_image_view_are_what_the_predictor_sees(both):
    result, py, data = both["result"], both["py"], both["data"]
    predictor, risk = Predictor(py), result.record["risk"]
    expected = {"mean_confidence": [], "unsure_share": [], "class_shares": [], "pixels": []}
    losses, names = [], []
    for image in sorted((data / "images/val").glob("*.png")):
        mask, conf = predictor.predict_with_confidence(image)  # what the server computes
        expected["mean_confidence"].append(conf.astype(np.float64).mean())
        expected["unsure_share"].append((conf < risk["threshold"]).mean())
        expected["class_shares"].append(np.bincount(mask.ravel(), minlength=3) / mask.size)
        expected["pixels"].append(mask.size)
        label = _labelled(data, image)
        valid = label != 255
        losses.append(((conf >= risk["threshold"]) & (mask != label) & valid).sum() / valid.sum())
        names.append(str(image))
    reference = result.record["reference"]
    assert reference["images"] == 4 and list(reference["per_image"]) == list(expected)
    for key, values in expected.items():
        assert np.allclose(reference["per_image"][key], values, atol=2e-6), key
    view = risk["per_image"]
    assert np.allclose(view["values"], losses, atol=1e-6)
    assert view["quantiles"]["0.9"] == pytest.approx(np.quantile(losses, 0.9), abs=1e-9)
    assert view["share_above_alpha"] == np.mean(np.array(losses) > 0.4)
    worst = [names[i] for i in np.argsort(losses)[::-1]]
    assert [w["image"] for w in view["worst"]] == worst  # by name, worst first
    stored = json.loads(result.stored.read_text())["metadata"]["calibration"]
    assert stored["reference"] == reference  # what the server's drift detection reads


def test_per_class_thresholds_are_each_at_least_the_global_one_and_applied_by_class(
    model_dir, data, tmp_path
):
    folder = _copy(model_dir, tmp_path)
    result = calibrate(folder, f"folder:{data}", risk=0.4, per_class=True)
    risk = result.record["risk"]
    applied = risk["class_thresholds"]
    assert len(applied) == 3 and [c["class"] for c in risk["per_class"]] == list(
        ["background", "disc", "square"]
    )
    for c, threshold in zip(risk["per_class"], applied, strict=True):
        assert threshold is None or threshold >= risk["threshold"]
        assert threshold == c["threshold"]
        assert (threshold is None) == (c["own_threshold"] is None)
    predictor = Predictor(folder)
    image = sorted((data / "images/val").glob("*.png"))[0]
    mask, conf = predictor.predict_with_confidence(image)
    table = np.array([np.inf if t is None else t for t in applied])
    expected = np.where(conf < table[mask], 255, mask)  # by hand: each pixel its class's threshold
    assert np.array_equal(predictor.predict(image, unsure=True), expected)
    assert np.array_equal(predictor.unsure_pixels(conf), conf < risk["threshold"])  # no mask
    assert "per class" in risk["guarantee"]


def test_per_image_threshold_through_the_cli_is_learn_then_test_by_hand(
    model_dir, data, tmp_path, capsys
):
    """4 images reach δ = 0.5 at level 0.9 ((1 − 0.5)^4 ≤ 0.1); the threshold is the fixed
    sequence from the top, each p-value a binomial tail summed with ``math.comb``."""
    import math

    from sanet.trust.risk import THRESHOLDS

    folder = _copy(model_dir, tmp_path)
    argv = ["calibrate", "--checkpoint", str(folder), "--data", f"folder:{data}", "--risk", "0.05"]
    assert main([*argv, "--per-image", "0.5", "--confidence-level", "0.9"]) == 0
    printed = capsys.readouterr().out
    risk = json.loads((tmp_path / "calibration/calibration.json").read_text())["risk"]
    predictor, curves = Predictor(folder), []
    for image in sorted((data / "images/val").glob("*.png")):
        mask, conf = predictor.predict_with_confidence(image)
        label = _labelled(data, image)
        wrong, valid = (mask != label) & (label != 255), label != 255
        curves.append([(wrong & (conf >= lam)).sum() / valid.sum() for lam in THRESHOLDS])
    exceeding = (np.array(curves) > 0.05).sum(axis=0)
    tail = [sum(math.comb(4, i) * 0.5**4 for i in range(k + 1)) for k in exceeding]
    j = len(THRESHOLDS)
    while j > 0 and tail[j - 1] <= 0.1:
        j -= 1
    assert 0 < j < len(THRESHOLDS), j  # a threshold, and not a vacuous one
    assert risk["mode"] == "per_image" and risk["threshold"] == pytest.approx(THRESHOLDS[j])
    assert risk["exceeding_images"] == exceeding[j] and risk["min_images"] == 4
    assert "with probability ≥ 0.9 over the calibration images, at most a share 0.5" in printed
    assert predictor.unsure_threshold() == risk["threshold"]


# ----------------------------------------------- calibrating again (issue 28: 1 and 9)


def test_calibrating_again_is_refused_naming_the_stored_calibration(model_dir, data, tmp_path):
    folder = _copy(model_dir, tmp_path)
    spec = f"folder:{data}"
    first = calibrate(folder, spec, risk=0.4)
    config = (folder / "config.json").read_bytes()
    quick = tmp_path / "quick"
    message = _refuses(OutputExistsError, "already carries a calibration", calibrate, folder, spec,
                       out=quick)  # fmt: skip
    assert f"T = {first.temperature:.4g}" in message and "risk α = 0.4" in message
    assert "drop its risk threshold" in message and "replace=True" in message
    assert "give out_model a new folder" in message
    assert (folder / "config.json").read_bytes() == config and not quick.exists()
    assert Predictor(folder).unsure_threshold() == first.threshold  # still there


def test_replacing_keeps_the_run_files_and_the_model_in_agreement(model_dir, data, tmp_path):
    from sanet.trust.store import stored_record

    folder = _copy(model_dir, tmp_path)
    spec, home = f"folder:{data}", tmp_path / "calibration"
    calibrate(folder, spec, risk=0.4)
    result = calibrate(folder, spec, out=tmp_path / "quick", replace=True, fit_images=1)
    assert result.mirror == home and result.threshold is None
    stored = json.loads((folder / "config.json").read_text())["metadata"]["calibration"]
    for report in (home / "calibration.json", tmp_path / "quick" / "calibration.json"):
        assert stored_record(json.loads(report.read_text())) == stored
    assert "risk" not in stored and stored["reference"]["per_image"]["unsure_share"] is None


def test_out_model_writes_a_calibrated_copy_and_leaves_the_model_alone(model_dir, data, tmp_path):
    folder = _copy(model_dir, tmp_path)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    copy = tmp_path / "elsewhere" / "calibrated"
    result = calibrate(folder, f"folder:{data}", risk=0.4, out_model=copy)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # untouched
    assert (copy / "model.safetensors").read_bytes() == before["model.safetensors"]
    assert result.stored == copy / "config.json"
    assert result.report == tmp_path / "elsewhere" / "calibration" / "calibration.json"
    assert Predictor(copy).unsure_threshold() == result.threshold
    assert not list(tmp_path.glob("elsewhere/.*"))  # no staging folder left
    _refuses(OutputExistsError, "already exists", calibrate, folder, f"folder:{data}",
             out_model=copy)  # fmt: skip


def test_a_calibrated_copy_carries_its_runs_protocol(model_dir, data, tmp_path):
    """The copy lies outside the run, whose config.yaml held the protocol: it carries the run's
    eval section, so predicting, evaluating and exporting the copy mean what they meant for the
    run, and no "no run config" default is guessed."""
    import yaml

    from sanet.inference.runs import run_config, run_protocol

    run = tmp_path / "run"
    _copy(model_dir, run)
    recipe = {"eval": {"scales": [0.75, 1.0], "flip": True, "crop_size": 40, "stride": 24},
              "data": {"base_size": 40}}  # fmt: skip
    (run / "config.yaml").write_text(yaml.safe_dump(recipe))
    copy = tmp_path / "calibrated"
    calibrate(run, f"folder:{data}", out_model=copy, limit=1)
    assert run_config(copy) == recipe
    assert run_protocol(copy) == run_protocol(run)
    assert run_protocol(copy).scales == (0.75, 1.0) and run_protocol(copy).flip


def test_a_read_only_model_folder_is_refused_offering_a_calibrated_copy(
    model_dir, data, tmp_path, monkeypatch
):
    import errno
    import tempfile

    folder = _copy(model_dir, tmp_path)
    real = tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):  # the probe of sanet._files in the model folder
        if dir is not None and Path(dir) == folder:
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    from sanet.errors import NotWritableError

    message = _refuses(NotWritableError, "is read-only", calibrate, folder, f"folder:{data}",
                       out=tmp_path / "out")  # fmt: skip
    assert "Give out_model a new folder" in message and "calibrated copy" in message
    assert not (tmp_path / "out").exists()
    copy = calibrate(folder, f"folder:{data}", out_model=tmp_path / "copy", limit=1)
    assert copy.stored == tmp_path / "copy" / "config.json"
