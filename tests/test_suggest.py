"""``sanet.suggest`` / ``sanet suggest`` (docs/active-learning.md): the picking against a
k-center greedy worked out by hand, the features against the model's own submodules, the
scores against numpy on ``Predictor.predict_proba``, the CSV read back with ``csv``, and every
bad input (unreadable files, a budget past the pool, the run's training images in the pool, an
existing ``out``, exact copies in the pool).
"""

from __future__ import annotations

import csv
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from _trust_scenes import save_sharp_model, write_folder_dataset
from sanet.api.suggest import SUGGEST_FIELDS, suggest
from sanet.cli import main
from sanet.errors import NotFoundError, OutputExistsError, UsageError
from sanet.inference import Predictor
from sanet.trust.suggest import (
    FeatureTap,
    classifier_layer,
    duplicate_radius,
    image_scores,
    pick,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_sharp_model(tmp_path_factory.mktemp("ckpt") / "model")


@pytest.fixture
def pool(tmp_path) -> Path:
    """Six random images ``a``..``f`` (the ``val`` split of a folder dataset)."""
    return _folder(tmp_path / "data", "abcdef") / "images" / "val"


def _folder(root: Path, stems: str = "abcd") -> Path:
    root.mkdir(parents=True)
    return write_folder_dataset(root, stems)


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------- picking, by hand


#: five points of the plane and their uncertainties; the k-center greedy worked out by hand:
#: 1 first (largest uncertainty 0.9); distances to 1: p0 1, p2 √5, p3 2, p4 0.1 → gains
#: 0.5, 0.4·√5 = 0.894, 0.4, 0.08 → 2 (nearest 1); p2 brings p0 to min(1, 2) = 1, p3 to
#: min(2, √13) = 2, p4 stays 0.1 → gains 0.5, 0.4, 0.08 → 0 (nearest 1); then p3 (2 from 1;
#: 3 from 0) → 0.4 → 3 (nearest 1); last p4 (0.1 from 1) → 0.08 (nearest 1).
POINTS = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [1.0, 0.1]])
UNCERTAIN = np.array([0.5, 0.9, 0.4, 0.2, 0.8])


def test_picks_follow_the_k_center_greedy_worked_out_by_hand():
    picks, duplicates = pick(POINTS, UNCERTAIN, budget=5)
    assert [p.index for p in picks] == [1, 2, 0, 3, 4]
    assert [p.nearest for p in picks] == [None, 1, 1, 1, 1]
    assert picks[0].distance is None and picks[0].gain == pytest.approx(0.9)
    assert [p.distance for p in picks[1:]] == pytest.approx([math.sqrt(5), 1.0, 2.0, 0.1])
    assert [p.gain for p in picks[1:]] == pytest.approx([0.4 * math.sqrt(5), 0.5, 0.4, 0.08])
    assert duplicates == {}
    assert "most uncertain" in picks[0].reason and "pick 1" in picks[1].reason


def test_a_near_duplicate_of_a_pick_is_left_out_even_with_budget_to_spare():
    picks, duplicates = pick(POINTS, UNCERTAIN, budget=5, radius=0.15)
    assert [p.index for p in picks] == [1, 2, 0, 3]  # p4 lies 0.1 from p1
    assert duplicates == {4: 1}


def test_a_budget_stops_the_picking_and_certain_images_still_spread():
    picks, _ = pick(POINTS, np.zeros(5), budget=2)
    # all equally (un)certain: the first of the ties, then the farthest from it (pure k-center)
    assert [p.index for p in picks] == [0, 3]


def test_the_duplicate_radius_is_a_share_of_the_median_distance():
    points = np.array([[0.0], [1.0], [3.0]])  # distances 1, 3, 2: median 2
    assert duplicate_radius(points, 0.05) == pytest.approx(0.1)
    assert duplicate_radius(points, 0.0) == 0.0
    with pytest.raises(UsageError, match="duplicate"):
        duplicate_radius(points, -1.0)


# ------------------------------------------------------------------- features and scores


@pytest.mark.parametrize("name", ["fcn", "sanet"])
def test_the_features_are_the_pooled_input_of_the_classifier(name):
    import sanet

    model = sanet.build_model(name, backbone="resnet10t", num_classes=3).eval()
    layer = classifier_layer(model)
    assert layer is (model.head.block[-1] if name == "fcn" else model.head.mask)
    x = torch.rand(2, 3, 40, 48)
    with torch.no_grad(), FeatureTap(layer) as tap:
        model(x)
        feats = model.backbone(x)
        inner = model.head.block[:-1](feats[-1]) if name == "fcn" else model.head.fused(feats)
    expected = inner.mean(dim=(2, 3)).mean(0).double().numpy()
    np.testing.assert_allclose(tap.mean(), expected, rtol=1e-5, atol=1e-6)


def test_the_scores_are_the_calibrated_entropy_and_unsure_share_in_numpy(model_dir, tmp_path):
    from sanet.api.calibration import calibrate

    data = _folder(tmp_path / "cal")
    shutil.copytree(model_dir, tmp_path / "m")
    calibrate(tmp_path / "m", f"folder:{data}", risk=0.4)
    predictor = Predictor(tmp_path / "m")
    image = data / "images" / "val" / "a.png"
    s = image_scores(predictor, image, classifier_layer(predictor.model))
    p = predictor.predict_proba(image).astype(np.float64)
    h = -(p * np.log(np.maximum(p, 1e-12))).sum(0) / math.log(3)
    unsure = p.max(0) < predictor.calibration.threshold  # no per-class thresholds here
    assert s.mean_entropy == pytest.approx(h.mean(), abs=1e-5)
    assert s.unsure_share == pytest.approx(unsure.mean(), abs=1e-6)
    assert s.uncertainty == pytest.approx((h.mean() + unsure.mean()) / 2, abs=1e-5)
    assert np.linalg.norm(s.features) == pytest.approx(1.0)


# ------------------------------------------------------------------------- the verb and CSV


def test_exact_copies_are_never_picked_together(model_dir, pool, tmp_path):
    for stem in "ab":
        shutil.copy(pool / f"{stem}.png", pool / f"{stem}_copy.png")
    shutil.copy(pool / "a.png", pool / "a_copy2.png")
    result = suggest(model_dir, pool, 9, out=tmp_path / "next.csv", duplicate=0.0)
    picked = [Path(r["image"]).name.split("_")[0].removesuffix(".png") for r in result.rows]
    assert sorted(picked) == list("abcdef")  # one of each original, never two copies
    assert len(result.duplicates) == 3 and len(result.rows) == 6
    for left_out, kept in result.duplicates.items():
        assert Path(left_out).read_bytes() == Path(kept).read_bytes()


def test_the_csv_holds_the_columns_and_the_rows(model_dir, pool, tmp_path):
    result = suggest(model_dir, pool, 3, out=tmp_path / "next.csv")
    lines = _read(tmp_path / "next.csv")
    assert tuple(lines[0]) == SUGGEST_FIELDS
    assert [int(r["rank"]) for r in lines] == [1, 2, 3]
    for row, line in zip(result.rows, lines, strict=True):
        assert line["image"] == row["image"] and Path(line["image"]).parent == pool.resolve()
        assert float(line["uncertainty"]) == pytest.approx(row["uncertainty"], abs=1e-6)
        assert line["unsure_share"] == ""  # no risk threshold
        assert line["reason"]
    assert lines[0]["distance"] == lines[0]["nearest"] == ""
    assert lines[1]["nearest"] == lines[0]["image"]
    assert float(lines[1]["score"]) == pytest.approx(
        float(lines[1]["uncertainty"]) * float(lines[1]["distance"]), abs=2e-6
    )


def test_the_cli_writes_the_same_picks(model_dir, pool, tmp_path):
    argv = ["suggest", "--checkpoint", str(model_dir), "--pool", str(pool)]
    assert main([*argv, "--budget", "2", "--out", str(tmp_path / "c.csv")]) == 0
    result = suggest(model_dir, pool, 2, out=tmp_path / "p.csv")
    assert [r["image"] for r in _read(tmp_path / "c.csv")] == [r["image"] for r in result.rows]
    assert main([*argv, "--budget", "0", "--out", str(tmp_path / "z.csv")]) == 2


# ------------------------------------------------------------------------------ bad input


@pytest.mark.reliability("r77")
def test_r77_unreadable_pool_files_are_skipped_and_listed(model_dir, pool, tmp_path, capsys):
    (pool / "broken.png").write_bytes(b"not an image")
    (pool / "empty.png").write_bytes(b"")
    good = (pool / "a.png").read_bytes()
    (pool / "truncated.png").write_bytes(good[: len(good) // 2])
    result = suggest(model_dir, pool, 10, out=tmp_path / "next.csv")
    assert sorted(Path(f.split(":")[0]).name for f in result.failed) == [
        "broken.png",
        "empty.png",
        "truncated.png",
    ]
    assert all(f.split(": ", 1)[1] for f in result.failed)  # each with its reason
    assert sorted(Path(r["image"]).name for r in result.rows) == [f"{s}.png" for s in "abcdef"]
    argv = ["suggest", "--checkpoint", str(model_dir), "--pool", str(pool), "--budget", "2"]
    assert main([*argv, "--out", str(tmp_path / "c.csv")]) == 1  # the CSV written, then exit 1
    err = capsys.readouterr().err
    assert "3 of 9 inputs failed" in err and "broken.png" in err and "truncated.png" in err
    assert len(_read(tmp_path / "c.csv")) == 2


@pytest.mark.reliability("r78")
def test_r78_a_budget_past_the_pool_picks_every_image_and_says_so(
    model_dir, pool, tmp_path, caplog, capsys
):
    with caplog.at_level(logging.WARNING):
        result = suggest(model_dir, pool, 50, out=tmp_path / "next.csv")
    assert len(result.rows) == 6 and result.budget == 50
    assert "larger than the 6 pool images" in caplog.text
    argv = ["suggest", "--checkpoint", str(model_dir), "--pool", str(pool), "--budget", "50"]
    assert main([*argv, "--out", str(tmp_path / "c.csv")]) == 0
    assert "6 of 50 images to label" in capsys.readouterr().out
    assert len(_read(tmp_path / "c.csv")) == 6


@pytest.mark.parametrize("budget", [0, -2, 1.5, True])
def test_a_budget_that_is_not_a_positive_count_is_refused(model_dir, pool, tmp_path, budget):
    with pytest.raises(UsageError, match="budget"):
        suggest(model_dir, pool, budget, out=tmp_path / "next.csv")
    assert not (tmp_path / "next.csv").exists()


def test_an_existing_out_is_refused_unless_overwrite(model_dir, pool, tmp_path):
    out = tmp_path / "next.csv"
    out.write_text("mine\n")
    with pytest.raises(OutputExistsError, match="overwrite"):
        suggest(model_dir, pool, 2, out=out)
    assert out.read_text() == "mine\n"
    assert len(suggest(model_dir, pool, 2, out=out, overwrite=True).rows) == 2


def test_excluded_images_match_by_path_name_or_stem(model_dir, pool, tmp_path):
    listing = tmp_path / "labelled.txt"
    listing.write_text(f"# labelled so far\n{pool / 'a.png'}\nb.png\nc\n\n")
    result = suggest(model_dir, pool, 10, out=tmp_path / "next.csv", exclude=listing)
    assert sorted(Path(p).name for p in result.excluded) == ["a.png", "b.png", "c.png"]
    assert sorted(Path(r["image"]).name for r in result.rows) == ["d.png", "e.png", "f.png"]


@pytest.mark.reliability("r89")
@pytest.mark.parametrize("listing", ["missing.txt", "a folder"])
def test_r89_an_exclude_list_that_is_not_a_file_is_refused(
    model_dir, pool, tmp_path, capsys, listing
):
    """Refused in one line naming the option, the file and the fix, before the model is read;
    nothing written."""
    path = tmp_path / listing
    if listing == "a folder":
        path.mkdir()
    out = tmp_path / "next.csv"
    with pytest.raises(NotFoundError, match="exclude") as err:
        suggest(tmp_path / "no-model", pool, 2, out=out, exclude=path)  # not read: refused first
    assert str(path) in str(err.value) and "Fix:" in str(err.value)
    argv = ["suggest", "--checkpoint", str(model_dir), "--pool", str(pool), "--budget", "2"]
    assert main([*argv, "--out", str(out), "--exclude", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--exclude" in lines[0] and listing in lines[0]
    assert not out.exists()


@pytest.mark.reliability("r79")
def test_r79_the_runs_training_images_are_left_out_with_a_warning(
    model_dir, pool, tmp_path, caplog, capsys
):
    """A run (config.yaml + model/) that trained on ``a`` and ``b``: ``a`` in the pool as the
    same file, ``b`` as a copy of its bytes under another name."""
    train = _folder(tmp_path / "train", "")
    for sub in ("images/train", "masks/train"):
        (train / sub).mkdir(parents=True)
    for stem in "ab":
        shutil.copy(pool / f"{stem}.png", train / "images" / "train" / f"{stem}.png")
        shutil.copy(pool / f"{stem}.png", train / "masks" / "train" / f"{stem}.png")
    run = tmp_path / "run"
    shutil.copytree(model_dir, run / "model")
    (run / "config.yaml").write_text(
        f"data:\n  dataset: folder\n  root: {train}\n  train_split: train\n  options: {{}}\n"
    )
    shutil.copy(pool / "b.png", pool / "b_renamed.png")
    pool_files = [train / "images" / "train" / "a.png", *sorted(pool.glob("*.png"))]
    with caplog.at_level(logging.WARNING):
        result = suggest(run, pool_files, 20, out=tmp_path / "next.csv")
    names = sorted(Path(p).name for p in result.overlap)
    assert names == ["a.png", "a.png", "b.png", "b_renamed.png"]
    assert "training set" in caplog.text
    assert sorted(Path(r["image"]).name for r in result.rows) == [f"{s}.png" for s in "cdef"]
    argv = ["suggest", "--checkpoint", str(run), "--budget", "20", "--pool"]
    assert main([*argv, *map(str, pool_files), "--out", str(tmp_path / "c.csv")]) == 0
    assert "left out 4 pool images in the run's training set" in capsys.readouterr().err
    assert len(_read(tmp_path / "c.csv")) == 4


def test_a_model_without_a_classifier_to_hook_uses_its_mean_probabilities(model_dir, pool):
    """(An ``.onnx`` model): the features are the mean class probabilities, at unit length."""
    from _trust_scenes import ColourModel

    assert classifier_layer(ColourModel()) is None
    predictor = Predictor(model_dir)
    s = image_scores(predictor, pool / "a.png", None)
    mean = predictor.predict_proba(pool / "a.png").astype(np.float64).mean(axis=(1, 2))
    np.testing.assert_allclose(s.features, mean / np.linalg.norm(mean), rtol=1e-5)


@pytest.mark.reliability("r96")
def test_r96_a_pool_that_is_all_labelled_already_is_refused(model_dir, pool, tmp_path, capsys):
    """Every pool image listed in ``exclude``: one line saying so, not an empty CSV that reads
    as "nothing worth labelling"."""
    listing = tmp_path / "labelled.txt"
    listing.write_text("\n".join(p.name for p in sorted(pool.glob("*.png"))) + "\n")
    out = tmp_path / "next.csv"
    argv = ["suggest", "--checkpoint", str(model_dir), "--pool", str(pool), "--budget", "2"]
    assert main([*argv, "--out", str(out), "--exclude", str(listing)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "Nothing to suggest" in lines[0] and "--exclude" in lines[0]
    assert "--pool" in lines[0] and not out.exists()
