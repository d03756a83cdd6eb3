"""Synthetic scenes: the embedded dataset that `make demo` trains on (no download needed).

Three generators share the label conventions below: ``"scenes"`` (this module, the default and
the demo's data), ``"glyphs"`` (:mod:`sanet.data.glyphs`: other shapes, textures and statistics,
for judging a recipe on scenes it was not tuned on) and ``"family"`` (:mod:`sanet.data.family`:
one member of a family of generators per ``family`` seed, for studies across many kinds of
scenes). ``SyntheticDataset(generator=..., family=...)`` picks one. The rest of this docstring
describes ``"scenes"``.

Each image holds 2–5 objects of 6 classes on a cluttered background (class 0). A class is a
*shape* and a *texture* (e.g. "disc" = disc filled with stripes); colours are drawn from one
distribution for every class, so colour says nothing. Why a model needs context:

- a single pixel is just a colour between two random colours — it carries no class evidence;
- textures have a period of 5–10 pixels, so a receptive field of at least one period is needed;
- the background is cluttered with small fragments (radius ≤ 5 % of the image) painted with the
  *same* textures and shapes as the objects but labelled background: only the extent of a
  region tells an object from clutter;
- objects overlap and are cut by the image border, so shape evidence is partial and must be
  combined with texture over a large window.

Labels: 0 background, 1..6 objects, 255 on a 2-pixel band across every object border (like
the VOC annotations). Generation is numpy-only, ~2–3 ms per 128×128 image, deterministic for a
given (seed, split, index).
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sanet.data.classes import ignore_borders, voc_palette
from sanet.data.datasets import SegmentationDataset, Transforms
from sanet.data.family import draw_member
from sanet.data.glyphs import GLYPH_CLASSES, GLYPH_PALETTE, make_glyph_scene
from sanet.errors import UsageError, suggest

SYNTHETIC_CLASSES = [
    "background",
    "disc",
    "square",
    "triangle",
    "ring",
    "cross",
    "star",
]
SYNTHETIC_PALETTE = voc_palette(len(SYNTHETIC_CLASSES))
# class id -> (shape, texture); background clutter uses random combinations of these.
CLASS_STYLE = {
    1: ("disc", "stripes"),
    2: ("square", "checker"),
    3: ("triangle", "dots"),
    4: ("ring", "noise"),
    5: ("cross", "hatch"),
    6: ("star", "ripples"),
}
SHAPES = [s for s, _ in CLASS_STYLE.values()]
TEXTURES = [t for _, t in CLASS_STYLE.values()]
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


def split_code(split: str) -> int:
    """A stable integer per split name, so that each split gets its own images."""
    return _SPLIT_CODES.get(split, zlib.crc32(split.encode()) + 3)


def _shape(name: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Inside-test on coordinates normalised by the object's radius (unit circle = extent)."""
    if name == "disc":
        return a * a + b * b < 1.0
    if name == "square":
        return np.maximum(np.abs(a), np.abs(b)) < 0.8
    if name == "triangle":  # equilateral, inradius 0.5
        return (b < 0.5) & (0.866 * a - 0.5 * b < 0.5) & (-0.866 * a - 0.5 * b < 0.5)
    if name == "ring":
        d = a * a + b * b
        return (d < 1.0) & (d > 0.36)
    if name == "cross":
        aa, bb = np.abs(a), np.abs(b)
        return ((aa < 0.3) & (bb < 1.0)) | ((bb < 0.3) & (aa < 1.0))
    if name == "star":  # five rounded points
        return np.sqrt(a * a + b * b) < 0.62 + 0.38 * np.cos(5 * np.arctan2(b, a))
    raise AssertionError(name)


def _texture(name: str, u: np.ndarray, v: np.ndarray, p: float, rng) -> np.ndarray:
    """Texture value in [0, 1] on object-frame pixel coordinates (u, v), period ``p`` pixels."""
    two_pi = 2 * np.pi / p
    if name == "stripes":
        return (np.sin(two_pi * u) > 0).astype(np.float32)
    if name == "checker":
        return (np.sin(two_pi * u) * np.sin(two_pi * v) > 0).astype(np.float32)
    if name == "dots":
        du, dv = np.mod(u, p) - p / 2, np.mod(v, p) - p / 2
        return (du * du + dv * dv < (p / 3.2) ** 2).astype(np.float32)
    if name == "noise":
        h, w = np.broadcast_shapes(u.shape, v.shape)
        cells = rng.random(((h + 1) // 2, (w + 1) // 2), dtype=np.float32)
        return np.repeat(np.repeat(cells, 2, 0), 2, 1)[:h, :w]
    if name == "hatch":
        du, dv = np.abs(np.mod(u, p) - p / 2), np.abs(np.mod(v, p) - p / 2)
        return ((du < 0.8) | (dv < 0.8)).astype(np.float32)
    if name == "ripples":
        return (np.sin(two_pi * np.sqrt(u * u + v * v)) > 0).astype(np.float32)
    raise AssertionError(name)


def _colours(rng) -> tuple[np.ndarray, np.ndarray]:
    """Two colours of one object: same distribution for every class (colour is uninformative)."""
    c1 = rng.uniform(0, 255, 3).astype(np.float32)
    c2 = np.clip(c1 + rng.choice([-1, 1], 3) * rng.uniform(70, 140, 3), 0, 255)
    return c1, c2.astype(np.float32)


def _paint(image, label, cls, shape, texture, cy, cx, r, rng) -> None:
    """Paint one shape (in place) and write ``cls`` into ``label`` where it lands (if given)."""
    h, w = label.shape
    ext = 1.05 * r
    y0, y1 = max(int(cy - ext), 0), min(int(cy + ext) + 2, h)
    x0, x1 = max(int(cx - ext), 0), min(int(cx + ext) + 2, w)
    if y0 >= y1 or x0 >= x1:
        return
    theta = rng.uniform(0, 2 * np.pi)
    cos, sin = np.cos(theta), np.sin(theta)
    ys = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
    xs = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]
    u, v = xs * cos + ys * sin, -xs * sin + ys * cos
    inside = _shape(shape, u / r, v / r)
    period = rng.uniform(5.0, 10.0)
    t = _texture(texture, u, v, period, rng)[..., None]
    c1, c2 = _colours(rng)
    patch = c1 * (1 - t) + c2 * t
    region = image[y0:y1, x0:x1]
    region[inside] = patch[inside]
    if cls is not None:
        label[y0:y1, x0:x1][inside] = cls


@functools.lru_cache(maxsize=8)
def _bilinear_weights(n: int, grid: int) -> np.ndarray:
    """(n, grid) weights that upsample ``grid`` control points to ``n`` pixels linearly."""
    pos = (np.arange(n) + 0.5) / n * (grid - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, grid - 2)
    frac = (pos - lo).astype(np.float32)
    wts = np.zeros((n, grid), np.float32)
    wts[np.arange(n), lo] = 1 - frac
    wts[np.arange(n), lo + 1] = frac
    return wts


def _background(h: int, w: int, rng) -> np.ndarray:
    """Low-frequency colour field (H, W, 3) float32."""
    grid = rng.uniform(0, 255, (4, 4, 3)).astype(np.float32)
    wy, wx = _bilinear_weights(h, 4), _bilinear_weights(w, 4)
    return np.einsum("yi,ijc,xj->yxc", wy, grid, wx, optimize=True)


def make_scene(
    size: int | tuple[int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic scene.

    Returns:
        image (H, W, 3) uint8 and mask (H, W) uint8 with ids 0..7 and 255.
    """
    h, w = (size, size) if isinstance(size, int) else size
    s = min(h, w)
    image = _background(h, w, rng)
    label = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(4, 11))):  # clutter: object textures, labelled background
        r = max(2.0, s * rng.uniform(0.02, 0.05))
        shape, texture = SHAPES[rng.integers(len(SHAPES))], TEXTURES[rng.integers(len(TEXTURES))]
        _paint(image, label, None, shape, texture, rng.uniform(0, h), rng.uniform(0, w), r, rng)
    for _ in range(int(rng.integers(2, 6))):  # objects, later ones occlude earlier ones
        cls = int(rng.integers(1, len(SYNTHETIC_CLASSES)))
        shape, texture = CLASS_STYLE[cls]
        r = s * rng.uniform(0.12, 0.3)
        cy, cx = rng.uniform(0.1 * h, 0.9 * h), rng.uniform(0.1 * w, 0.9 * w)
        _paint(image, label, cls, shape, texture, cy, cx, r, rng)
    image += rng.standard_normal((h, w, 3), dtype=np.float32) * 5.0
    return np.clip(image, 0, 255).astype(np.uint8), ignore_borders(label)


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of image ``index`` of ``split``: independent of every other image."""
    return np.random.default_rng([int(seed), split_code(split), int(index)])


@dataclass(frozen=True)
class SceneGenerator:
    """A synthetic scene generator: its classes, palette and ``make(size, rng) -> (image, mask)``."""

    name: str
    class_names: list[str]
    palette: list[tuple[int, int, int]]
    make: Callable[[int | tuple[int, int], np.random.Generator], tuple[np.ndarray, np.ndarray]]


GENERATORS = {
    "scenes": SceneGenerator("scenes", SYNTHETIC_CLASSES, SYNTHETIC_PALETTE, make_scene),
    "glyphs": SceneGenerator("glyphs", GLYPH_CLASSES, GLYPH_PALETTE, make_glyph_scene),
}
#: every generator name: the fixed ones, and "family" (one member per ``family`` seed)
GENERATOR_NAMES = (*GENERATORS, "family")


def get_generator(name: str, family: int | None = None) -> SceneGenerator:
    """The generator called ``name``: ``"scenes"``, ``"glyphs"``, or ``"family"`` with the
    member's seed ``family`` (:func:`sanet.data.family.draw_member`)."""
    if name not in GENERATOR_NAMES:
        raise UsageError(
            f"synthetic: unknown generator {name!r}; expected one of "
            f"{', '.join(GENERATOR_NAMES)}." + suggest(name, GENERATOR_NAMES)
        )
    if name == "family":
        if family is None:
            raise UsageError(
                "synthetic: generator 'family' needs the member's seed: family=N (an integer "
                ">= 0), e.g. data.options={generator: family, family: 3}"
            )
        member = draw_member(family)
        return SceneGenerator(f"family:{family}", member.class_names, member.palette, member.make)
    if family is not None:
        raise UsageError(
            f"synthetic: family={family!r} applies to generator 'family' only, not {name!r}; "
            "add generator: family, or drop the family option."
        )
    return GENERATORS[name]


class SyntheticDataset(SegmentationDataset):
    """Synthetic scenes generated on the fly (deterministic by ``seed``, split and index).

    Args:
        split: each split name draws different images from the same seed.
        num_images: length of the dataset.
        size: image side (or (H, W)).
        seed: base seed.
        generator: ``"scenes"`` (default, the demo's), ``"glyphs"`` or ``"family"``; see
            :data:`GENERATOR_NAMES`.
        family: the member's seed, with ``generator="family"`` only.
    """

    def __init__(
        self,
        split: str = "train",
        *,
        num_images: int | None = None,
        size: int | tuple[int, int] = 128,
        seed: int = 0,
        generator: str = "scenes",
        family: int | None = None,
        transforms: Transforms | None = None,
        exif_transpose: bool = False,  # accepted for a uniform interface; nothing to rotate
        max_pixels: int | None = None,
        check_files: bool = False,  # likewise: its "files" are generated
    ) -> None:
        if num_images is None:
            num_images = 512 if split == "train" else 64
        if num_images < 0:
            raise UsageError(f"synthetic: num_images must be >= 0, got {num_images}")
        if isinstance(size, (list, tuple)):  # YAML gives lists
            if len(size) != 2:
                raise UsageError(f"synthetic: size must be an int or (H, W), got {size}")
            size = (int(size[0]), int(size[1]))
        side = min(size) if isinstance(size, tuple) else int(size)
        if side < 16:
            raise UsageError(f"synthetic: size must be at least 16 pixels, got {size}")
        self.generator = get_generator(generator, family)
        self.size, self.seed, self.split = size, int(seed), split
        names = [
            f"synthetic:{self.generator.name}:seed={seed}:split={split}:index={i}"
            for i in range(num_images)
        ]
        super().__init__(
            [(n, n) for n in names],
            class_names=self.generator.class_names,
            palette=self.generator.palette,
            transforms=transforms,
            name=f"synthetic:{split}",
            check_files=False,
        )

    def load_raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(f"synthetic: index {index} out of range 0..{len(self) - 1}")
        return self.generator.make(self.size, scene_rng(self.seed, self.split, index))

    def read_image(self, index: int) -> np.ndarray:
        return self.load_raw(index)[0]

    def read_mask(self, index: int) -> np.ndarray:
        return self.load_raw(index)[1]
