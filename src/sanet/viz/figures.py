"""The paper's figures: Fig. 5 panels, Fig. 6 SA attention maps, Fig. 4 α/β heatmap,
the Table 3 comparison plot, and the input / ground truth / prediction panel of a run.

Functions here compute what a figure shows and draw it with matplotlib (Agg) into a PNG;
``sanet.api.figures`` (``sanet figure5`` / ``sanet explain``) and ``sanet sweep`` are thin
wrappers (the training side of the Fig. 4 sweep is ``sanet.experiments.sweep``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sanet.errors import UsageError, arg
from sanet.viz.visualize import colorize, pyplot, save_figure, to_rgb_array

logger = logging.getLogger(__name__)

#: Fig. 6 shows the first and the last SA head (stage 1 and stage 4 of the backbone).
FIG6_HEADS: tuple[int, ...] = (1, 4)


def cosine_similarity_map(features: torch.Tensor, y: int, x: int) -> torch.Tensor:
    """Cosine similarity of every position's channel vector to the one at ``(y, x)``.

    Positions whose vector is all zero (possible after the attention branch's ReLU) get 0.

    Shape: features ``(C, h, w)`` → ``(h, w)`` in [-1, 1].
    """
    ref = features[:, y, x]  # (C,)
    dots = torch.einsum("chw,c->hw", features, ref)
    norms = features.norm(dim=0) * ref.norm()  # (h, w)
    return torch.where(norms > 0, dots / norms.clamp_min(1e-12), torch.zeros_like(dots))


def feature_point(point_xy: tuple[int, int], image_hw: tuple[int, int], feat_hw: tuple[int, int]):
    """The feature-map cell ``(y, x)`` that covers image pixel ``(X, Y)``."""
    (px, py), (H, W), (h, w) = point_xy, image_hw, feat_hw
    return min(h - 1, py * h // H), min(w - 1, px * w // W)


@torch.no_grad()
def attention_maps(
    model: Any,
    image: torch.Tensor,
    point_xy: tuple[int, int],
    heads: Sequence[int] = FIG6_HEADS,
) -> dict[tuple[int, str], np.ndarray]:
    """Fig. 6 maps: per SA head (1-based) and channel type, similarity to the chosen pixel.

    Args:
        model: a SANet (has ``attention_parts``).
        image: the normalised image ``(3, H, W)`` on the model's device.
        point_xy: the chosen pixel as ``(X, Y)`` = (column, row) in image coordinates.

    Returns:
        ``{(head, "attention"|"main"): (H, W) float array in [-1, 1]}``, upsampled bilinearly to
        the image size.
    """
    if not hasattr(model, "attention_parts"):
        raise UsageError(
            f"{type(model).__name__} has no SA heads to explain; pass a SANet checkpoint "
            "(model name 'sanet' or 'sanet_se')."
        )
    H, W = image.shape[-2:]
    px, py = point_xy
    if not (0 <= px < W and 0 <= py < H):
        raise UsageError(
            f"The {arg('point')} X={px}, Y={py} lies outside the {W}×{H} image (X < {W}, "
            f"Y < {H}); give a pixel column,row inside it."
        )
    parts = model.attention_parts(image[None])  # per stage: (attn, main), each (1, C_i/4, h, w)
    maps: dict[tuple[int, str], np.ndarray] = {}
    for head in heads:
        if not 1 <= head <= len(parts):
            raise UsageError(f"head must be in 1..{len(parts)}, got {head}.")
        for kind, feats in zip(("attention", "main"), parts[head - 1], strict=True):
            f = feats[0].float()  # (C, h, w)
            y, x = feature_point((px, py), (H, W), tuple(f.shape[-2:]))
            sim = cosine_similarity_map(f, y, x)[None, None]  # (1, 1, h, w)
            up = F.interpolate(sim, size=(H, W), mode="bilinear", align_corners=False)
            maps[(head, kind)] = up[0, 0].cpu().numpy()
    return maps


def plot_attention_maps(
    image: Any,
    maps: dict[tuple[int, str], np.ndarray],
    point_xy: tuple[int, int],
    path: str | Path,
    alpha: float = 0.6,
) -> Path:
    """Fig. 6 layout: the input with the chosen pixel, then one heatmap per (head, channel)."""
    plt = pyplot()
    rgb = to_rgb_array(image)
    keys = sorted(maps, key=lambda k: (k[0], k[1] != "attention"))
    fig, axes = plt.subplots(1, len(keys) + 1, figsize=(3.2 * (len(keys) + 1), 3.4))
    axes[0].imshow(rgb)
    axes[0].set_title("input")
    for ax, key in zip(axes[1:], keys, strict=True):
        ax.imshow(rgb)
        im = ax.imshow(maps[key], cmap="jet", vmin=-1, vmax=1, alpha=alpha)
        ax.set_title(f"head {key[0]}: {key[1]}")
    for ax in axes:
        ax.plot([point_xy[0]], [point_xy[1]], marker="x", color="white", ms=9, mew=2.5)
        ax.plot([point_xy[0]], [point_xy[1]], marker="x", color="black", ms=7, mew=1.2)
        ax.axis("off")
    fig.colorbar(im, ax=list(axes), fraction=0.015, pad=0.01, label="cosine similarity")
    return save_figure(fig, path)


def plot_figure5(
    images: Sequence[Any],
    targets: Sequence[np.ndarray],
    baseline: Sequence[np.ndarray],
    sanet: Sequence[np.ndarray],
    path: str | Path,
    palette: Sequence[Sequence[int]] | None = None,
    labels: Sequence[str] = ("(a) input", "(b) ground truth", "(c) baseline (FCN)", "(d) SANet"),
) -> Path:
    """Fig. 5 panels as in the paper: one row per example, columns input / ground truth /
    baseline / SANet."""
    plt = pyplot()
    n = len(images)
    fig, axes = plt.subplots(n, 4, figsize=(2.6 * 4, 2.3 * n), squeeze=False)
    for r in range(n):
        panels = (
            to_rgb_array(images[r]),
            colorize(targets[r], palette),
            colorize(baseline[r], palette),
            colorize(sanet[r], palette),
        )
        for c, panel in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(panel)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(labels[c])
    fig.tight_layout()
    return save_figure(fig, path)


def plot_sweep_heatmap(
    alphas: Sequence[float],
    betas: Sequence[float],
    miou: np.ndarray,
    path: str | Path,
) -> Path:
    """Fig. 4: mIoU over the α (rows) × β (columns) grid of loss weights, best cell outlined."""
    plt = pyplot()
    grid = np.asarray(miou, dtype=np.float64)
    if grid.shape != (len(alphas), len(betas)):
        raise UsageError(f"mIoU grid {grid.shape} does not match {len(alphas)}×{len(betas)}.")
    fig, ax = plt.subplots(figsize=(1.2 * len(betas) + 2, 1.0 * len(alphas) + 1.5))
    im = ax.imshow(grid, cmap="viridis")
    fig.colorbar(im, ax=ax, label="mIoU")
    ax.set_xticks(range(len(betas)), [f"{b:g}" for b in betas])
    ax.set_yticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    ax.set_xlabel("β (dense loss weight)")
    ax.set_ylabel("α (categorical loss weight)")
    for i in range(len(alphas)):
        for j in range(len(betas)):
            ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", color="white", fontsize=8)
    if np.isfinite(grid).any():
        i, j = np.unravel_index(np.nanargmax(grid), grid.shape)
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2))
    ax.set_title("mIoU over loss weights (Fig. 4)")
    return save_figure(fig, path)


def plot_compare(payload: dict[str, Any], path: str | Path) -> Path:
    """Table 3 as a picture: mean final val mIoU ± std per model (dots: seeds), and the
    validation curves (thick: mean over seeds, thin: each seed).

    Args:
        payload: ``compare.json`` of ``sanet compare`` (``models``, ``per_model``, ``runs``).
    """
    plt = pyplot()
    models = payload["models"]
    fig, (bars, curves) = plt.subplots(1, 2, figsize=(11, 4))
    for i, model in enumerate(models):
        stats, colour = payload["per_model"][model], f"C{i}"
        bars.bar(
            i,
            100 * stats["mIoU_mean"],
            yerr=100 * stats["mIoU_std"],
            capsize=6,
            color=colour,
            alpha=0.6,
        )
        bars.scatter([i] * stats["n"], [100 * v for v in stats["mIoU"]], color="k", s=12, zorder=3)
        runs = [r for r in payload["runs"] if r["model"] == model]
        for r in runs:
            steps, values = zip(*r["curve"], strict=True)
            curves.plot(steps, [100 * v for v in values], color=colour, alpha=0.3, lw=0.8)
        steps = sorted({s for r in runs for s, _ in r["curve"]})
        mean = [
            100 * float(np.mean([v for r in runs for s, v in r["curve"] if s == step]))
            for step in steps
        ]
        curves.plot(steps, mean, marker="o", color=colour, label=f"{model} (n={stats['n']})")
    bars.set_xticks(range(len(models)), models)
    bars.set(ylabel="val mIoU (%)", title="Final val mIoU: mean ± std over seeds")
    curves.set(xlabel="step", ylabel="val mIoU (%)", title="Validation during training")
    curves.legend()
    fig.tight_layout()
    return save_figure(fig, path)


@torch.no_grad()
def prediction_panel(
    model: Any, dataset: Any, palette: list, path: str | Path, rows: int = 4
) -> Path:
    """Input / ground truth / prediction for the first ``rows`` images of ``dataset``.

    ``dataset[i]`` gives ``(image uint8 (3, H, W), mask (H, W))``; the model sees the image
    normalised as in evaluation.
    """
    from sanet.data.transforms import eval_transforms

    plt = pyplot()
    norm = eval_transforms()
    fig, axes = plt.subplots(rows, 3, figsize=(7.5, 2.5 * rows), squeeze=False)
    for r in range(rows):
        image, mask = dataset[r]
        x, _ = norm(image, mask)
        pred = model(x[None])["out"].argmax(1)[0]
        for ax, img, title in zip(
            axes[r],
            (image.permute(1, 2, 0).numpy(), colorize(mask, palette), colorize(pred, palette)),
            ("input", "ground truth", f"prediction ({model.name})"),
            strict=True,
        ):
            ax.imshow(img)
            ax.set_title(title if r == 0 else "")
            ax.axis("off")
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)
