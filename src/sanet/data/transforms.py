"""Paired image/mask transforms (torchvision transforms v2 kernels, ``tv_tensors.Mask``).

Every transform is a callable ``(image, mask) -> (image, mask)`` that applies the *same*
geometry to both. Images are resampled bilinearly (with antialiasing), masks only ever with
nearest-neighbour (``NEAREST_EXACT``: the same half-pixel grid as bilinear, so edges line up).
Randomness comes from torch's global RNG only, so ``torch.manual_seed`` (and a DataLoader's
per-worker seeding) makes every crop reproducible — training resume depends on it.

The paper's recipe (Sec. 4; docs/paper-fidelity.md): random h-flip; long side resized to U(0.5, 2.0) × 520; pad to
480 (image 0, mask 255) on the right/bottom; random 480×480 crop; ImageNet mean/std.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from sanet.conventions import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD
from sanet.errors import UsageError

Pair = tuple[torch.Tensor, torch.Tensor]


def _as_pair(image: torch.Tensor, mask: torch.Tensor) -> Pair:
    """Wrap as tv_tensors; masks travel as uint8 (0..255) so nearest resizing is exact and fast."""
    if not isinstance(mask, tv_tensors.Mask):
        if mask.dtype != torch.uint8:
            if mask.numel() and (int(mask.min()) < 0 or int(mask.max()) > 255):
                raise UsageError(
                    f"mask values must be class ids 0..254 or 255 (ignore); found "
                    f"{int(mask.min())}..{int(mask.max())}. Fix: map labels before transforms."
                )
            mask = mask.to(torch.uint8)
        mask = tv_tensors.Mask(mask)
    if not isinstance(image, tv_tensors.Image):
        image = tv_tensors.Image(image)
    return image, mask


def _long_side_size(h: int, w: int, long_side: int) -> list[int]:
    if h >= w:
        return [long_side, max(1, int(w * long_side / h + 0.5))]
    return [max(1, int(h * long_side / w + 0.5)), long_side]


def _resize(image: torch.Tensor, mask: torch.Tensor, size: list[int], interpolation) -> Pair:
    image = F.resize(image, size, interpolation=interpolation, antialias=True)
    mask = F.resize(mask, size, interpolation=InterpolationMode.NEAREST_EXACT)
    return image, mask


class Compose:
    """Apply paired transforms in order."""

    def __init__(self, transforms: Sequence) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        image, mask = _as_pair(image, mask)
        for t in self.transforms:
            image, mask = t(image, mask)
        return image, mask

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(map(repr, self.transforms)) + ")"


class RandomHorizontalFlip:
    """Flip image and mask left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        if torch.rand(()) < self.p:
            return F.horizontal_flip(image), F.horizontal_flip(mask)
        return image, mask

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandomLongSideResize:
    """Resize so the long side is ``U(lo, hi) × base_size`` (aspect kept).

    ``base_size=0`` scales each image relative to its own long side (``U(lo, hi) × max(H, W)``):
    for datasets whose images are already at the size the model will be evaluated at.
    """

    def __init__(
        self,
        base_size: int,
        scale_range: tuple[float, float] = (0.5, 2.0),
        interpolation: InterpolationMode = InterpolationMode.BILINEAR,
    ) -> None:
        self.base_size, self.scale_range, self.interpolation = base_size, scale_range, interpolation

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        lo, hi = self.scale_range
        scale = lo + (hi - lo) * float(torch.rand(()))
        h, w = image.shape[-2:]
        base = self.base_size or max(h, w)
        long_side = max(1, int(base * scale + 0.5))
        size = _long_side_size(h, w, long_side)
        return _resize(image, mask, size, self.interpolation)

    def __repr__(self) -> str:
        return f"RandomLongSideResize(base_size={self.base_size}, scale_range={self.scale_range})"


class LongSideResize:
    """Resize so the long side is exactly ``size`` (aspect kept)."""

    def __init__(
        self, size: int, interpolation: InterpolationMode = InterpolationMode.BILINEAR
    ) -> None:
        self.size, self.interpolation = size, interpolation

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        size = _long_side_size(*image.shape[-2:], self.size)
        return _resize(image, mask, size, self.interpolation)

    def __repr__(self) -> str:
        return f"LongSideResize({self.size})"


class PadToSize:
    """Pad on the right/bottom to at least ``size``×``size``: image with 0, mask with 255."""

    def __init__(self, size: int, fill: int = 0, mask_fill: int = IGNORE_INDEX) -> None:
        self.size, self.fill, self.mask_fill = size, fill, mask_fill

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        h, w = image.shape[-2:]
        pad_h, pad_w = max(self.size - h, 0), max(self.size - w, 0)
        if pad_h == 0 and pad_w == 0:
            return image, mask
        padding = [0, 0, pad_w, pad_h]  # left, top, right, bottom
        return F.pad(image, padding, fill=self.fill), F.pad(mask, padding, fill=self.mask_fill)

    def __repr__(self) -> str:
        return f"PadToSize({self.size}, fill={self.fill}, mask_fill={self.mask_fill})"


class RandomCrop:
    """Crop the same random ``size``×``size`` window from both (input must be at least that)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        h, w = image.shape[-2:]
        if h < self.size or w < self.size:
            raise UsageError(
                f"RandomCrop({self.size}) got a {h}×{w} image: pad it to at least "
                f"{self.size}×{self.size} first (PadToSize({self.size}), as train_transforms does)."
            )
        top = int(torch.randint(0, h - self.size + 1, ()))
        left = int(torch.randint(0, w - self.size + 1, ()))
        return (
            F.crop(image, top, left, self.size, self.size),
            F.crop(mask, top, left, self.size, self.size),
        )

    def __repr__(self) -> str:
        return f"RandomCrop({self.size})"


def normalize_image(
    image: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """uint8 → float32 ``(x / 255 − mean) / std``: the one normalisation that training,
    validation, evaluation and prediction share (bit for bit).

    Shape: ``(…, 3, H, W)`` uint8 → the same shape, float32, on the input's device.
    """
    image = F.to_dtype(image, torch.float32, scale=True)
    return F.normalize(image, list(mean), list(std)).as_subclass(torch.Tensor)


class Normalize:
    """uint8 image -> float (x/255 - mean) / std (:func:`normalize_image`); mask -> int64."""

    def __init__(
        self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
    ) -> None:
        self.mean, self.std = list(mean), list(std)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        return normalize_image(image, self.mean, self.std), mask.as_subclass(torch.Tensor).long()

    def __repr__(self) -> str:
        return "Normalize(ImageNet)" if self.mean == list(IMAGENET_MEAN) else "Normalize()"


def train_transforms(
    base_size: int = 520,
    crop_size: int = 480,
    scale_range: tuple[float, float] = (0.5, 2.0),
    flip: bool = True,
    interpolation: InterpolationMode = InterpolationMode.BILINEAR,
) -> Compose:
    """The paper's train pipeline (Sec. 4) for uint8 image + integer mask.

    ``base_size=0`` resizes relative to each image's own long side (see
    :class:`RandomLongSideResize`).

    Shape:
        image (3, H, W) uint8, mask (H, W) int -> image (3, crop, crop) float32 normalised,
        mask (crop, crop) int64 with 255 where padded.
    """
    steps = [RandomHorizontalFlip()] if flip else []
    steps += [
        RandomLongSideResize(base_size, scale_range, interpolation),
        PadToSize(crop_size),
        RandomCrop(crop_size),
        Normalize(),
    ]
    return Compose(steps)


def eval_transforms(base_size: int | None = None) -> Compose:
    """Evaluation: optional long-side resize to ``base_size``, then ImageNet normalisation.

    Shape:
        image (3, H, W) uint8, mask (H, W) int -> float32 (3, H', W'), int64 (H', W').
    """
    steps = [LongSideResize(base_size)] if base_size else []
    return Compose([*steps, Normalize()])


def denormalize(
    image: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """Undo ``Normalize``: float (…, 3, H, W) -> uint8 (…, 3, H, W) for display."""
    m = torch.tensor(mean, dtype=image.dtype, device=image.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return ((image * s + m) * 255.0).round().clamp(0, 255).to(torch.uint8)
