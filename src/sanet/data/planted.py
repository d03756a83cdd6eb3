"""Synthetic scenes with planted label errors: how ``sanet audit-labels`` is measured
(docs/trust.md, ``benchmarks/audit_planted.py``).

Five kinds of error a user meets, each planted in a clean generated mask:

- ``missing object``: the largest object is labelled background;
- ``wrong class``: the largest object is labelled as another object class;
- ``spurious region``: a disc on the background is labelled as an object class;
- ``shifted boundary``: the largest object's outline is drawn shifted by 6 % of the image's
  short side (at least 3 px) in a random direction: the pixels it leaves become background, the
  background it covers becomes the object (other objects are not painted over);
- ``swapped classes``: the two object classes with the most pixels trade labels everywhere.

The images are untouched; only the masks lie. Like the generators' masks, a planted mask has the
2-pixel ignore (255) band across every label change: the band is drawn again where the edit
changed the label (an erased object leaves no outline, a spurious disc gets one).
:func:`write_planted_folder` writes a ``folder`` dataset (docs/datasets.md) and
``planted_<split>.json``, the answer key (each planted image, its kind and the box of what
changed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sanet._files import atomic_write_text
from sanet.conventions import IGNORE_INDEX
from sanet.data.classes import ignore_borders
from sanet.data.formats import save_image, save_index_png
from sanet.data.synthetic import get_generator, scene_rng
from sanet.errors import UsageError

PLANTED_KINDS = (
    "missing object",
    "wrong class",
    "spurious region",
    "shifted boundary",
    "swapped classes",
)
MIN_OBJECT = 0.02  # least share of the image an object (or a class) must cover to be mislabelled
SHIFT = 0.06  # a shifted boundary moves by this share of the short side (at least 3 px)


def plant_error(
    mask: np.ndarray, kind: str, rng: np.random.Generator, num_classes: int, background: int = 0
) -> np.ndarray | None:
    """A copy of ``mask`` with one planted error of ``kind``, or ``None`` when the scene has no
    object (no background, no two classes) large enough for it.

    Shape: mask ``(H, W)`` uint8 ids and 255.
    """
    if kind not in PLANTED_KINDS:
        raise UsageError(f"Unknown planted error {kind!r}; expected one of {PLANTED_KINDS}.")
    filled = _fill_bands(mask)
    objects = [c for c in range(num_classes) if c != background]
    if kind == "spurious region":
        edited = _plant_phantom(filled.copy(), rng, objects, background)
    elif kind == "swapped classes":
        edited = _swap(filled, objects)
    else:
        edited = _edit_largest(filled, kind, rng, objects, background)
    if edited is None:
        return None
    return _band_edits(mask, filled, edited)


def _fill_bands(mask: np.ndarray) -> np.ndarray:
    """The mask with every ignore pixel given its nearest label (the scene before its bands)."""
    from scipy import ndimage

    ignored = mask == IGNORE_INDEX
    if not ignored.any() or ignored.all():
        return mask.copy()
    _, (iy, ix) = ndimage.distance_transform_edt(ignored, return_indices=True)
    return mask[iy, ix]


def _band_edits(mask: np.ndarray, filled: np.ndarray, edited: np.ndarray) -> np.ndarray:
    """``mask`` outside the edit; near it, ``edited`` with its bands drawn again."""
    from scipy import ndimage

    near = ndimage.binary_dilation(edited != filled, np.ones((3, 3)), iterations=2)
    out = mask.copy()
    out[near] = ignore_borders(edited)[near]
    return out


def _largest_object(
    filled: np.ndarray, objects: list[int], least: float
) -> tuple[int, np.ndarray] | None:
    """The class and pixels of the largest connected object covering at least ``least``."""
    from scipy import ndimage

    best, best_size = None, least
    for c in objects:
        parts, count = ndimage.label(filled == c)
        sizes = np.bincount(parts.ravel(), minlength=count + 1)[1:]
        if count and sizes.max() >= best_size:
            best, best_size = (c, parts == 1 + int(sizes.argmax())), sizes.max()
    return best


def _edit_largest(
    filled: np.ndarray, kind: str, rng: np.random.Generator, objects: list[int], background: int
) -> np.ndarray | None:
    """A missing object, a wrong class or a shifted boundary, on the largest object."""
    best = _largest_object(filled, objects, MIN_OBJECT * filled.size)
    if best is None:
        return None
    cls, where = best
    out = filled.copy()
    if kind == "missing object":
        out[where] = background
    elif kind == "wrong class":
        others = [c for c in objects if c != cls]
        if not others:
            return None
        out[where] = int(rng.choice(others))
    else:
        h, w = filled.shape
        step = max(3, round(SHIFT * min(h, w)))
        angle = rng.uniform(0, 2 * np.pi)
        dy, dx = round(step * np.sin(angle)), round(step * np.cos(angle))
        moved = np.zeros_like(where)
        ys, xs = np.nonzero(where)
        inside = (ys + dy >= 0) & (ys + dy < h) & (xs + dx >= 0) & (xs + dx < w)
        moved[ys[inside] + dy, xs[inside] + dx] = True
        out[where & ~moved] = background
        out[moved & (filled == background)] = cls
        if (out != filled).sum() < MIN_OBJECT / 2 * filled.size:
            return None  # an object cut by the border, moving out of the image
    return out


def _swap(filled: np.ndarray, objects: list[int]) -> np.ndarray | None:
    """The two object classes with the most pixels trade labels."""
    counts = np.bincount(filled.ravel(), minlength=256)
    ranked = sorted(objects, key=lambda c: -counts[c])
    if len(ranked) < 2 or counts[ranked[1]] < MIN_OBJECT * filled.size:
        return None
    a, b = ranked[:2]
    out = filled.copy()
    out[filled == a], out[filled == b] = b, a
    return out


def _plant_phantom(
    mask: np.ndarray, rng: np.random.Generator, objects: list[int], background: int
) -> np.ndarray | None:
    """Label a disc of background pixels (radius 15 % of the short side) as an object."""
    h, w = mask.shape
    r = 0.15 * min(h, w)
    yy, xx = np.mgrid[:h, :w]
    for _ in range(50):
        cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
        disc = (yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2 < r * r
        if np.mean(mask[disc] == background) >= 0.95:
            mask[disc] = int(rng.choice(objects))
            return mask
    return None


def write_planted_folder(
    out: str | Path,
    *,
    num_images: int = 120,
    share: float = 0.2,
    size: int = 128,
    seed: int = 0,
    split: str = "train",
    generator: str = "scenes",
    family: int | None = None,
    kinds: tuple[str, ...] = PLANTED_KINDS,
) -> dict[str, Any]:
    """Generate ``num_images`` scenes of ``split`` into the ``folder`` layout at ``out``, with
    errors planted in ``round(share · num_images)`` masks (``kinds`` in turn; a scene that
    cannot take its turn's kind stays clean), and ``out/planted_<split>.json`` = ``{"images":
    [{"image": path, "index", "kind", "box": [x0, y0, x1, y1], "pixels"}], ...}`` (the box and
    count of the pixels whose label changed)."""
    if not 0 < share < 1:
        raise UsageError(f"share must lie between 0 and 1, got {share}.")
    gen = get_generator(generator, family)
    out = Path(out)
    image_dir, mask_dir = out / "images" / split, out / "masks" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"{n} {r} {g} {b}" for n, (r, g, b) in zip(gen.class_names, gen.palette, strict=True)]
    atomic_write_text(out / "classes.txt", "\n".join(lines) + "\n")
    rng = np.random.default_rng([seed, 7])
    chosen = set(rng.choice(num_images, round(share * num_images), replace=False).tolist())
    planted: list[dict[str, Any]] = []
    for i in range(num_images):
        image, mask = gen.make(size, scene_rng(seed, split, i))
        image_path = image_dir / f"{i:06d}.png"
        if i in chosen:
            kind = kinds[len(planted) % len(kinds)]
            wrong = plant_error(mask, kind, rng, len(gen.class_names))
            if wrong is not None:
                ys, xs = np.nonzero(wrong != mask)
                box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
                entry = {"image": str(image_path), "index": i, "kind": kind, "box": box}
                planted.append(entry | {"pixels": len(ys)})
                mask = wrong
        save_image(Image.fromarray(image), image_path)
        save_index_png(mask, mask_dir / f"{i:06d}.png", gen.palette)
    key = {"split": split, "images": planted, "num_images": num_images, "seed": seed}
    key |= {"generator": gen.name, "size": size, "kinds": list(kinds)}
    atomic_write_text(out / f"planted_{split}.json", json.dumps(key, indent=1) + "\n")
    return key
