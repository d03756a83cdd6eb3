"""The label audit and the annotation ranking (docs/trust.md): regions and their kinds by hand,
planted label errors of the five kinds drawn as named and found near the top, a model too weak
to audit with refused, k-fold splits that keep every image
out of its own model's training, and ``sanet audit-labels --folds`` end to end (slow).

References: masks and regions drawn by hand; the answer key of planted errors; index
arithmetic for folds.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from _trust_scenes import NAMES, ColourModel, scenes
from sanet.data.planted import PLANTED_KINDS, plant_error
from sanet.data.splits import kfold_indices
from sanet.inference import EvalProtocol
from sanet.trust.audit import (
    AuditSettings,
    audit_split,
    label_regions,
    planted_recall,
    sort_report,
)

# tiny tensors: on a shared 2-core machine thread wake-ups cost ten times the work
pytestmark = pytest.mark.usefixtures("one_thread")


def test_regions_kinds_sizes_and_evidence_by_hand():
    label = np.zeros((20, 30), np.int64)
    label[2:8, 2:8] = 1  # an object the model calls background: a spurious region
    label[12:18, 20:28] = 255  # ignored: never evidence
    pred = np.zeros((20, 30), np.int64)
    pred[10:15, 10:16] = 2  # 30 px the label calls background: a missing object
    pred[0, 29] = 3  # a lone pixel: below the least region
    pred[12:18, 20:28] = 3
    conf = np.full((20, 30), 0.95)
    p_label = np.full((20, 30), 0.05)
    p_label[10, 10:16] = 0.5  # the label is plausible there: the region shrinks to 24 px
    regions, kept = label_regions(pred, conf, p_label, label, NAMES, AuditSettings(0.9, 0.0))
    assert [(r["kind"], r["label"], r["predicted"], r["pixels"]) for r in regions] == [
        ("spurious region", "red", "background", 36),
        ("missing object", "background", "green", 24),
    ]
    assert regions[0]["box"] == [2, 2, 8, 8] and regions[1]["box"] == [10, 11, 16, 15]
    assert regions[0]["evidence"] == pytest.approx(36 * 0.9)
    assert kept.sum() == 60
    # red labelled, blue predicted: a wrong class; the same with no background class: all are
    no_background = ["sky", "red", "green", "blue"]
    regions, _ = label_regions(pred, conf, p_label, label, no_background, AuditSettings(0.9, 0.0))
    assert {r["kind"] for r in regions} == {"wrong class"}
    regions, _ = label_regions(
        np.where(label == 1, 3, 0), conf, p_label, label, NAMES, AuditSettings()
    )
    assert [(r["kind"], r["label"], r["predicted"]) for r in regions] == [
        ("wrong class", "red", "blue")
    ]


def test_each_planted_kind_changes_the_mask_as_named():
    rng = np.random.default_rng(0)
    mask = np.zeros((40, 40), np.uint8)
    mask[5:20, 5:20] = 2
    mask[25:33, 25:35] = 3
    mask[36:38, 36:38] = 1  # too small to be mislabelled (< 2 % of the image)
    gone = plant_error(mask, "missing object", rng, 4)
    assert (gone[5:20, 5:20] == 0).all() and (gone[25:33, 25:35] == 3).all()
    assert (gone[36:38, 36:38] == 1).all()
    other = plant_error(mask, "wrong class", rng, 4)  # outlined anew: 255 on its 1-px rim
    assert (other[5, 5:20] == 255).all()
    assert len(np.unique(other[6:19, 6:19])) == 1 and other[6, 6] not in (0, 2)
    phantom = plant_error(mask, "spurious region", rng, 4)
    changed = phantom != mask
    assert changed.sum() > 0.05 * mask.size and (mask[changed] == 0).all()
    assert set(np.unique(phantom[changed])) <= {1, 2, 3, 255}
    swapped = plant_error(mask, "swapped classes", rng, 4)
    assert (swapped[6:19, 6:19] == 3).all() and (swapped[26:32, 26:34] == 2).all()
    assert (swapped[36:38, 36:38] == 1).all() and set(np.unique(swapped[mask == 0])) <= {0, 255}
    # a shift of max(3, 6 % of 40) = 3 px: the square keeps its size (13² inside its rim) and
    # class, moved by 2 or 3 px along its larger axis
    moved = plant_error(mask, "shifted boundary", rng, 4)
    ys, xs = np.nonzero(moved == 2)
    assert len(ys) == 13 * 13 and np.ptp(ys) == np.ptp(xs) == 12
    assert max(abs(ys.min() - 6), abs(xs.min() - 6)) in (2, 3)
    assert (moved[mask == 3] == 3).all()  # the other object is not painted over
    assert plant_error(np.zeros((40, 40), np.uint8), "wrong class", rng, 4) is None
    assert plant_error(np.where(mask == 3, 0, mask), "swapped classes", rng, 4) is None


def test_planted_masks_keep_the_ignore_band_across_every_label_change():
    """Like the generators' masks, a planted one has 255 where two labels meet (2 px)."""
    from sanet.data.classes import ignore_borders

    rng = np.random.default_rng(3)
    mask = np.zeros((40, 40), np.uint8)
    mask[8:24, 8:24] = 2
    banded = ignore_borders(mask)
    for kind in PLANTED_KINDS:
        wrong = plant_error(banded, kind, rng, 4)
        if wrong is None:
            continue
        labelled = np.where(wrong == 255, 0, wrong)
        # no two different labels touch: every label change crosses 255
        assert not (
            (labelled[:, 1:] != labelled[:, :-1]) & (wrong[:, 1:] != 255) & (wrong[:, :-1] != 255)
        ).any(), kind


def _planted_scenes(seed: int, n: int, planted: int):
    """Colour scenes whose masks lie in ``planted`` images (three kinds in turn)."""
    rng = np.random.default_rng(seed + 99)
    data, key = scenes(seed, n, size=48), {}
    for i in rng.permutation(n):
        if len(key) == planted:
            break
        kind = ("missing object", "wrong class", "spurious region")[len(key) % 3]
        wrong = plant_error(data[i][1].numpy().astype(np.uint8), kind, rng, len(NAMES))
        if wrong is not None:
            data[i] = (data[i][0], torch.from_numpy(wrong).long())
            key[int(i)] = kind
    return data, key


@pytest.mark.parametrize("seed", [0, 1])
def test_planted_label_errors_rank_near_the_top(seed):
    data, key = _planted_scenes(seed, n=60, planted=12)
    entries, suspects, _ = audit_split(
        ColourModel(scale=3.0), data, NAMES, EvalProtocol(), temperature=2.0, keep=4
    )
    ranked = [e["index"] for e in sort_report(entries)]
    found = planted_recall([str(i) for i in ranked], [str(i) for i in key])
    assert found["top"] == 24 and found["recall"] >= 0.8, found
    # the top region of a found image names the planted kind
    by_index = {e["index"]: e for e in entries}
    kinds = [by_index[i]["regions"][0]["kind"] == key[i] for i in ranked[:24] if i in key]
    assert np.mean(kinds) >= 0.8
    assert [s.index for s in suspects] == ranked[:4]
    assert all(s.disagreement.shape == (48, 48) for s in suspects)


def test_folds_partition_the_images_and_hold_each_out_once():
    held = [kfold_indices(23, 4, f, seed=3)[1] for f in range(4)]
    assert sorted(i for h in held for i in h) == list(range(23))
    assert sorted(len(h) for h in held) == [5, 6, 6, 6]
    for f in range(4):
        rest, mine = kfold_indices(23, 4, f, seed=3)
        assert set(rest) | set(mine) == set(range(23)) and not set(rest) & set(mine)
    with pytest.raises(ValueError, match="3 images cannot be split into 4 folds"):
        kfold_indices(3, 4, 0)


def test_a_fold_config_trains_on_the_other_folds_and_validates_on_its_own():
    from sanet.experiments.folds import fold_config
    from sanet.training.loaders import build_data

    cfg = fold_config(
        "src/sanet/configs/demo_scratch.yaml",
        3,
        1,
        "synthetic",
        "train",
        ["data.options={num_images: 10, size: 40}"],
    )
    assert (cfg.data.folds, cfg.data.fold, cfg.data.train_split) == (3, 1, "train")
    train, val = build_data(cfg)
    names = [train.files(i)[0] for i in range(len(train))]
    held = [val.files(i)[0] for i in range(len(val))]
    assert len(names) + len(held) == 10 and not set(names) & set(held)
    assert held == [
        f"synthetic:scenes:seed=0:split=train:index={i}" for i in kfold_indices(10, 3, 1)[1]
    ]
    image, mask = val[0]
    assert image.shape == (3, 40, 40) and mask.shape == (40, 40)


@pytest.mark.slow
def test_kfold_audit_scores_every_image_out_of_fold_and_reuses_finished_runs(tmp_path, monkeypatch):
    from sanet.cli import main
    from sanet.config import load_config
    from sanet.data.planted import write_planted_folder
    from sanet.training.loaders import build_data
    from sanet.training.trainer import Trainer

    root, out = tmp_path / "data", tmp_path / "audit"
    write_planted_folder(root, num_images=12, share=0.25, size=48, split="train")
    small = ["model.backbone=resnet10t", "train.max_steps=2", "train.batch_size=4"]
    small += ["data.base_size=48", "data.crop_size=48", "eval.crop_size=48", "eval.stride=32"]
    argv = ["audit-labels", "demo_scratch", "--folds", "2", "--data", f"folder:{root}"]
    argv += ["--out", str(out), "--top", "3", "--min-miou", "0", "--set", *small]
    assert main(argv) == 0
    report = json.loads((out / "label_audit.json").read_text())
    assert sorted(e["index"] for e in report["images"]) == list(range(12))
    for fold in (0, 1):
        scored = {e["image"] for e in report["images"] if e["fold"] == fold}
        cfg = load_config(out / "runs" / f"fold{fold}" / "config.yaml")
        assert (cfg.data.folds, cfg.data.fold, cfg.data.dataset) == (2, fold, "folder")
        train, _ = build_data(cfg)
        trained_on = {train.files(i)[0] for i in range(len(train))}
        assert len(scored) == 6 and not scored & trained_on  # out of fold
        assert len(trained_on) == 6
    assert (out / "suspects.png").is_file()

    def no_training(self):
        raise AssertionError("a finished fold was trained again")

    monkeypatch.setattr(Trainer, "fit", no_training)
    assert main(argv) == 2  # the report is never replaced silently (r65)
    assert main([*argv, "--overwrite"]) == 0  # the runs are reused, the audit is the same
    again = json.loads((out / "label_audit.json").read_text())
    assert [e["score"] for e in again["images"]] == [e["score"] for e in report["images"]]
    # from Python: the same runs, the same report
    from sanet.api.audit import audit_labels

    spec, recipe = f"folder:{root}", "demo_scratch"
    result = audit_labels(
        spec, recipe=recipe, folds=2, out=out, top=3, overrides=small, overwrite=True, min_miou=0
    )
    assert result.audit == report == json.loads(result.report.read_text())


@pytest.mark.slow
def test_a_checkpoint_audits_its_own_training_split_out_of_fold(tmp_path):
    """The split a run trained on is scored by fold models of its recipe, never by the run."""
    from sanet.api.audit import audit_labels
    from sanet.cli import main
    from sanet.config import load_config
    from sanet.data.planted import write_planted_folder
    from sanet.experiments.folds import AUTO_FOLDS
    from sanet.training.loaders import build_data

    root, run = tmp_path / "data", tmp_path / "run"
    write_planted_folder(root, num_images=10, share=0.3, size=32, split="train")
    small = ["model.backbone=resnet10t", "train.max_steps=1", "train.batch_size=2"]
    small += ["data.base_size=32", "data.crop_size=32", "eval.crop_size=32", "eval.stride=32"]
    small += ["data.dataset=folder", f"data.root={root}", "data.options={}", "data.val_split=train"]
    assert main(["train", "demo_scratch", "--out", str(run), "--set", *small]) == 0
    found = audit_labels(
        f"folder:{root}", checkpoint=run, split="train", out=tmp_path / "a", min_miou=0
    )
    assert found.audit["folds"] == AUTO_FOLDS and found.audit["checkpoint"] == str(run)
    assert sorted(e["index"] for e in found.images) == list(range(10))
    for fold in range(AUTO_FOLDS):
        cfg = load_config(tmp_path / "a" / "runs" / f"fold{fold}" / "config.yaml")
        train, _ = build_data(cfg)
        trained_on = {train.files(i)[0] for i in range(len(train))}
        scored = {e["image"] for e in found.images if e["fold"] == fold}
        assert len(scored) == 2 and not scored & trained_on


def _square(y: int, x: int, side: int = 12, size: int = 48) -> np.ndarray:
    out = np.zeros((size, size), np.int64)
    out[y : y + side, x : x + side] = 2
    return out


def test_a_shifted_outline_is_found_with_its_offset_by_hand():
    """The model sees a 12×12 square 4 px left of its label: moving the label 4 px left covers
    48 px the model confidently calls the object and leaves 48 it calls background."""
    from sanet.trust.audit import object_shifts

    pred, conf = _square(18, 16), np.full((48, 48), 0.95)
    label = _square(18, 20)
    (found,) = object_shifts(pred, conf, label, NAMES, AuditSettings())
    assert (found["kind"], found["label"], found["pixels"]) == ("shifted boundary", "green", 144)
    assert found["offset"] == [-4, 0] and found["box"] == [20, 18, 32, 30]
    assert found["explained"] == 96 and found["evidence"] == pytest.approx(96 * 0.95)
    # where the label is right, or the model calls the object another class, nothing is shifted
    assert object_shifts(pred, conf, pred, NAMES, AuditSettings()) == []
    assert object_shifts(np.where(label == 2, 3, 0), conf, label, NAMES, AuditSettings()) == []
    # a shift is told by the background it leaves and covers: none without a background class
    assert object_shifts(pred, conf, label, ["sky", "red", "green", "blue"], AuditSettings()) == []


def test_a_shifted_boundary_outranks_a_clean_image_with_a_larger_model_mistake():
    """Constructed probabilities (no model): a clean image whose model is confidently wrong on
    60 px, and an image whose square is labelled 4 px off (two strips of 48 px). Region by region
    the clean image comes first; with the shift that explains both strips, the shifted one."""
    from sanet.trust.audit import score_image

    conf = np.full((48, 48), 0.95)
    clean_pred = _square(18, 16)
    clean_pred[2:8, 2:12] = 1  # the model's own mistake: 60 px of "red" on the background
    clean_label = _square(18, 16)
    shifted_pred, shifted_label = _square(18, 16), _square(18, 20)
    scored = {}
    for name, pred, label in (
        ("clean", clean_pred, clean_label),
        ("shifted", shifted_pred, shifted_label),
    ):
        p_label = np.where(pred == label, conf, 1 - conf)
        scored[name], _ = score_image(pred, conf, p_label, label, NAMES, AuditSettings())
    clean, shifted = scored["clean"], scored["shifted"]
    assert clean["region_score"] == pytest.approx(60 * 0.9 / 48**2)
    assert shifted["region_score"] == pytest.approx(48 * 0.9 / 48**2)
    assert shifted["region_score"] < clean["region_score"]
    assert clean["shifts"] == [] and shifted["shifts"][0]["offset"] == [-4, 0]
    assert shifted["score"] > clean["score"] == clean["region_score"]


def test_the_printed_line_names_what_scored_the_image():
    from sanet.api.reports import suspicion

    region = {"kind": "missing object", "label": "background", "predicted": "green", "pixels": 48}
    shift = {"label": "green", "offset": [-4, 0], "explained": 96}
    entry = {"regions": [region], "shifts": [shift], "region_score": 0.02, "shift_score": 0.06}
    assert suspicion(entry) == (
        "shifted boundary: green fits the model -4, +0 px away (96 px explained)"
    )
    assert suspicion(entry | {"shift_score": 0.01}) == "missing object: background → green, 48 px"
    assert suspicion({"regions": [], "shifts": [], "region_score": 0.0, "shift_score": 0.0}) == ""
