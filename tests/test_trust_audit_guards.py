"""``audit-labels`` protects the user from a silent or misleading audit (docs/reliability.md
r70–r72): 0/255 masks are refused with the fix and read through the run's ``label_map`` (or
``--data-options``); a model too weak to audit with is measured and refused; a checkpoint
asked to audit the split it trained on is audited out of fold.

References: pixel counts and the confusion matrix of a constant prediction in numpy; the files
written (or not) on disk.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from _trust_scenes import FOLDER_NAMES, save_sharp_model, write_folder_dataset
from sanet.cli import main
from sanet.errors import UsageError

pytestmark = pytest.mark.usefixtures("one_thread")


def _binary_folder(root: Path) -> Path:
    """A 2-class ``folder`` dataset, split val: four 40×40 images whose masks are 0/255 (255:
    the bright square)."""
    rng = np.random.default_rng(1)
    root.mkdir()
    (root / "classes.txt").write_text("background\nobject\n")
    for sub in ("images/val", "masks/val"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for k in range(4):
        mask = np.zeros((40, 40), np.uint8)
        y, x = rng.integers(4, 20, 2)
        mask[y : y + 14, x : x + 14] = 255
        image = np.where(mask[..., None] == 255, 220, 40).astype(np.uint8).repeat(3, 2)
        Image.fromarray(image).save(root / "images/val" / f"{k}.png")
        Image.fromarray(mask).save(root / "masks/val" / f"{k}.png")
    return root


def _binary_run(tmp_path: Path, data: Path) -> Path:
    """A run directory (``config.yaml`` + ``model/``) of a 2-class model trained on ``data``'s
    train split read with ``label_map {255: 1}``."""
    import sanet

    run = tmp_path / "run"
    torch.manual_seed(0)
    model = sanet.build_model("fcn", backbone="resnet10t", num_classes=2)
    model.save_pretrained(run / "model", metadata={"class_names": ["background", "object"]})
    section = {"dataset": "folder", "root": str(data), "options": {"label_map": {255: 1}}}
    (run / "config.yaml").write_text(yaml.safe_dump({"data": section}))
    return run


@pytest.mark.reliability("r70")
def test_binary_masks_are_refused_without_a_label_map_and_read_with_the_runs(tmp_path, capsys):
    data = _binary_folder(tmp_path / "data")
    bare = save_sharp_model(tmp_path / "bare")  # saved outside a run: no label_map to find
    out = tmp_path / "audit"
    args = ["audit-labels", "--data", f"folder:{data}", "--out", str(out), "--min-miou", "0"]
    assert main([*args, "--checkpoint", str(bare)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "0/255" in err and "label_map" in err, err
    assert "--data-options" in err  # the fix in the CLI's words
    assert not (out / "label_audit.json").exists()
    # the run's own label_map is used: every pixel is labelled (255 read as class 1)
    run = _binary_run(tmp_path, data)
    assert main([*args, "--checkpoint", str(run)]) == 0
    report = json.loads((out / "label_audit.json").read_text())
    assert report["data_options"] == {"label_map": {"255": 1}}  # JSON keys are text
    assert [e["labelled_pixels"] for e in report["images"]] == [40 * 40] * 4
    assert report["agreement"]["labelled_pixels"] == 4 * 40 * 40
    # --data-options replaces the run's: 255 read as ignore again is refused as before
    assert main([*args, "--checkpoint", str(run), "--overwrite", "--data-options", "{}"]) == 2
    assert "label_map" in capsys.readouterr().err


def _constant_model(folder: Path) -> Path:
    """A 3-class FCN that predicts background everywhere, sure of it (a model that has not
    learnt)."""
    import sanet

    torch.manual_seed(0)
    model = sanet.build_model("fcn", backbone="resnet10t", num_classes=3)
    with torch.no_grad():
        last = model.head.block[2]
        last.weight.zero_()
        last.bias.copy_(torch.tensor([8.0, 0.0, 0.0]))
    model.save_pretrained(folder, metadata={"class_names": FOLDER_NAMES})
    return folder


def _miou_of_background_everywhere(data: Path) -> float:
    """mIoU over classes present (labels or predictions) of predicting 0 on every labelled
    pixel, by hand: background's IoU is its share of the labelled pixels, the others 0."""
    labels = np.concatenate(
        [np.asarray(Image.open(p)).ravel() for p in sorted((data / "masks/val").glob("*.png"))]
    )
    labels = labels[labels != 255]
    present = len(np.unique(labels))
    return float((labels == 0).mean()) / present


@pytest.mark.reliability("r71")
@pytest.mark.parametrize("via", ["cli", "python"])
def test_a_model_too_weak_to_audit_with_is_measured_and_refused(via, tmp_path, capsys):
    import sanet

    (tmp_path / "data").mkdir()
    data = write_folder_dataset(tmp_path / "data")
    model = _constant_model(tmp_path / "model")
    out = tmp_path / "audit"
    expected = _miou_of_background_everywhere(data)
    assert expected < 0.3
    if via == "cli":
        args = ["audit-labels", "--checkpoint", str(model), "--data", f"folder:{data}"]
        assert main([*args, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert f"mIoU {expected:.3f}" in err and "0.30" in err and "--min-miou 0" in err, err
    else:
        with pytest.raises(UsageError, match=f"mIoU {expected:.3f}.*min_miou=0"):
            sanet.audit_labels(f"folder:{data}", checkpoint=model, out=out)
    assert not (out / "label_audit.json").exists() and not (out / "suspects.png").exists()
    # asked to, it audits anyway and records what it measured
    result = sanet.audit_labels(f"folder:{data}", checkpoint=model, out=out, min_miou=0)
    assert result.audit["agreement"]["mIoU"] == pytest.approx(expected, abs=1e-6)
    assert result.audit["settings"]["min_miou"] == 0


@pytest.mark.reliability("r72")
@pytest.mark.parametrize("case", ["own split", "insist elsewhere", "protocol", "decline"])
def test_a_checkpoint_on_its_own_training_split_is_audited_out_of_fold(case, tmp_path, caplog):
    """Which model scores: the run's recipe (out of fold) on the split it trained on, the
    checkpoint elsewhere; what cannot be honoured is refused before anything trains."""
    from sanet.experiments.folds import audit_recipe

    data = _binary_folder(tmp_path / "data")
    run = _binary_run(tmp_path, data)  # its config: folder dataset, train_split "train"
    spec = f"folder:{data}"
    if case == "own split":
        assert audit_recipe(spec, run / "model", "train", None, None, None) == run / "config.yaml"
        assert audit_recipe(spec, run / "model", "val", None, None, None) is None
        assert audit_recipe(f"folder:{tmp_path}", run, "train", None, None, None) is None
    elif case == "insist elsewhere":
        with pytest.raises(UsageError, match=r"out_of_fold=True .* 'val' is not that split"):
            audit_recipe(spec, run, "val", True, None, None)
    elif case == "protocol":
        with pytest.raises(UsageError, match=r"protocol does not apply.*out_of_fold=False"):
            audit_recipe(spec, run, "train", None, "single", None)
    else:
        with caplog.at_level("WARNING"):
            assert audit_recipe(spec, run, "train", False, "single", None) is None
        assert "misses errors an out-of-fold audit finds" in caplog.text
