"""Pictures of trust (docs/trust.md): the reliability diagram of ``sanet calibrate`` and the
suspects panel of ``sanet audit-labels``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sanet.viz.visualize import colorize, pyplot, save_figure, to_rgb_array


def _merged(table: dict[str, list[float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 15 drawn bins: torchmetrics' extra bin (confidence exactly 1.0) joins the last."""
    n = np.asarray(table["count"], float)
    conf, acc = np.asarray(table["confidence"]) * n, np.asarray(table["accuracy"]) * n
    n, conf, acc = (np.append(v[:-2], v[-2] + v[-1]) for v in (n, conf, acc))
    safe = np.maximum(n, 1)
    return n, conf / safe, acc / safe


def plot_reliability(record: dict[str, Any], path: str | Path) -> Path:
    """Reliability diagrams before and after temperature scaling (accuracy against confidence
    per bin, the gap to the diagonal shaded) over the share of pixels in each bin; with a risk
    threshold, a third column: the per-image sure-and-wrong share at it and the worst images.

    ``record`` is ``sanet calibrate``'s (``reliability``, ``ece_before/after``, ``temperature``,
    ``risk``).
    """
    plt = pyplot()
    edges = np.asarray(record["reliability"]["bin_edges"])
    centers, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    view = (record.get("risk") or {}).get("per_image")
    fig, axes = plt.subplots(
        2,
        3 if view else 2,
        figsize=(13.5 if view else 9, 6.5),
        gridspec_kw={"height_ratios": [3, 1.2]},
        squeeze=False,
    )
    for col, (key, title) in enumerate(
        (("before", "raw (T = 1)"), ("after", f"calibrated (T = {record['temperature']:.3g})"))
    ):
        n, conf, acc = _merged(record["reliability"][key])
        top, bottom = axes[0, col], axes[1, col]
        bottom.sharex(top)
        filled = n > 0
        _bars(top, centers[filled], width[filled], acc[filled], conf[filled])
        top.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        top.set(
            xlim=(0, 1),
            ylim=(0, 1),
            ylabel="accuracy of the top class",
            title=f"{title}: ECE {record[f'ece_{key}']:.4f}",
        )
        top.legend(loc="upper left", fontsize=8)
        bottom.bar(centers, n / max(n.sum(), 1), width, color="#777777", edgecolor="white")
        bottom.set(
            xlabel="confidence (largest probability)",
            ylabel="share of pixels",
            yscale="log",
            ylim=(1e-5, 1.5),
        )
    if view:
        _per_image_panel(axes[0, 2], axes[1, 2], record["risk"])
    fig.suptitle(
        f"{record.get('images', '?')} images, {record.get('labelled_pixels', '?')} labelled "
        f"pixels, {record['bins']} bins"
    )
    fig.tight_layout()
    return save_figure(fig, path)


def _bars(ax: Any, x: np.ndarray, width: np.ndarray, acc: np.ndarray, conf: np.ndarray) -> None:
    """Accuracy per bin, and the gap to its mean confidence shaded above it."""
    ax.bar(x, acc, width, color="#4878cf", edgecolor="white", label="accuracy")
    ax.bar(
        x,
        conf - acc,
        width,
        bottom=acc,
        color="#e24a33",
        alpha=0.35,
        edgecolor="#e24a33",
        label="gap to confidence",
    )


def _per_image_panel(top: Any, bottom: Any, risk: dict[str, Any]) -> None:
    """The per-image sure-and-wrong share at the threshold (histogram, α and the quantiles
    marked) and the worst images by name."""
    view, alpha = risk["per_image"], risk["alpha"]
    values = np.asarray(view.get("values") or [], float)
    high = max(float(values.max()) if values.size else 0.0, alpha) * 1.1 or 1.0
    top.hist(values, bins=np.linspace(0, high, 31), color="#4878cf", edgecolor="white")
    top.axvline(alpha, color="#e24a33", lw=1.5, label=f"α = {alpha}")
    for q, style, name in (("0.5", ":", "median"), ("0.9", "--", "90 % of images")):
        top.axvline(view["quantiles"][q], color="k", ls=style, lw=1, label=name)
    mode = (
        f"per image: ≤ {risk['delta']} of images above α (level {risk['confidence_level']})"
        if risk.get("mode") == "per_image"
        else "mean risk ≤ α"
    ) + (", per class" if risk.get("class_thresholds") else "")
    top.set(
        xlabel="sure-and-wrong share of an image's labelled pixels",
        ylabel="images",
        title=f"per image at threshold {risk['threshold']:.4g} ({mode})\n"
        f"{view['share_above_alpha']:.1%} of the images above α",
    )
    top.title.set_fontsize(9)
    top.legend(loc="upper right", fontsize=8)
    bottom.axis("off")
    rows = [f"{Path(w['image']).name}: {w['risk']:.3f}" for w in view["worst"][:5]]
    bottom.text(0, 1, "worst images\n" + "\n".join(rows), fontsize=8, va="top", family="monospace")


@dataclass
class SuspectRow:
    """One row of the suspects panel."""

    image: Any  # (H, W, 3) uint8 or anything to_rgb_array reads
    given: np.ndarray  # (H, W) the label as given
    predicted: np.ndarray  # (H, W) the model's arg-max
    disagreement: np.ndarray  # (H, W) bool: the audited regions
    title: str


def plot_suspects(
    rows: Sequence[SuspectRow], palette: Sequence[Sequence[int]] | None, path: str | Path
) -> Path:
    """Image, given mask, predicted mask and disagreement (red on the greyed image) per row."""
    plt = pyplot()
    n = max(len(rows), 1)
    fig, axes = plt.subplots(n, 4, figsize=(10, 2.8 * n), squeeze=False)
    heads = ("image", "given label", "prediction", "disagreement")
    for r, row in enumerate(rows):
        rgb = to_rgb_array(row.image)
        grey = np.repeat(rgb.mean(-1, keepdims=True), 3, -1) * 0.6 + 60
        marked = np.where(row.disagreement[..., None], [230, 30, 30], grey).astype(np.uint8)
        pictures = (rgb, colorize(row.given, palette), colorize(row.predicted, palette), marked)
        for c, picture in enumerate(pictures):
            axes[r, c].imshow(picture)
            axes[r, c].axis("off")
            axes[r, c].set_title(heads[c], fontsize=8)
        # the row's caption across its four panels, above their titles
        axes[r, 0].text(0, 1.13, row.title, transform=axes[r, 0].transAxes, fontsize=8, va="bottom")
    for ax in axes[len(rows) :].ravel():
        ax.axis("off")
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.94, wspace=0.04, hspace=0.45)
    return save_figure(fig, path, dpi=100)


def plot_audit(dataset: Any, suspects: Sequence[Any], ranked: Sequence[dict], path: Path) -> Path:
    """``suspects.png`` of a label audit: each kept image (``Suspect``: ``index``, ``score``,
    ``prediction``, ``disagreement``), its label, the prediction and the regions; ``ranked``
    are the audit's entries (their ``regions`` name the caption's kinds)."""
    by_index = {e["index"]: e for e in ranked}
    rows = []
    for s in suspects:
        image, mask = dataset[s.index]
        entry = by_index[s.index]
        shifted = entry.get("shifts") and entry["shift_score"] >= entry["region_score"]
        what = "; ".join(
            f"{r['kind']} ({r['label']}→{r.get('predicted', 'moved')})"
            for r in [*(entry["shifts"][:1] if shifted else []), *entry["regions"]][:2]
        )
        title = f"{Path(by_index[s.index]['image']).name}  score {s.score:.3f}  {what}"
        rows.append(SuspectRow(image, _numpy(mask), s.prediction, s.disagreement, title))
    return plot_suspects(rows, getattr(dataset, "palette", None), path)


def _numpy(mask: Any) -> np.ndarray:
    return mask.numpy() if hasattr(mask, "numpy") else np.asarray(mask)
