"""Synthetic scenes: deterministic, rich enough (classes, objects, ignore), colour uninformative."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from sanet.data.synthetic import (
    CLASS_STYLE,
    SYNTHETIC_CLASSES,
    make_scene,
    scene_rng,
)

K = len(SYNTHETIC_CLASSES)


def _scenes(n: int, size: int = 96, seed: int = 0, split: str = "train"):
    return [make_scene(size, scene_rng(seed, split, i)) for i in range(n)]


def test_same_seed_same_scene_and_independent_indices():
    a = make_scene(64, scene_rng(3, "train", 7))
    b = make_scene(64, scene_rng(3, "train", 7))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    c = make_scene(64, scene_rng(3, "val", 7))
    assert not np.array_equal(a[0], c[0])


def test_classes_shapes_and_textures_are_distinct():
    assert len(SYNTHETIC_CLASSES) >= 6 and SYNTHETIC_CLASSES[0] == "background"
    shapes = [s for s, _ in CLASS_STYLE.values()]
    textures = [t for _, t in CLASS_STYLE.values()]
    assert len(set(shapes)) == len(shapes) == len(SYNTHETIC_CLASSES) - 1
    assert len(set(textures)) == len(textures)


def test_scene_contents():
    scenes = _scenes(40)
    seen = set()
    for image, mask in scenes:
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8
        assert mask.shape == (96, 96) and mask.dtype == np.uint8
        values = set(np.unique(mask).tolist())
        assert values <= {*range(len(SYNTHETIC_CLASSES)), 255}
        assert 255 in values and 0 in values  # ignore borders and background in every scene
        seen |= values
        objects = sum(ndimage.label(mask == k)[1] > 0 for k in range(1, K))
        assert objects >= 1
        ignore = (mask == 255).mean()
        assert 0.005 < ignore < 0.25  # "some" ignore: a band on borders, not whole regions
    assert seen >= {*range(len(SYNTHETIC_CLASSES)), 255}  # every class occurs


def test_objects_vary_in_scale_and_occlude():
    sizes, multi = [], 0
    for _, mask in _scenes(40):
        counts = [(mask == k).sum() for k in range(1, K) if (mask == k).any()]
        sizes += counts
        multi += len(counts) >= 2
    assert max(sizes) > 8 * min(sizes)  # different scales
    assert multi >= 25  # several objects per image in most scenes


def test_colour_alone_does_not_tell_the_class():
    """A nearest-mean-colour classifier on object pixels stays near chance (1/6)."""
    train, test = _scenes(40, seed=0), _scenes(20, seed=1)

    def pixels(scenes):
        xs, ys = [], []
        for image, mask in scenes:
            keep = (mask >= 1) & (mask < K)
            xs.append(image[keep].astype(np.float64))
            ys.append(mask[keep])
        return np.concatenate(xs), np.concatenate(ys)

    x, y = pixels(train)
    means = np.stack([x[y == k].mean(0) for k in range(1, K)])
    xt, yt = pixels(test)
    pred = 1 + np.argmin(((xt[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    assert (pred == yt).mean() < 0.3


def test_rectangular_size():
    image, mask = make_scene((40, 70), scene_rng(0, "train", 0))
    assert image.shape == (40, 70, 3) and mask.shape == (40, 70)
