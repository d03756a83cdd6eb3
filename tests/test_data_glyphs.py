"""Glyph scenes, the held-out generator: deterministic, label conventions, cues it must not leak."""

from __future__ import annotations

import numpy as np

from sanet.data.classes import IGNORE_INDEX, ignore_borders
from sanet.data.glyphs import GLYPH_CLASSES, GLYPH_STYLE, make_glyph_scene
from sanet.data.synthetic import CLASS_STYLE, scene_rng

K = len(GLYPH_CLASSES)


def _scenes(n: int, size: int = 96, seed: int = 0, split: str = "train"):
    return [make_glyph_scene(size, scene_rng(seed, split, i)) for i in range(n)]


def test_same_seed_same_scene_and_independent_indices() -> None:
    a = make_glyph_scene(64, scene_rng(3, "train", 7))
    b = make_glyph_scene(64, scene_rng(3, "train", 7))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    for other in (scene_rng(3, "val", 7), scene_rng(4, "train", 7), scene_rng(3, "train", 8)):
        assert not np.array_equal(a[0], make_glyph_scene(64, other)[0])


def test_shapes_and_textures_differ_from_the_demo_generator() -> None:
    assert GLYPH_CLASSES[0] == "background" and K == 7
    shapes = {s for s, _ in GLYPH_STYLE.values()}
    textures = {t for _, t in GLYPH_STYLE.values()}
    assert len(shapes) == len(textures) == K - 1
    assert not shapes & {s for s, _ in CLASS_STYLE.values()}
    assert not textures & {t for _, t in CLASS_STYLE.values()}


def test_label_conventions() -> None:
    seen: set[int] = set()
    for image, mask in _scenes(40):
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8
        assert mask.shape == (96, 96) and mask.dtype == np.uint8
        values = set(np.unique(mask).tolist())
        assert values <= {*range(K), IGNORE_INDEX}
        seen |= values
        # every label change is covered by the ignore band: valid 4-neighbours never differ
        for a, b in ((mask[:, 1:], mask[:, :-1]), (mask[1:], mask[:-1])):
            both = (a != IGNORE_INDEX) & (b != IGNORE_INDEX)
            assert np.array_equal(a[both], b[both])
        assert (mask == IGNORE_INDEX).mean() < 0.25
    assert seen == {*range(K), IGNORE_INDEX}  # every class occurs


def test_ignore_borders_by_hand() -> None:
    label = np.zeros((4, 6), np.uint8)
    label[:, 3:] = 2
    out = ignore_borders(label)
    expected = np.zeros((4, 6), np.uint8)
    expected[:, 3:] = 2
    expected[:, 2:4] = IGNORE_INDEX  # the pixels on both sides of the change
    assert np.array_equal(out, expected) and label[0, 2] == 0  # input untouched


def test_colour_alone_does_not_tell_the_class() -> None:
    """A nearest-mean-colour classifier on object pixels stays near chance (1/6)."""

    def pixels(scenes):
        keep = [(m >= 1) & (m < K) for _, m in scenes]
        x = np.concatenate(
            [im[k].astype(np.float64) for (im, _), k in zip(scenes, keep, strict=True)]
        )
        return x, np.concatenate([m[k] for (_, m), k in zip(scenes, keep, strict=True)])

    x, y = pixels(_scenes(40, seed=0))
    means = np.stack([x[y == k].mean(0) for k in range(1, K)])
    xt, yt = pixels(_scenes(20, seed=1))
    pred = 1 + np.argmin(((xt[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    assert (pred == yt).mean() < 0.3


def test_rectangular_size() -> None:
    image, mask = make_glyph_scene((40, 70), scene_rng(0, "train", 0))
    assert image.shape == (40, 70, 3) and mask.shape == (40, 70)
