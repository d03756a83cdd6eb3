"""The scene family: members reproducible by seed, label conventions, and parameters that do what
they say (colour informativeness, context-dependent pairs that share their local appearance)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from scipy import ndimage

from sanet.cli import main
from sanet.data import build_dataset
from sanet.data.classes import IGNORE_INDEX
from sanet.data.family import draw_member, render
from sanet.data.family_pool import SHAPES, TEXTURES
from sanet.data.glyphs import GLYPH_STYLE
from sanet.data.io import load_image
from sanet.data.prepare import prepare_synthetic
from sanet.data.synthetic import CLASS_STYLE, scene_rng

# members used below, by what they hold (checked in the tests that use them)
WITH_PAIRS = 6  # 6 classes: two context pairs and one plain class
MANY_CLASSES = 13  # 12 classes, three pairs


def test_same_seed_same_member_and_scenes() -> None:
    assert draw_member(7) == draw_member(7)
    assert draw_member(7) != draw_member(8)
    a = build_dataset("synthetic", None, generator="family", family=5, num_images=3, size=40)
    b = build_dataset("synthetic", None, generator="family", family=5, num_images=3, size=40)
    for i in range(3):
        assert np.array_equal(a.read_image(i), b.read_image(i))
        assert np.array_equal(a.read_mask(i), b.read_mask(i))
    other = build_dataset("synthetic", None, generator="family", family=6, num_images=1, size=40)
    val = build_dataset(
        "synthetic", None, "val", generator="family", family=5, num_images=1, size=40
    )
    # another member's image 0 shares nothing with this one's, not even the background
    assert np.abs(a.read_image(0).astype(int) - other.read_image(0)).mean() > 10
    assert not np.array_equal(a.read_image(0), val.read_image(0))
    assert a.files(1) == ("synthetic:family:5:seed=0:split=train:index=1",) * 2


def test_parameters_span_their_ranges() -> None:
    members = [draw_member(s) for s in range(300)]
    assert {m.num_classes for m in members} == set(range(4, 13))
    assert {m.context_pairs for m in members} == {0, 1, 2, 3}
    info = [m.colour_info for m in members]
    assert min(info) < 0.05 and max(info) > 0.95 and all(0 <= c <= 1 for c in info)
    for m in members:
        lo, hi = m.size_range
        assert 0.1 <= lo < hi <= 0.4
        assert m.max_objects >= 1 and min(m.clutter, m.occlusion) >= 0
        assert len(set(m.appearances)) == len(m.appearances)  # one appearance per class group
        assert all(s in SHAPES and t in TEXTURES for s, t in m.appearances)
        names = m.class_names
        assert len(names) == m.num_classes == len(m.palette) and len(set(names)) == len(names)
        # each pair's two classes: one appearance, two names that differ only by the zone
        for j in range(m.context_pairs):
            a, b = m.classes[j]
            assert names[a].endswith("@plain") and names[b].endswith("@grainy")
            assert names[a].split("@")[0] == names[b].split("@")[0]
        p = m.parameters()
        assert p["num_classes"] == m.num_classes and p["context_pairs"] == m.context_pairs
        assert p["context_share"] == pytest.approx(2 * m.context_pairs / (m.num_classes - 1))
    # a larger vocabulary than the fixed generators, and theirs is part of it
    fixed = {*CLASS_STYLE.values(), *GLYPH_STYLE.values()}
    assert len(SHAPES) > 12 and len(TEXTURES) > 6
    assert {s for s, _ in fixed} <= set(SHAPES)


def test_label_conventions_at_an_odd_size() -> None:
    member = draw_member(MANY_CLASSES)
    assert member.num_classes == 12 and member.context_pairs == 3
    seen: set[int] = set()
    for i in range(200):
        image, mask = member.make((45, 61), scene_rng(0, "train", i))
        assert image.shape == (45, 61, 3) and image.dtype == np.uint8
        assert mask.shape == (45, 61) and mask.dtype == np.uint8
        seen |= set(np.unique(mask).tolist())
        # every label change is covered by the ignore band: valid 4-neighbours never differ
        for a, b in ((mask[:, 1:], mask[:, :-1]), (mask[1:], mask[:-1])):
            both = (a != IGNORE_INDEX) & (b != IGNORE_INDEX)
            assert np.array_equal(a[both], b[both])
    assert seen == {*range(12), IGNORE_INDEX}  # ids 0..K-1 and 255, every class occurs


def _object_pixels(member, seed: int, n: int = 40):
    """RGB of every object pixel and the index of its appearance (a pair counts once)."""
    to_look = np.zeros(256, int)
    for j, ids in enumerate(member.classes):
        to_look[list(ids)] = j
    xs, ys = [], []
    for i in range(n):
        image, mask = member.make(64, scene_rng(seed, "train", i))
        keep = (mask >= 1) & (mask < member.num_classes)
        xs.append(image[keep].astype(np.float64))
        ys.append(to_look[mask[keep]])
    return np.concatenate(xs), np.concatenate(ys)


@pytest.mark.parametrize("seed", [1, 4, 13])
def test_colour_informativeness_does_what_it_says(seed: int) -> None:
    """A nearest-mean-colour classifier (fitted on one set of scenes, scored on another) is at
    chance with colour_info 0 and far above it with colour_info 1."""
    accuracy = {}
    for info in (0.0, 1.0):
        member = dataclasses.replace(draw_member(seed), colour_info=info)
        x, y = _object_pixels(member, 0)
        k = len(member.appearances)
        means = np.stack([x[y == j].mean(0) for j in range(k)])
        xt, yt = _object_pixels(member, 1)
        pred = np.argmin(((xt[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
        accuracy[info] = (pred == yt).mean()
        chance = 1 / k
    assert accuracy[0.0] < chance + 0.08
    assert accuracy[1.0] > chance + 0.3


def test_context_pairs_share_local_appearance_and_differ_by_surround() -> None:
    member = dataclasses.replace(draw_member(WITH_PAIRS), colour_info=1.0)
    assert member.context_pairs == 2 and member.num_classes == 6
    (a, b), (c, _), (e,) = member.classes
    inner: dict[int, list] = {a: [], b: [], c: [], e: []}
    ring: dict[int, list] = {a: [], b: []}
    for i in range(150):
        image, label, _ = render(member, 64, np.random.default_rng([WITH_PAIRS, i]))
        grey = image.astype(np.float64).mean(-1)
        grain = np.abs(grey - ndimage.uniform_filter(grey, 3))  # high-frequency energy
        for k in inner:
            core = ndimage.binary_erosion(label == k, iterations=2)
            if core.sum() >= 4:  # mean colour and local contrast inside the object
                inner[k].append([*image[core].mean(0), ndimage.standard_deviation(grey, core)])
        for k in ring:  # background pixels 2–4 px around the object
            near = ndimage.binary_dilation(label == k, iterations=4)
            r = near & ~ndimage.binary_dilation(label == k, iterations=1) & (label == 0)
            if r.sum() > 5:
                ring[k].append(grain[r].mean())
    f = {k: np.mean(v, 0) for k, v in inner.items()}
    assert min(len(inner[a]), len(inner[b])) > 20
    # inside, the two classes of a pair look alike; other classes (their own colour) do not
    same = np.abs(f[a] - f[b]).max()
    assert same < 10
    assert np.abs(f[a][:3] - f[c][:3]).max() > 3 * same
    assert np.abs(f[a][:3] - f[e][:3]).max() > 3 * same
    # around them, the surround differs: plain for the first class, grainy for the second
    assert np.mean(ring[b]) > 2 * np.mean(ring[a])


def test_generator_options_are_checked() -> None:
    with pytest.raises(ValueError, match="family=N"):
        build_dataset("synthetic", None, generator="family", num_images=1)
    with pytest.raises(ValueError, match="generator 'family' only"):
        build_dataset("synthetic", None, generator="glyphs", family=3, num_images=1)
    with pytest.raises(ValueError, match="integer >= 0"):
        build_dataset("synthetic", None, generator="family", family=-1, num_images=1)
    with pytest.raises(ValueError, match=r"unknown generator 'famly'.*family"):
        build_dataset("synthetic", None, generator="famly", family=1, num_images=1)


def test_prepare_writes_a_member_and_its_parameters(tmp_path, capsys) -> None:
    summary = prepare_synthetic(tmp_path / "a", num_train=2, num_val=1, size=40, family=9)
    member = draw_member(9)
    assert summary["generator"] == "family" and summary["parameters"] == member.parameters()
    assert json.loads((tmp_path / "a" / "family.json").read_text()) == member.parameters()
    lines = (tmp_path / "a" / "classes.txt").read_text().splitlines()
    assert [line.split()[0] for line in lines] == member.class_names
    ds = build_dataset(
        "synthetic", None, "val", generator="family", family=9, num_images=1, size=40
    )
    png = np.asarray(load_image(tmp_path / "a" / "images" / "val" / "000000.png"))
    assert np.array_equal(png, ds.read_image(0))
    out = tmp_path / "b"
    args = ["prepare", "synthetic", "--family", "9", "--out", str(out), "--size", "40"]
    assert main([*args, "--num-train", "1", "--num-val", "1"]) == 0
    assert "context_pairs=" in capsys.readouterr().out
    assert json.loads((out / "family.json").read_text()) == member.parameters()


def test_a_bad_family_seed_is_named_as_the_caller_spells_it(tmp_path, capsys) -> None:
    """Issue 28.9: `sanet prepare synthetic --family -3` names `--family`, not recipe syntax;
    from Python the parameter is `family`."""
    code = main(["prepare", "synthetic", "--family", "-3", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "--family must be an integer >= 0" in err[0] and "synthetic:" not in err[0]
    with pytest.raises(ValueError, match=r"^family must be an integer >= 0"):
        draw_member(-3)
    assert not (tmp_path / "x").exists()
