"""Shifted outlines in a label audit (docs/trust.md, "Label audit"): an object whose labelled
outline is displaced from where a confident model sees it.

A shift leaves two thin strips on either side of the object — background labelled as the object
on one side, the object labelled background on the other — each too small to stand out as a
region (:func:`~sanet.trust.audit.label_regions`). Moving the labelled object by the offset
explains both at once, which no clean object gains from. For every labelled object (a connected
component of one object class) and every offset ``d`` with ``|dx|, |dy| ≤ reach``, the *gain*
is what moving its pixels by ``d`` — the background it then covers becomes the object, the
pixels it leaves become background — would change in the confident agreement with the model:

    gain(d) = Σ_{x ∈ L+d} w(x) − Σ_{x ∈ L} w(x),
    w(x) = conf(x) · ([pred = c] − [pred = background])  where conf(x) ≥ confidence, else 0,

over the pixels labelled background, ignore or the object itself (other objects are not painted
over). A pixel that turns from confidently contradicted to confidently agreed counts its
confidence; pixels the model is unsure of, or gives a third class, count nothing. The object's
*shift evidence* is the largest gain over the offsets, with the offset.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sanet.conventions import IGNORE_INDEX

#: the largest shift looked for, as a share of the image's short side (4 px at 64² is 6 %)
REACH = 0.125


def boundary_shifts(
    pred: np.ndarray,
    conf: np.ndarray,
    label: np.ndarray,
    class_names: Sequence[str],
    background: int,
    confidence: float,
    least: int,
    reach: float = REACH,
) -> list[dict[str, Any]]:
    """The labelled objects whose outline a shift of at most ``reach`` of the short side would
    move onto the model's confident prediction, explaining at least ``least`` confidence-weighted
    pixels; largest evidence first.

    Shape: ``pred``, ``conf``, ``label`` ``(H, W)``: arg-max, its probability, the label (ids
    and 255).

    Returns:
        one ``{"kind": "shifted boundary", "label", "label_id", "pixels", "box", "offset":
        [dx, dy], "explained", "evidence"}`` per such object: ``pixels`` its labelled pixels,
        ``box`` (x0, y0, x1, y1) of them, ``offset`` the shift that best fits the model
        (where the label should move), ``explained`` the pixels that shift turns from
        confidently contradicted to confidently agreed, net, and ``evidence`` the same weighted
        by confidence (the gain).
    """
    from scipy import ndimage

    r = max(1, round(reach * min(label.shape)))
    sure = conf >= confidence
    bg = sure & (pred == background)
    free = (label == background) | (label == IGNORE_INDEX)  # what a moved object may cover
    found = []
    for c in np.unique(label[(label != IGNORE_INDEX) & (label != background)]):
        parts, count = ndimage.label(label == c, np.ones((3, 3)))
        sizes = np.bincount(parts.ravel(), minlength=count + 1)
        signs = (sure & (pred == c)).astype(float) - bg  # +1 agrees with c, −1 with background
        for k in np.flatnonzero(sizes[1:] >= least) + 1:
            obj = parts == k
            shift = _best_shift(np.where(free | obj, signs, 0.0), conf, obj, r)
            if shift["evidence"] >= least * confidence:
                found.append(
                    {"kind": "shifted boundary", "label": class_names[int(c)], "label_id": int(c)}
                    | {"pixels": int(sizes[k])}
                    | shift
                )
    found.sort(key=lambda s: -s["evidence"])
    return found


def _best_shift(signs: np.ndarray, conf: np.ndarray, obj: np.ndarray, r: int) -> dict[str, Any]:
    """The offset (at most ``r`` px each way) whose move of the object ``obj`` gains the most
    confidence-weighted agreement (``signs`` · ``conf``, 0 where it may not move), with the box
    of ``obj``, the net pixels it explains and that gain."""
    from scipy import signal

    ys, xs = np.nonzero(obj)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    kernel = obj[y0:y1, x0:x1].astype(float)

    def gains(w: np.ndarray) -> np.ndarray:  # (2r+1, 2r+1): offset (dy, dx) at [dy + r, dx + r]
        window = np.pad(w, r)[y0 : y1 + 2 * r, x0 : x1 + 2 * r]
        out = signal.correlate(window, kernel, mode="valid")
        return out - out[r, r]

    weighted = gains(signs * conf)
    dy, dx = np.unravel_index(int(weighted.argmax()), weighted.shape)
    return {
        "box": [int(x0), int(y0), int(x1), int(y1)],
        "offset": [int(dx) - r, int(dy) - r],
        "explained": round(float(gains(signs)[dy, dx])),
        "evidence": float(weighted[dy, dx]),
    }
