"""Glyph scenes: a second synthetic generator, for judging recipes on data they were not tuned on.

It keeps the label conventions of :mod:`sanet.data.synthetic` (0 background, 1..6 objects,
255 on a 2-pixel band across object borders; deterministic by seed, split and index) but
shares none of its shapes, textures or statistics:

- classes are six *other* shapes (hexagon, crescent, arrow, ellipse, ell, frame), each with its
  own texture (smooth grating, Voronoi cells, zigzag, concentric squares, 1-pixel speckle,
  plaid); textures are grey-level patterns mapped onto two random colours, so colour is
  uninformative;
- the background is multi-octave value noise under a random illumination field;
- *distractors* are labelled background and defeat one cue at a time: irregular blobs filled
  with a class texture (right texture, wrong shape), and class shapes filled with a texture no
  class uses (right shape, wrong texture) — only shape *and* texture together name a class;
- background blobs are also painted *over* objects (occlusion by background), objects are
  larger on average and 1–6 per image, and some images hold no object at all.
"""

from __future__ import annotations

import numpy as np

from sanet.data.classes import ignore_borders, voc_palette

GLYPH_CLASSES = [
    "background",
    "hexagon",
    "crescent",
    "arrow",
    "ellipse",
    "ell",
    "frame",
]
GLYPH_PALETTE = voc_palette(len(GLYPH_CLASSES))
#: class id -> (shape, texture). "blotch" is the texture of right-shape/wrong-texture distractors.
GLYPH_STYLE = {
    1: ("hexagon", "grating"),
    2: ("crescent", "cells"),
    3: ("arrow", "zigzag"),
    4: ("ellipse", "concentric"),
    5: ("ell", "speckle"),
    6: ("frame", "plaid"),
}
_SHAPES = [s for s, _ in GLYPH_STYLE.values()]
_TEXTURES = [t for _, t in GLYPH_STYLE.values()]


def _glyph(name: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Inside-test on coordinates normalised by the glyph's radius."""
    aa, bb = np.abs(a), np.abs(b)
    if name == "hexagon":
        return np.maximum(bb, 0.866 * aa + 0.5 * bb) < 0.866
    if name == "crescent":
        return (a * a + b * b < 1.0) & ((a - 0.45) ** 2 + b * b > 0.64)
    if name == "arrow":
        shaft = (a > -1.0) & (a < 0.15) & (bb < 0.22)
        head = (a >= 0.15) & (a < 1.0) & (bb < 0.75 * (1.0 - a) / 0.85)
        return shaft | head
    if name == "ellipse":
        return a * a + (b / 0.55) ** 2 < 1.0
    if name == "ell":
        return ((a > -0.8) & (a < -0.3) & (bb < 0.9)) | ((aa < 0.8) & (b > 0.4) & (b < 0.9))
    if name == "frame":
        m = np.maximum(aa, bb)
        return (m < 0.85) & (m > 0.5)
    if name == "blob":  # irregular distractor: a radius that wobbles with the angle
        theta = np.arctan2(b, a)
        return np.sqrt(a * a + b * b) < 0.8 + 0.15 * np.sin(3 * theta) + 0.1 * np.cos(5 * theta)
    raise AssertionError(name)


def _grey(name: str, u: np.ndarray, v: np.ndarray, p: float, rng: np.random.Generator):
    """Grey-level pattern in [0, 1] on object-frame pixel coordinates, period ``p`` pixels."""
    h, w = np.broadcast_shapes(u.shape, v.shape)
    if name == "grating":  # smooth, not binary
        return 0.5 + 0.5 * np.sin(2 * np.pi * u / p)
    if name == "cells":  # Voronoi cells of random points, each cell light or dark
        n = max(4, int(h * w / (1.6 * p) ** 2))
        py, px = rng.uniform(0, h, n), rng.uniform(0, w, n)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        d = (yy[..., None] - py) ** 2 + (xx[..., None] - px) ** 2
        return rng.integers(0, 2, n).astype(np.float32)[d.argmin(-1)]
    if name == "zigzag":
        tri = np.abs(np.mod(v / p, 1.0) - 0.5) * p
        return (np.mod(u + tri, p) < p / 2).astype(np.float32)
    if name == "concentric":
        return (np.mod(np.maximum(np.abs(u), np.abs(v)) / p, 1.0) < 0.5).astype(np.float32)
    if name == "speckle":  # 1-pixel salt and pepper: only a fine-scale filter sees it
        return (rng.random((h, w)) < 0.5).astype(np.float32)
    if name == "plaid":
        s = np.sin(2 * np.pi * u / p) + np.sin(2 * np.pi * v / (1.7 * p))
        return np.digitize(s, [-0.6, 0.6]).astype(np.float32) / 2
    if name == "blotch":  # smooth random field: no class uses it
        return value_noise(h, w, max(2, int(max(h, w) / (2 * p))), rng)
    raise AssertionError(name)


def value_noise(h: int, w: int, grid: int, rng: np.random.Generator) -> np.ndarray:
    """(h, w) float32 in [0, 1]: a ``grid``×``grid`` random lattice interpolated bilinearly."""
    lattice = rng.random((grid + 1, grid + 1)).astype(np.float32)
    ys, xs = np.linspace(0, grid, h, dtype=np.float32), np.linspace(0, grid, w, dtype=np.float32)
    y0, x0 = np.minimum(ys.astype(int), grid - 1), np.minimum(xs.astype(int), grid - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = lattice[y0][:, x0] * (1 - fx) + lattice[y0][:, x0 + 1] * fx
    bottom = lattice[y0 + 1][:, x0] * (1 - fx) + lattice[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def object_frame(
    hw: tuple[int, int], centre: tuple[float, float], r: float, rng: np.random.Generator
) -> tuple[tuple[int, int, int, int], np.ndarray, np.ndarray] | None:
    """The box ``(y0, y1, x0, x1)`` an object of radius ``r`` at ``centre`` may cover, and its
    pixels' coordinates ``(u, v)`` in the object's frame, turned by an angle drawn from ``rng``
    (None, drawing nothing, when the box is off the image). Shared by the glyph and family
    generators, whose scenes depend on this exact order of draws."""
    (h, w), (cy, cx) = hw, centre
    y0, y1 = max(int(cy - 1.1 * r), 0), min(int(cy + 1.1 * r) + 2, h)
    x0, x1 = max(int(cx - 1.1 * r), 0), min(int(cx + 1.1 * r) + 2, w)
    if y0 >= y1 or x0 >= x1:
        return None
    theta = rng.uniform(0, 2 * np.pi)
    cos, sin = np.cos(theta), np.sin(theta)
    ys = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
    xs = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]
    return (y0, y1, x0, x1), xs * cos + ys * sin, -xs * sin + ys * cos


def _draw(image, label, cls, shape, texture, centre, r, rng) -> None:
    """Paint one glyph in place; write ``cls`` into ``label`` where it lands."""
    frame = object_frame(label.shape, centre, r, rng)
    if frame is None:
        return
    (y0, y1, x0, x1), u, v = frame
    inside = _glyph(shape, u / r, v / r)
    t = _grey(texture, u, v, rng.uniform(4.0, 9.0), rng)
    t = np.broadcast_to(t, inside.shape)[..., None]
    dark = rng.uniform(0, 200, 3).astype(np.float32)
    light = np.clip(dark + rng.uniform(50, 160, 3), 0, 255).astype(np.float32)
    patch = dark * (1 - t) + light * t
    image[y0:y1, x0:x1][inside] = patch[inside]
    label[y0:y1, x0:x1][inside] = cls


def _distractor(image, label, side: float, rng: np.random.Generator) -> None:
    """Background-labelled clutter: a class texture on a blob, or a class shape in "blotch"."""
    h, w = label.shape
    centre = (rng.uniform(0, h), rng.uniform(0, w))
    r = side * rng.uniform(0.06, 0.18)
    if rng.random() < 0.5:
        _draw(image, label, 0, "blob", _TEXTURES[rng.integers(6)], centre, r, rng)
    else:
        _draw(image, label, 0, _SHAPES[rng.integers(6)], "blotch", centre, r, rng)


def make_glyph_scene(
    size: int | tuple[int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One glyph scene.

    Returns:
        image (H, W, 3) uint8 and mask (H, W) uint8 with ids 0..6 and 255.
    """
    h, w = (size, size) if isinstance(size, int) else size
    side = min(h, w)
    field = 0.6 * value_noise(h, w, 3, rng) + 0.4 * value_noise(h, w, 9, rng)
    c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    image = (c1 * (1 - field[..., None]) + c2 * field[..., None]).astype(np.float32)
    label = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(2, 7))):  # clutter under the objects
        _distractor(image, label, side, rng)
    n_objects = int(rng.choice([0, 1, 2, 3, 4, 5, 6], p=[0.05, 0.15, 0.2, 0.2, 0.2, 0.1, 0.1]))
    for _ in range(n_objects):  # later objects occlude earlier ones
        cls = int(rng.integers(1, len(GLYPH_CLASSES)))
        shape, texture = GLYPH_STYLE[cls]
        r = side * np.exp(rng.uniform(np.log(0.1), np.log(0.32)))
        centre = (rng.uniform(0.05 * h, 0.95 * h), rng.uniform(0.05 * w, 0.95 * w))
        _draw(image, label, cls, shape, texture, centre, r, rng)
    for _ in range(int(rng.integers(0, 3))):  # background clutter occluding objects
        _distractor(image, label, side, rng)
    light = 0.65 + 0.7 * value_noise(h, w, 2, rng)  # illumination: colour scale varies slowly
    image = image * light[..., None] + rng.standard_normal((h, w, 3), dtype=np.float32) * 4.0
    return np.clip(image, 0, 255).astype(np.uint8), ignore_borders(label)
