"""Pictures people look at: palettes, index PNGs, overlays, metric plots.

All plotting uses matplotlib's Agg backend (no display needed) and writes PNGs atomically.
Masks are ``(H, W)`` integer arrays of class ids with 255 for "ignore"/"unlabelled".
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sanet._files import atomic_save_bytes
from sanet.conventions import IGNORE_INDEX
from sanet.data.classes import voc_palette
from sanet.errors import UsageError

logger = logging.getLogger(__name__)

IGNORE_COLOR = (255, 255, 255)  # how ignore (255) pixels are drawn in colour images


def default_palette(num_colors: int = 256) -> list[tuple[int, int, int]]:
    """The PASCAL VOC bit-interleaved colour map (class 0 black), extended to ``num_colors``."""
    return voc_palette(num_colors)


def _full_palette(palette: Sequence[Sequence[int]] | None) -> list[tuple[int, int, int]]:
    """A 256-entry palette: the given colours, VOC colours after them, 255 → ``IGNORE_COLOR``."""
    base = default_palette(256)
    given = [tuple(int(v) for v in c[:3]) for c in (palette or [])][:255]
    full = given + base[len(given) :]
    full[IGNORE_INDEX] = IGNORE_COLOR
    return full  # type: ignore[return-value]


def _to_numpy_mask(mask: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise UsageError(f"Expected an (H, W) mask, got shape {mask.shape}.")
    return mask


def mask_to_pil(
    mask: torch.Tensor | np.ndarray, palette: Sequence[Sequence[int]] | None = None
) -> Image.Image:
    """An index ("P" mode) PNG image of class ids with the dataset palette attached."""
    mask = _to_numpy_mask(mask)
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise UsageError(
            f"Class ids must lie in 0..255 for an index PNG, got {mask.min()}..{mask.max()}."
        )
    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    img.putpalette([v for c in _full_palette(palette) for v in c])
    return img


def colorize(
    mask: torch.Tensor | np.ndarray, palette: Sequence[Sequence[int]] | None = None
) -> np.ndarray:
    """``(H, W)`` class ids → ``(H, W, 3)`` uint8 RGB."""
    mask = _to_numpy_mask(mask)
    lut = np.array(_full_palette(palette), dtype=np.uint8)
    return lut[np.clip(mask, 0, 255).astype(np.int64)]


def to_rgb_array(image: Any) -> np.ndarray:
    """A PIL image, ``(H, W, 3)`` uint8 array or ``(3, H, W)`` uint8 tensor → ``(H, W, 3)`` uint8."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.ndim == 3 and image.shape[0] == 3:
            image = image.permute(1, 2, 0)
        image = image.numpy()
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (3, 4) or image.dtype != np.uint8:
        raise UsageError(f"Expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}.")
    return np.ascontiguousarray(image[..., :3])


def overlay(
    image: Any,
    mask: torch.Tensor | np.ndarray,
    palette: Sequence[Sequence[int]] | None = None,
    alpha: float = 0.5,
) -> np.ndarray:
    """Blend the colourised mask over the image; ignore pixels keep the image. ``(H, W, 3)`` uint8."""
    rgb = to_rgb_array(image)
    mask = _to_numpy_mask(mask)
    if rgb.shape[:2] != mask.shape:
        raise UsageError(f"Image {rgb.shape[:2]} and mask {mask.shape} sizes differ.")
    colour = colorize(mask, palette).astype(np.float32)
    out = rgb.astype(np.float32)
    blend = (1 - alpha) * out + alpha * colour
    keep = (mask == IGNORE_INDEX)[..., None]
    return np.where(keep, out, blend).round().clip(0, 255).astype(np.uint8)


def draw_legend(
    rgb: np.ndarray,
    class_ids: Sequence[int],
    class_names: Sequence[str] | None,
    palette: Sequence[Sequence[int]] | None = None,
) -> Image.Image:
    """The image with a class legend (one swatch and name per id) drawn in its top-left corner.

    The legend is drawn *on* the image on a half-transparent white box, so the result keeps the
    input's size; on small images only the entries that fit are drawn.
    """
    from PIL import ImageDraw, ImageFont

    full = _full_palette(palette)
    h, w = rgb.shape[:2]
    font = ImageFont.load_default()
    row_h, pad, swatch = 12, 3, 9
    entries = [
        (k, class_names[k] if class_names and 0 <= k < len(class_names) else str(k))
        for k in class_ids
    ]
    entries = entries[: max(0, (h - 2 * pad) // row_h)]
    base = Image.fromarray(rgb).convert("RGBA")
    if not entries:
        return base.convert("RGB")
    box_w = min(w, 2 * pad + swatch + 4 + max(int(font.getlength(n)) for _, n in entries))
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    draw.rectangle([0, 0, box_w, 2 * pad + row_h * len(entries)], fill=(255, 255, 255, 170))
    for i, (k, name) in enumerate(entries):
        y = pad + i * row_h
        draw.rectangle([pad, y + 1, pad + swatch, y + 1 + swatch], fill=full[k], outline="black")
        draw.text((pad + swatch + 4, y), name, fill=(0, 0, 0, 255), font=font)
    return Image.alpha_composite(base, layer).convert("RGB")


def overlay_with_legend(
    image: Any,
    mask: torch.Tensor | np.ndarray,
    class_names: Sequence[str] | None = None,
    palette: Sequence[Sequence[int]] | None = None,
    alpha: float = 0.5,
) -> Image.Image:
    """Colour overlay of ``mask`` on ``image`` plus a legend of the classes present; input size."""
    mask = _to_numpy_mask(mask)
    present = [int(k) for k in np.unique(mask) if k != IGNORE_INDEX]
    return draw_legend(overlay(image, mask, palette, alpha), present, class_names, palette)


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write a PIL image as PNG atomically."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_save_bytes(path, buf.getvalue())
    return Path(path)


def save_figure(fig: Any, path: str | Path, dpi: int = 120) -> Path:
    """Write a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    atomic_save_bytes(path, buf.getvalue())
    return Path(path)


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")  # never open a window; works without a display
    import matplotlib.pyplot as plt

    return plt


def plot_per_class_iou(
    iou: Sequence[float | None],
    class_names: Sequence[str] | None,
    path: str | Path,
    title: str = "Per-class IoU",
) -> Path:
    """Horizontal bars of per-class IoU (absent classes drawn as "n/a"), mIoU as a line."""
    plt = pyplot()
    values = [math.nan if v is None else float(v) for v in iou]
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(values))]
    present = [v for v in values if not math.isnan(v)]
    miou = sum(present) / len(present) if present else 0.0
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.28 * len(values) + 1)))
    ys = np.arange(len(values))
    ax.barh(ys, [0 if math.isnan(v) else v for v in values], color="tab:blue")
    for y, v in zip(ys, values, strict=True):
        ax.text(
            0.01 if math.isnan(v) else v + 0.01,
            y,
            "n/a" if math.isnan(v) else f"{v:.2f}",
            va="center",
            fontsize=7,
        )
    ax.axvline(miou, color="tab:red", linestyle="--", label=f"mIoU {miou:.3f}")
    ax.set_yticks(ys, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.08)
    ax.set_xlabel("IoU")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)


def normalize_confusion(matrix: torch.Tensor | np.ndarray) -> np.ndarray:
    """Row-normalise counts (rows: ground truth): entry (i, j) = P(pred j | gt i); empty rows 0."""
    m = np.asarray(matrix.cpu() if isinstance(matrix, torch.Tensor) else matrix, dtype=np.float64)
    rows = m.sum(axis=1, keepdims=True)
    return np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)


def plot_confusion_matrix(
    matrix: torch.Tensor | np.ndarray,
    class_names: Sequence[str] | None,
    path: str | Path,
    title: str = "Confusion matrix (row-normalised)",
) -> Path:
    """Heatmap of the row-normalised confusion matrix with class names on both axes."""
    plt = pyplot()
    norm = normalize_confusion(matrix)
    k = norm.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    size = min(max(4.0, 0.3 * k + 2), 24.0)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fontsize = 8 if k <= 30 else 5
    ax.set_xticks(range(k), names, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(k), names, fontsize=fontsize)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title(title)
    if k <= 12:  # numbers in the cells stay readable only for a few classes
        for i in range(k):
            for j in range(k):
                colour = "white" if norm[i, j] > 0.5 else "black"
                ax.text(
                    j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7, color=colour
                )
    return save_figure(fig, path)


def confidence_image(confidence: np.ndarray) -> Image.Image:
    """Grey image of a calibrated confidence map in [0, 1]: ``round(255 × c)`` (what ``sanet
    predict --confidence`` writes and ``sanet serve`` sends)."""
    return Image.fromarray(np.rint(np.clip(confidence, 0, 1) * 255).astype(np.uint8), mode="L")
