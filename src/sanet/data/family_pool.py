"""The pool of shapes and textures that the scene family (:mod:`sanet.data.family`) draws from.

Fourteen shapes and twelve textures, more than any fixed generator uses, so that every family
member gets its own vocabulary. A shape is an inside-test on coordinates normalised by the
object's radius (the unit circle is its extent); a texture is a grey level in [0, 1] on
object-frame pixel coordinates with a period in pixels. Two extra entries serve clutter only
and no class: the ``blob`` shape (an irregular outline) and the ``blotch`` texture (a smooth
random field).
"""

from __future__ import annotations

import numpy as np

from sanet.data.glyphs import value_noise
from sanet.errors import UsageError

SHAPES = (
    "disc",
    "square",
    "triangle",
    "ring",
    "cross",
    "star",
    "hexagon",
    "crescent",
    "arrow",
    "ellipse",
    "ell",
    "frame",
    "diamond",
    "half-disc",
)
TEXTURES = (
    "stripes",
    "checker",
    "dots",
    "hatch",
    "ripples",
    "grating",
    "zigzag",
    "concentric",
    "speckle",
    "plaid",
    "blocks",
    "diagonal",
)
#: used by clutter only: a wrong shape and a wrong texture for any class
CLUTTER_SHAPE, CLUTTER_TEXTURE = "blob", "blotch"


def inside(name: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Boolean inside-test of shape ``name`` at normalised coordinates ``(a, b)``."""
    aa, bb = np.abs(a), np.abs(b)
    d2 = a * a + b * b
    if name == "disc":
        return d2 < 1.0
    if name == "square":
        return np.maximum(aa, bb) < 0.8
    if name == "triangle":  # equilateral, inradius 0.5
        return (b < 0.5) & (0.866 * a - 0.5 * b < 0.5) & (-0.866 * a - 0.5 * b < 0.5)
    if name == "ring":
        return (d2 < 1.0) & (d2 > 0.36)
    if name == "cross":
        return ((aa < 0.3) & (bb < 1.0)) | ((bb < 0.3) & (aa < 1.0))
    if name == "star":  # five rounded points
        return np.sqrt(d2) < 0.62 + 0.38 * np.cos(5 * np.arctan2(b, a))
    if name == "hexagon":
        return np.maximum(bb, 0.866 * aa + 0.5 * bb) < 0.866
    if name == "crescent":
        return (d2 < 1.0) & ((a - 0.45) ** 2 + b * b > 0.64)
    if name == "arrow":
        shaft = (a > -1.0) & (a < 0.15) & (bb < 0.22)
        return shaft | ((a >= 0.15) & (a < 1.0) & (bb < 0.75 * (1.0 - a) / 0.85))
    if name == "ellipse":
        return a * a + (b / 0.55) ** 2 < 1.0
    if name == "ell":
        return ((a > -0.8) & (a < -0.3) & (bb < 0.9)) | ((aa < 0.8) & (b > 0.4) & (b < 0.9))
    if name == "frame":
        m = np.maximum(aa, bb)
        return (m < 0.85) & (m > 0.5)
    if name == "diamond":
        return aa + bb < 1.0
    if name == "half-disc":
        return (d2 < 1.0) & (b < 0.2)
    if name == "blob":  # a radius that wobbles with the angle
        theta = np.arctan2(b, a)
        return np.sqrt(d2) < 0.8 + 0.15 * np.sin(3 * theta) + 0.1 * np.cos(5 * theta)
    raise UsageError(f"family: unknown shape {name!r}; expected one of {', '.join(SHAPES)}")


def grey(name: str, u: np.ndarray, v: np.ndarray, p: float, rng: np.random.Generator):
    """Grey level in [0, 1] of texture ``name`` at object-frame pixels ``(u, v)``, period ``p``."""
    h, w = np.broadcast_shapes(u.shape, v.shape)
    k = 2 * np.pi / p
    if name == "stripes":
        return (np.sin(k * u) > 0).astype(np.float32)
    if name == "checker":
        return (np.sin(k * u) * np.sin(k * v) > 0).astype(np.float32)
    if name == "dots":
        du, dv = np.mod(u, p) - p / 2, np.mod(v, p) - p / 2
        return (du * du + dv * dv < (p / 3.2) ** 2).astype(np.float32)
    if name == "hatch":
        du, dv = np.abs(np.mod(u, p) - p / 2), np.abs(np.mod(v, p) - p / 2)
        return ((du < 0.8) | (dv < 0.8)).astype(np.float32)
    if name == "ripples":
        return (np.sin(k * np.sqrt(u * u + v * v)) > 0).astype(np.float32)
    if name == "grating":  # smooth, not binary
        return 0.5 + 0.5 * np.sin(k * u)
    if name == "zigzag":
        tri = np.abs(np.mod(v / p, 1.0) - 0.5) * p
        return (np.mod(u + tri, p) < p / 2).astype(np.float32)
    if name == "concentric":
        return (np.mod(np.maximum(np.abs(u), np.abs(v)) / p, 1.0) < 0.5).astype(np.float32)
    if name == "speckle":  # 1-pixel salt and pepper
        return (rng.random((h, w)) < 0.5).astype(np.float32)
    if name == "plaid":
        s = np.sin(k * u) + np.sin(k * v / 1.7)
        return np.digitize(s, [-0.6, 0.6]).astype(np.float32) / 2
    if name == "blocks":  # 2×2-pixel random cells
        cells = rng.random(((h + 1) // 2, (w + 1) // 2)).astype(np.float32)
        return np.repeat(np.repeat(cells, 2, 0), 2, 1)[:h, :w]
    if name == "diagonal":
        return (np.sin(k * (u + v) / 1.414) > 0.3).astype(np.float32)
    if name == "blotch":
        return value_noise(h, w, max(2, int(max(h, w) / (2 * p))), rng)
    raise UsageError(f"family: unknown texture {name!r}; expected one of {', '.join(TEXTURES)}")
