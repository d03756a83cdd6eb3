"""Paired transforms: alignment (hypothesis), padding values, determinism, normalisation."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.transforms.v2 import InterpolationMode

from sanet.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LongSideResize,
    PadToSize,
    denormalize,
    eval_transforms,
    train_transforms,
)

# 8 classes coded in the image's own pixels: the corners of a colour cube. A blend of corners
# (bilinear resampling) is never close to another corner, so a pixel whose colour is within a
# few levels of corner k holds (almost) only class k — wherever the mask says otherwise, the
# two are misaligned.
_CODES = torch.tensor(
    [[r, g, b] for r in (40, 215) for g in (40, 215) for b in (40, 215)], dtype=torch.uint8
)


def _coded_pair(h: int, w: int, block: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random blocky class map, its image is the class colour of each pixel."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, 8, ((h + block - 1) // block, (w + block - 1) // block), generator=g)
    mask = coarse.repeat_interleave(block, 0).repeat_interleave(block, 1)[:h, :w]
    image = _CODES[mask].permute(2, 0, 1).contiguous()
    return image, mask


def _decode(image_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(nearest code, L1 distance to it) per pixel; code -1 for the black padding."""
    pix = image_uint8.permute(1, 2, 0).reshape(-1, 1, 3).int()
    dist = (pix - _CODES.int().unsqueeze(0)).abs().sum(-1)
    best, cls = dist.min(-1)
    cls[pix.reshape(-1, 3).sum(-1) == 0] = -1
    shape = image_uint8.shape[1:]
    return cls.view(shape), best.view(shape)


@settings(max_examples=25, deadline=None)
@given(
    h=st.integers(5, 60),
    w=st.integers(5, 60),
    block=st.integers(1, 6),
    base=st.integers(8, 64),
    crop=st.integers(4, 48),
    seed=st.integers(0, 2**16),
)
def test_mask_drawn_from_image_stays_aligned_nearest(h, w, block, base, crop, seed):
    """With nearest resampling for the image too, every pixel must decode to its mask label."""
    image, mask = _coded_pair(h, w, block, seed)
    torch.manual_seed(seed)
    t = train_transforms(base, crop, interpolation=InterpolationMode.NEAREST_EXACT)
    out_img, out_mask = t(image, mask)
    assert out_img.shape == (3, crop, crop) and out_mask.shape == (crop, crop)
    decoded, _ = _decode(denormalize(out_img))
    padded = out_mask == 255
    assert torch.equal(decoded[padded], torch.full_like(decoded[padded], -1))
    assert torch.equal(decoded[~padded], out_mask[~padded])


@settings(max_examples=20, deadline=None)
@given(
    h=st.integers(5, 64),
    w=st.integers(5, 64),
    block=st.integers(1, 8),
    base=st.integers(8, 96),
    crop=st.integers(4, 48),
    seed=st.integers(0, 2**16),
)
def test_mask_drawn_from_image_stays_aligned_bilinear(h, w, block, base, crop, seed):
    """With the real (bilinear, antialiased) resampling, every unblended pixel agrees."""
    image, mask = _coded_pair(h, w, block, seed)
    torch.manual_seed(seed)
    out_img, out_mask = train_transforms(base, crop)(image, mask)
    decoded, dist = _decode(denormalize(out_img))
    padded = out_mask == 255
    assert torch.equal(decoded[padded], torch.full_like(decoded[padded], -1))
    pure = (dist <= 6) & ~padded
    assert torch.equal(decoded[pure], out_mask[pure])


def test_bilinear_alignment_check_has_teeth():
    """Large blocks: most pixels are unblended, and a 1-pixel shift of the mask is caught."""
    image, mask = _coded_pair(64, 64, 16, 0)
    torch.manual_seed(0)
    out_img, out_mask = train_transforms(64, 48, flip=False)(image, mask)
    decoded, dist = _decode(denormalize(out_img))
    pure = (dist <= 6) & (out_mask != 255)
    assert pure.float().mean() > 0.5
    assert torch.equal(decoded[pure], out_mask[pure])
    shifted = torch.roll(out_mask, 1, dims=1)
    assert not torch.equal(decoded[pure], shifted[pure])


def test_pad_fills_zero_image_and_255_mask_on_right_bottom():
    image = torch.full((3, 2, 3), 9, dtype=torch.uint8)
    mask = torch.ones(2, 3, dtype=torch.int64)
    from sanet.data.transforms import _as_pair

    out_img, out_mask = PadToSize(4)(*_as_pair(image, mask))
    assert out_mask.tolist() == [[1, 1, 1, 255], [1, 1, 1, 255], [255] * 4, [255] * 4]
    assert out_img[:, :2, :3].eq(9).all() and out_img[:, 2:].eq(0).all()
    assert out_img[:, :, 3:].eq(0).all()


def test_long_side_resize_keeps_aspect_and_mask_values():
    image = torch.zeros(3, 30, 60, dtype=torch.uint8)
    mask = torch.zeros(30, 60, dtype=torch.int64)
    mask[:, 30:] = 5
    from sanet.data.transforms import _as_pair

    out_img, out_mask = LongSideResize(20)(*_as_pair(image, mask))
    assert out_img.shape == (3, 10, 20) and out_mask.shape == (10, 20)
    assert set(out_mask.unique().tolist()) == {0, 5}  # nearest: no new values
    assert out_mask[:, :10].eq(0).all() and out_mask[:, 10:].eq(5).all()


def test_scale_range_of_long_side():
    image = torch.zeros(3, 40, 80, dtype=torch.uint8)
    mask = torch.zeros(40, 80, dtype=torch.int64)
    from sanet.data.transforms import RandomLongSideResize, _as_pair

    torch.manual_seed(0)
    longs = {RandomLongSideResize(100)(*_as_pair(image, mask))[0].shape[-1] for _ in range(200)}
    assert min(longs) >= 50 and max(longs) <= 200 and len(longs) > 50


def test_base_size_zero_scales_each_image_by_its_own_long_side():
    from sanet.data.transforms import Compose, RandomLongSideResize

    resize = Compose([RandomLongSideResize(0, (0.5, 1.5))])
    torch.manual_seed(0)
    for h, w in ((40, 80), (90, 30)):
        image, mask = torch.zeros(3, h, w, dtype=torch.uint8), torch.zeros(h, w)
        longs = {max(resize(image, mask)[0].shape[-2:]) for _ in range(100)}
        assert min(longs) >= max(h, w) // 2 and max(longs) <= 1.5 * max(h, w) and len(longs) > 20


def test_deterministic_under_manual_seed():
    image, mask = _coded_pair(50, 70, 5, 0)
    t = train_transforms(64, 32)
    torch.manual_seed(123)
    a = [t(image, mask) for _ in range(3)]
    torch.manual_seed(123)
    b = [t(image, mask) for _ in range(3)]
    for (ia, ma), (ib, mb) in zip(a, b, strict=True):
        assert torch.equal(ia, ib) and torch.equal(ma, mb)
    assert not torch.equal(a[0][0], a[1][0])


def test_flip_happens_about_half_the_time():
    image = torch.zeros(3, 4, 4, dtype=torch.uint8)
    image[:, :, 0] = 200  # left column bright
    mask = torch.zeros(4, 4, dtype=torch.int64)
    t = train_transforms(4, 4, scale_range=(1.0, 1.0))
    torch.manual_seed(0)
    flips = sum(int(denormalize(t(image, mask)[0])[0, 0, 3] > 100) for _ in range(200))
    assert 70 < flips < 130


def test_normalisation_and_denormalize_roundtrip():
    image = torch.randint(0, 256, (3, 7, 9), dtype=torch.uint8)
    mask = torch.zeros(7, 9, dtype=torch.int64)
    out_img, out_mask = eval_transforms()(image, mask)
    assert out_img.dtype == torch.float32 and type(out_img) is torch.Tensor
    assert out_mask.dtype == torch.int64 and type(out_mask) is torch.Tensor
    # pixel value 255 in channel 0 -> (1 - 0.485) / 0.229 (computed by hand)
    expected = (image[0, 0, 0].item() / 255 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    assert abs(out_img[0, 0, 0].item() - expected) < 1e-5
    assert torch.equal(denormalize(out_img), image)
    assert torch.equal(denormalize(out_img[None])[0], image)


def test_eval_resize_odd_size():
    image = torch.zeros(3, 45, 97, dtype=torch.uint8)
    mask = torch.full((45, 97), 3, dtype=torch.int64)
    out_img, out_mask = eval_transforms(base_size=65)(image, mask)
    assert out_img.shape == (3, 30, 65) and out_mask.shape == (30, 65)
    assert out_mask.eq(3).all()
