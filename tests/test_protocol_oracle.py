"""The evaluation protocol (SPEC §2.5) against an independent, plain implementation.

The reference below is written from the protocol's description, not from ``protocol.py``: per
scale, resize the image with ``F.interpolate``; enumerate ``crop`` windows every ``stride`` px
with the last one on the border; run each window (and its mirror image, un-mirrored); softmax;
add into an accumulator and a counter; divide; resize back to the input size; average the
scales. One forward per window, no batching, no bands.

The model is chosen so that every step shows in the numbers: a fixed 1×1 convolution of a
structured image (the per-scale resize changes its values), plus a term that depends on each
pixel's position *inside the tile the model is given* (so which window a pixel came from, its
offset, and whether the mirror image was un-mirrored all change the probabilities).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sanet.inference import PAPER_SCALES, EvalProtocol, predict_mask, predict_proba

K = 4


class PositionalConv(nn.Module):
    """``logits = W·x + b + u·(column / (w−1)) + v·(row / (h−1))`` over the tile it is given."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.weight = torch.randn(K, 3, generator=g)
        self.bias = torch.randn(K, generator=g)
        self.col = 3 * torch.randn(K, generator=g)
        self.row = 3 * torch.randn(K, generator=g)
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.shapes.append(tuple(x.shape))
        _, _, h, w = x.shape
        cols = torch.arange(w, dtype=torch.float32) / max(w - 1, 1)
        rows = torch.arange(h, dtype=torch.float32) / max(h - 1, 1)
        logits = torch.einsum("kc,nchw->nkhw", self.weight, x) + self.bias[:, None, None]
        logits = logits + self.col[:, None, None] * cols + self.row[:, None, None] * rows[:, None]
        return {"out": logits}


def structured_image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Smooth blobs plus fine noise: resizing it changes pixel values at every scale."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 3, max(2, h // 6), max(2, w // 6), generator=g)
    smooth = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)[0]
    return 1.5 * smooth + 0.3 * torch.randn(3, h, w, generator=g)


# ---------------------------------------------------------------------------------------------
# The reference: one obvious loop per step of the protocol
# ---------------------------------------------------------------------------------------------


def ref_size(h: int, w: int, scale: float, base_size: int | None) -> tuple[int, int]:
    """Long side ``base_size · s`` (aspect kept), or both sides × s without a base size."""
    if base_size is None:
        return round(h * scale), round(w * scale)
    long_side = round(base_size * scale)
    if h >= w:
        return long_side, round(w * long_side / h)
    return round(h * long_side / w), long_side


def ref_starts(size: int, window: int, stride: int) -> list[int]:
    """0, stride, 2·stride, ... while the window fits, then one window ending on the border."""
    starts = [0]
    while starts[-1] + window < size:
        starts.append(min(starts[-1] + stride, size - window))
    return starts


def ref_tile_probs(model: nn.Module, tile: torch.Tensor) -> torch.Tensor:
    """Softmax of one tile; tiles under 32 px are zero-padded at the bottom/right, then cut."""
    h, w = tile.shape[-2:]
    padded = torch.zeros(3, max(h, 32), max(w, 32))
    padded[:, :h, :w] = tile
    return model(padded[None])["out"][0, :, :h, :w].softmax(dim=0)


def ref_scale_probs(model, image, crop, stride, flip) -> torch.Tensor:
    """Sliding-window probabilities of an image at its current size."""
    h, w = image.shape[-2:]
    ch, cw = min(crop, h), min(crop, w)
    total, count = torch.zeros(K, h, w), torch.zeros(h, w)
    for y in ref_starts(h, ch, stride):
        for x in ref_starts(w, cw, stride):
            tile = image[:, y : y + ch, x : x + cw]
            p = ref_tile_probs(model, tile)
            if flip:
                mirrored = ref_tile_probs(model, tile.flip(-1))
                p = (p + mirrored.flip(-1)) / 2
            total[:, y : y + ch, x : x + cw] += p
            count[y : y + ch, x : x + cw] += 1
    assert count.min() >= 1  # every pixel covered
    return total / count


def reference_proba(model, image, scales, flip, base_size, crop, stride) -> torch.Tensor:
    H, W = image.shape[-2:]
    out = torch.zeros(K, H, W)
    for s in scales:
        h, w = ref_size(H, W, s, base_size)
        x = F.interpolate(image[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        p = ref_scale_probs(model, x, crop, stride, flip)
        out += F.interpolate(p[None], size=(H, W), mode="bilinear", align_corners=False)[0]
    return out / len(scales)


# ---------------------------------------------------------------------------------------------
# The reference itself, checked by hand where it matters
# ---------------------------------------------------------------------------------------------


def test_reference_windows_and_sizes_by_hand() -> None:
    assert ref_starts(70, 48, 32) == [0, 22]  # overlap, last window on the border
    assert ref_starts(101, 48, 32) == [0, 32, 53]
    assert ref_starts(101, 40, 40) == [0, 40, 61]  # stride = crop: no overlap but the last
    assert ref_starts(48, 48, 32) == [0]
    assert ref_size(60, 80, 1.75, 64) == (84, 112)  # landscape: the width is the long side
    assert ref_size(97, 45, 0.5, 64) == (32, 15)  # portrait: 45·32/97 = 14.8 → 15
    assert ref_size(45, 61, 1.5, None) == (68, 92)  # 67.5 rounds to even, 91.5 too


def test_the_model_is_not_translation_or_mirror_invariant() -> None:
    """Otherwise windows and flips could be wrong without changing any number."""
    model = PositionalConv()
    image = structured_image(40, 50)
    whole = ref_tile_probs(model, image)
    assert not torch.allclose(ref_tile_probs(model, image[:, :, 10:]), whole[:, :, 10:], atol=1e-3)
    assert not torch.allclose(ref_tile_probs(model, image.flip(-1)).flip(-1), whole, atol=1e-3)


# ---------------------------------------------------------------------------------------------
# predict_proba against the reference
# ---------------------------------------------------------------------------------------------

CASES = {
    # name: (image H, W, protocol keyword arguments)
    "single-native-one-window": (45, 61, dict()),
    "single-sliding-overlap": (70, 101, dict(crop_size=48, stride=32)),
    "single-sliding-stride-eq-crop": (70, 101, dict(crop_size=40, stride=40)),
    "single-flip-sliding": (65, 97, dict(flip=True, crop_size=48, stride=20)),
    "single-base-size": (45, 61, dict(base_size=80, crop_size=48, stride=32)),
    "multi-base-portrait": (
        97,
        45,
        dict(scales=(0.5, 1.25, 1.75), base_size=64, crop_size=48, stride=32),
    ),
    "multi-native-flip": (45, 61, dict(scales=(0.75, 1.5), flip=True, crop_size=40, stride=27)),
    "paper-ms-flip": (
        60,
        80,
        dict(scales=PAPER_SCALES, flip=True, base_size=72, crop_size=64, stride=43),
    ),
    "tiles-under-32px": (21, 27, dict(scales=(1.0, 1.5), flip=True)),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_predict_proba_matches_the_reference(case: str) -> None:
    h, w, kwargs = CASES[case]
    model, image = PositionalConv(), structured_image(h, w)
    want = reference_proba(
        model,
        image,
        kwargs.get("scales", (1.0,)),
        kwargs.get("flip", False),
        kwargs.get("base_size"),
        kwargs.get("crop_size", 480),
        kwargs.get("stride", 320),
    )
    for window_batch, band_rows in ((1, 256), (3, 7)):  # batching and banding change nothing
        protocol = EvalProtocol(window_batch=window_batch, band_rows=band_rows, **kwargs)
        got = predict_proba(model, image, protocol)
        torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)


def test_batch_of_images_equals_each_image_alone() -> None:
    model = PositionalConv()
    images = torch.stack([structured_image(45, 61, seed) for seed in (1, 2)])
    protocol = EvalProtocol(scales=(0.75, 1.25), flip=True, base_size=64, crop_size=40, stride=24)
    got = predict_proba(model, images, protocol)
    assert got.shape == (2, K, 45, 61)
    for i in range(2):
        want = reference_proba(model, images[i], (0.75, 1.25), True, 64, 40, 24)
        torch.testing.assert_close(got[i], want, atol=2e-6, rtol=1e-5)


def test_predict_mask_is_the_reference_argmax() -> None:
    model, image = PositionalConv(), structured_image(70, 101, seed=3)
    kwargs = dict(scales=(0.5, 1.0, 1.5), flip=True, base_size=96, crop_size=48, stride=32)
    want = reference_proba(model, image, (0.5, 1.0, 1.5), True, 96, 48, 32)
    got = predict_mask(model, image, EvalProtocol(band_rows=9, **kwargs))
    top2 = want.topk(2, dim=0).values
    clear = (top2[0] - top2[1]) > 1e-4  # pixels whose winner float rounding cannot change
    assert clear.float().mean() > 0.99
    assert torch.equal(got[clear], want.argmax(0)[clear])


def test_the_model_sees_exactly_the_protocols_windows() -> None:
    """Every forward holds crop × crop tiles; 2 rows × 3 columns of windows, each with its mirror."""
    model = PositionalConv()
    protocol = EvalProtocol(flip=True, crop_size=48, stride=32)
    predict_proba(model, structured_image(70, 101), protocol)
    assert {shape[1:] for shape in model.shapes} == {(3, 48, 48)}
    assert sum(shape[0] for shape in model.shapes) == 12
