"""Generated scenes that a fixed colour model segments imperfectly: the ground truth of the
trust tests (calibration, risk control, label audit), with no training.

Each scene is a background (class 0) with two or three discs of classes 1..3; every pixel is its
class colour plus Gaussian noise whose level differs from scene to scene (easy and hard images).
:class:`ColourModel` classifies each pixel by its nearest class colour with logits scaled by
``scale``: over-confident, and wrong where the noise pushes a pixel towards another colour.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from sanet.data.transforms import normalize_image

NAMES = ["background", "red", "green", "blue"]
COLOURS = np.array([[110, 110, 110], [200, 70, 70], [70, 190, 70], [70, 70, 200]], np.uint8)
PALETTE = [tuple(int(v) for v in c) for c in COLOURS]


class ColourModel(nn.Module):
    """Logits ``−scale · ‖x − μ_k‖²`` per pixel (``μ_k`` the normalised class colours)."""

    def __init__(self, scale: float = 6.0) -> None:
        super().__init__()
        colours = torch.from_numpy(COLOURS)[:, :, None, None]  # (K, 3, 1, 1) uint8
        self.register_buffer("mu", normalize_image(colours))
        self.scale = scale

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        d = ((x[:, None] - self.mu[None]) ** 2).sum(2)  # (N, K, H, W)
        return {"out": -self.scale * d}


def make_scene(rng: np.random.Generator, size: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """``(image (H, W, 3) uint8, mask (H, W) uint8)``."""
    mask = np.zeros((size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size] + 0.5
    for _ in range(int(rng.integers(2, 4))):
        r = size * rng.uniform(0.15, 0.25)
        cy, cx = rng.uniform(r, size - r, 2)
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(1, len(NAMES))
    sigma = rng.uniform(15, 60)
    image = COLOURS[mask].astype(np.float64) + rng.normal(0, sigma, (size, size, 3))
    return np.clip(image, 0, 255).round().astype(np.uint8), mask


def scenes(seed: int, n: int, size: int = 40) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` scenes as ``(uint8 (3, H, W), int64 (H, W))`` pairs, a dataset for the library."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        image, mask = make_scene(rng, size)
        out.append(
            (torch.from_numpy(image).permute(2, 0, 1).contiguous(), torch.from_numpy(mask).long())
        )
    return out


# --------------------------------------------------- a folder dataset and a model on disk (verbs)

FOLDER_NAMES = ["background", "disc", "square"]


def write_folder_dataset(root: Path, stems: str = "abcd") -> Path:
    """A 3-class ``folder`` dataset at ``root``, split val: one random 41×47 image and mask per
    letter of ``stems``, the top three rows of each mask ignored (255)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "classes.txt").write_text("\n".join(FOLDER_NAMES) + "\n")
    for stem in stems:
        for sub in ("images/val", "masks/val"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        image = rng.integers(0, 256, (41, 47, 3), np.uint8)
        Image.fromarray(image).save(root / "images/val" / f"{stem}.png")
        mask = rng.integers(0, 3, (41, 47)).astype(np.uint8)
        mask[:3] = 255
        Image.fromarray(mask).save(root / "masks/val" / f"{stem}.png")
    return root


def save_sharp_model(folder: Path) -> Path:
    """An untrained 3-class FCN-resnet10t with sharpened logits (an over-confident model),
    saved with ``save_pretrained`` into ``folder``."""
    import sanet

    torch.manual_seed(0)
    model = sanet.build_model("fcn", backbone="resnet10t", num_classes=3)
    with torch.no_grad():
        for p in model.head.parameters():
            p.mul_(3.0)
    model.save_pretrained(folder, metadata={"class_names": FOLDER_NAMES})
    return folder
