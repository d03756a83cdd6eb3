"""A *family* of scene generators: each integer seed draws one member with its own statistics.

The fixed generators (``scenes``, ``glyphs``) answer "does a recipe work on these scenes?"; the
family answers "on which kind of scenes does it work?". A member (:class:`FamilyMember`, drawn
by :func:`draw_member`) fixes, reproducibly from its seed:

- ``num_classes``: 4–12 classes, background included;
- each object class's *appearance*, a (shape, texture) pair from the pool of
  :mod:`sanet.data.family_pool` (14 shapes, 12 textures), and a class colour;
- ``colour_info`` in [0, 1]: an object's colour is ``colour_info × class colour +
  (1 − colour_info) × a random colour``, so 0 makes colour useless and 1 makes it a strong cue;
- ``size_range``: object radius as a fraction of the image's short side;
- ``max_objects`` per image (1 to it), ``clutter`` (up to that many background-labelled
  distractors: a class texture on a wrong shape, or a class shape in a texture no class has),
  ``occlusion`` (up to that many background blobs painted over the objects);
- ``context_pairs``: pairs of classes that share one appearance (shape, texture *and* colour
  distribution) and differ only by what surrounds them. Every scene is split into a *plain*
  zone (a smooth colour field) and a *grainy* zone (the same with fine grain): a whole image
  is one zone (half the images) or two zones on either side of a random line. An object of a
  pair's appearance is the pair's first class when its centre lies in the plain zone and the
  second when it lies in the grainy one — only the surround tells them apart, the grouping of
  pixels by context that SA's attention (Eq. 3–4) is meant to provide.

Labels follow the other generators: 0 background, 1..K−1 objects, 255 on a 2-pixel band across
every label change. :meth:`FamilyMember.parameters` gives the numbers a study regresses on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sanet.data.classes import ignore_borders, voc_palette
from sanet.data.family_pool import (
    CLUTTER_SHAPE,
    CLUTTER_TEXTURE,
    SHAPES,
    TEXTURES,
    grey,
    inside,
)
from sanet.data.glyphs import object_frame, value_noise
from sanet.errors import UsageError, arg

_FAMILY_KEY = 0x5A3E7  # keeps member draws apart from every other use of the same seed


@dataclass(frozen=True)
class FamilyMember:
    """One member of the scene family: the distribution its scenes are drawn from.

    ``appearances[j]`` is a (shape, texture) pair and ``class_colours[j]`` its RGB colour;
    ``classes[j]`` the class ids it is labelled with: ``(id,)``, or ``(plain, grainy)`` for the
    first ``context_pairs`` appearances (the zone under the object's centre decides).
    """

    seed: int
    appearances: tuple[tuple[str, str], ...]
    class_colours: tuple[tuple[float, float, float], ...]
    context_pairs: int
    colour_info: float
    size_range: tuple[float, float]
    max_objects: int
    clutter: int
    occlusion: int

    @property
    def classes(self) -> tuple[tuple[int, ...], ...]:
        ids, nxt = [], 1
        for j in range(len(self.appearances)):
            width = 2 if j < self.context_pairs else 1
            ids.append(tuple(range(nxt, nxt + width)))
            nxt += width
        return tuple(ids)

    @property
    def num_classes(self) -> int:
        """Classes including the background."""
        return 1 + len(self.appearances) + self.context_pairs

    @property
    def class_names(self) -> list[str]:
        names = ["background"]
        for (shape, texture), ids in zip(self.appearances, self.classes, strict=True):
            base = f"{shape}/{texture}"
            names += [base] if len(ids) == 1 else [f"{base}@plain", f"{base}@grainy"]
        return names

    @property
    def palette(self) -> list[tuple[int, int, int]]:
        return voc_palette(self.num_classes)

    def parameters(self) -> dict[str, float | int]:
        """The member's scene properties as numbers (the regressors of a study)."""
        lo, hi = self.size_range
        shapes = [s for s, _ in self.appearances]
        textures = [t for _, t in self.appearances]
        shared = sum(shapes.count(s) > 1 or textures.count(t) > 1 for s, t in self.appearances)
        objects = self.num_classes - 1
        return {
            "family": self.seed,
            "num_classes": self.num_classes,
            "context_pairs": self.context_pairs,
            "context_share": 2 * self.context_pairs / objects,
            "colour_info": round(self.colour_info, 4),
            "size_min": round(lo, 4),
            "size_max": round(hi, 4),
            "size_mean": round(math.sqrt(lo * hi), 4),
            "max_objects": self.max_objects,
            "clutter": self.clutter,
            "occlusion": self.occlusion,
            "shared_cues": round(shared / len(self.appearances), 4),
        }

    def make(
        self, size: int | tuple[int, int], rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """One scene: image (H, W, 3) uint8 and mask (H, W) uint8 (ids and 255).

        ``rng`` (e.g. :func:`sanet.data.synthetic.scene_rng`) is mixed with the member's seed, so
        image ``i`` of two members shares nothing, not even its background."""
        own = np.random.default_rng([_FAMILY_KEY, self.seed, int(rng.integers(2**32))])
        image, label, _ = render(self, size, own)
        return image, ignore_borders(label)


def draw_member(seed: int) -> FamilyMember:
    """The family member of ``seed`` (any integer ≥ 0; the same seed, the same member)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UsageError(
            f"{arg('family')} must be an integer >= 0 (the member's seed), got {seed!r}."
        )
    rng = np.random.default_rng([_FAMILY_KEY, int(seed)])
    num_classes = int(rng.integers(4, 13))
    objects = num_classes - 1
    pairs = int(rng.integers(0, min(3, objects // 2) + 1))
    looks: list[tuple[str, str]] = []
    while len(looks) < objects - pairs:  # distinct (shape, texture) pairs; a cue may repeat
        look = (SHAPES[rng.integers(len(SHAPES))], TEXTURES[rng.integers(len(TEXTURES))])
        if look not in looks:
            looks.append(look)
    colours = rng.uniform(30, 225, (len(looks), 3)).round(1)
    lo = float(rng.uniform(0.1, 0.2))
    return FamilyMember(
        seed=int(seed),
        appearances=tuple(looks),
        class_colours=tuple(tuple(float(x) for x in c) for c in colours),
        context_pairs=pairs,
        colour_info=round(float(rng.uniform(0.0, 1.0)), 4),
        size_range=(round(lo, 4), round(min(0.4, lo * float(rng.uniform(1.3, 2.2))), 4)),
        max_objects=int(rng.integers(2, 6)),
        clutter=int(rng.integers(0, 9)),
        occlusion=int(rng.integers(0, 4)),
    )


def zone_map(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """(H, W) uint8: 0 plain, 1 grainy. One zone (half the images) or a random line's two sides."""
    kind = rng.random()
    if kind < 0.5:
        return np.full((h, w), int(kind < 0.25), np.uint8)
    theta = rng.uniform(0, 2 * np.pi)
    cy, cx = rng.uniform(0.3 * h, 0.7 * h), rng.uniform(0.3 * w, 0.7 * w)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    return ((xs - cx) * np.cos(theta) + (ys - cy) * np.sin(theta) > 0).astype(np.uint8)


def _background(zone: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = zone.shape
    field = value_noise(h, w, 3, rng)[..., None]
    c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    image = (c1 * (1 - field) + c2 * field).astype(np.float32)
    # the grainy zone: low-contrast 2×2-pixel grain in grey (class textures have two colours
    # of one object, far more contrast)
    cells = rng.uniform(-35.0, 35.0, ((h + 1) // 2, (w + 1) // 2)).astype(np.float32)
    grain = np.repeat(np.repeat(cells, 2, 0), 2, 1)[:h, :w]
    return image + (zone * grain)[..., None]


def _colours(member: FamilyMember, j: int | None, rng: np.random.Generator):
    """Light and dark colour of one object of appearance ``j`` (None: a random colour)."""
    noise = rng.uniform(0, 255, 3)
    base = (
        noise
        if j is None
        else (
            member.colour_info * np.asarray(member.class_colours[j])
            + (1 - member.colour_info) * noise
        )
    )
    light = np.clip(base + rng.normal(0, 8, 3), 0, 255)
    return light.astype(np.float32), (light * rng.uniform(0.3, 0.55)).astype(np.float32)


def _paint(image, label, cls, shape, texture, colours, centre, r, rng) -> None:
    """Paint one shape in place; write ``cls`` into ``label`` where it lands."""
    h, w = label.shape
    frame = object_frame(label.shape, centre, r, rng)
    if frame is None:
        return
    (y0, y1, x0, x1), u, v = frame
    mask = inside(shape, u / r, v / r)
    period = max(3.0, rng.uniform(0.07, 0.13) * min(h, w))
    t = np.broadcast_to(grey(texture, u, v, period, rng), mask.shape)[..., None]
    light, dark = colours
    patch = dark * (1 - t) + light * t
    image[y0:y1, x0:x1][mask] = patch[mask]
    label[y0:y1, x0:x1][mask] = cls


def render(
    member: FamilyMember, size: int | tuple[int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One scene before the ignore band: image uint8, label uint8 (no 255) and the zone map."""
    h, w = (size, size) if isinstance(size, int) else size
    side = min(h, w)
    zone = zone_map(h, w, rng)
    image = _background(zone, rng)
    label = np.zeros((h, w), np.uint8)
    n_looks = len(member.appearances)
    for _ in range(int(rng.integers(0, member.clutter + 1))):  # distractors, under the objects
        j = int(rng.integers(n_looks))
        shape, texture = member.appearances[j]
        if rng.random() < 0.5:
            shape = CLUTTER_SHAPE
        else:
            texture = CLUTTER_TEXTURE
        centre = (rng.uniform(0, h), rng.uniform(0, w))
        r = side * rng.uniform(0.05, 0.15)
        _paint(image, label, 0, shape, texture, _colours(member, j, rng), centre, r, rng)
    lo, hi = member.size_range
    for _ in range(int(rng.integers(1, member.max_objects + 1))):  # later ones occlude earlier
        j = int(rng.integers(n_looks))
        centre = (rng.uniform(0.05 * h, 0.95 * h), rng.uniform(0.05 * w, 0.95 * w))
        ids = member.classes[j]
        cls = ids[int(zone[int(centre[0]), int(centre[1])])] if len(ids) == 2 else ids[0]
        r = side * math.exp(rng.uniform(math.log(lo), math.log(hi)))
        shape, texture = member.appearances[j]
        _paint(image, label, cls, shape, texture, _colours(member, j, rng), centre, r, rng)
    for _ in range(int(rng.integers(0, member.occlusion + 1))):  # background over the objects
        centre = (rng.uniform(0, h), rng.uniform(0, w))
        r = side * rng.uniform(0.06, 0.16)
        colours = _colours(member, None, rng)
        _paint(image, label, 0, CLUTTER_SHAPE, CLUTTER_TEXTURE, colours, centre, r, rng)
    light = 0.8 + 0.4 * value_noise(h, w, 2, rng)  # illumination varies slowly
    image = image * light[..., None] + rng.standard_normal((h, w, 3), dtype=np.float32) * 4.0
    return np.clip(image, 0, 255).astype(np.uint8), label, zone
