"""Synthetic scenes with planted label errors: how ``sanet audit-labels`` is measured
(docs/trust.md, ``benchmarks/audit_planted.py``).

Three kinds of error a user meets, each planted in a clean generated mask:

- ``unlabelled object``: the largest object is labelled background;
- ``wrong class``: the largest object is labelled as another object class;
- ``labelled where nothing is``: a disc on the background is labelled as an object class.

The images are untouched; only the masks lie. :func:`write_planted_folder` writes a ``folder``
dataset (docs/datasets.md) and ``planted.json``, the answer key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sanet._files import atomic_write_text
from sanet.conventions import IGNORE_INDEX
from sanet.data.formats import save_image, save_index_png
from sanet.data.synthetic import get_generator, scene_rng
from sanet.errors import UsageError

PLANTED_KINDS = ("unlabelled object", "wrong class", "labelled where nothing is")
MIN_OBJECT = 0.02  # least share of the image an object must cover to be mislabelled


def plant_error(
    mask: np.ndarray, kind: str, rng: np.random.Generator, num_classes: int, background: int = 0
) -> np.ndarray | None:
    """A copy of ``mask`` with one planted error of ``kind``, or ``None`` when the scene has no
    object (or no background) large enough for it.

    Shape: mask ``(H, W)`` uint8 ids and 255.
    """
    from scipy import ndimage

    if kind not in PLANTED_KINDS:
        raise UsageError(f"Unknown planted error {kind!r}; expected one of {PLANTED_KINDS}.")
    out = mask.copy()
    objects = [c for c in range(num_classes) if c != background]
    if kind == PLANTED_KINDS[2]:
        return _plant_phantom(out, rng, objects, background)
    best, best_size = None, MIN_OBJECT * mask.size
    for c in objects:
        parts, count = ndimage.label(mask == c)
        sizes = np.bincount(parts.ravel(), minlength=count + 1)[1:]
        if count and sizes.max() >= best_size:
            best, best_size = (c, parts == 1 + int(sizes.argmax())), sizes.max()
    if best is None:
        return None
    cls, where = best
    others = [c for c in objects if c != cls]
    out[where] = background if kind == PLANTED_KINDS[0] else int(rng.choice(others))
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
        inside = mask[disc]
        if np.mean((inside == background) | (inside == IGNORE_INDEX)) >= 0.95:
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
) -> dict[str, Any]:
    """Generate ``num_images`` scenes of ``split`` into the ``folder`` layout at ``out``, with
    errors planted in ``round(share · num_images)`` masks (kinds in turn), and
    ``out/planted.json`` = ``{"images": [{"image": path, "kind": ...}], ...}``."""
    if not 0 < share < 1:
        raise UsageError(f"share must lie between 0 and 1, got {share}.")
    gen = get_generator(generator)
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
            kind = PLANTED_KINDS[len(planted) % len(PLANTED_KINDS)]
            wrong = plant_error(mask, kind, rng, len(gen.class_names))
            if wrong is not None:
                mask = wrong
                planted.append({"image": str(image_path), "kind": kind})
        save_image(Image.fromarray(image), image_path)
        save_index_png(mask, mask_dir / f"{i:06d}.png", gen.palette)
    key = {"split": split, "images": planted, "num_images": num_images, "seed": seed}
    atomic_write_text(out / "planted.json", json.dumps(key, indent=1) + "\n")
    return key
