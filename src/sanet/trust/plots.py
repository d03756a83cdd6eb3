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
    per bin, the gap to the diagonal shaded) over the share of pixels in each bin.

    ``record`` is ``sanet calibrate``'s (``reliability``, ``ece_before/after``, ``temperature``).
    """
    plt = pyplot()
    edges = np.asarray(record["reliability"]["bin_edges"])
    centers, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    fig, axes = plt.subplots(
        2, 2, figsize=(9, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1.2]}
    )
    for col, (key, title) in enumerate(
        (("before", "raw (T = 1)"), ("after", f"calibrated (T = {record['temperature']:.3g})"))
    ):
        n, conf, acc = _merged(record["reliability"][key])
        top, bottom = axes[0, col], axes[1, col]
        filled = n > 0
        top.bar(
            centers[filled],
            acc[filled],
            width[filled],
            color="#4878cf",
            edgecolor="white",
            label="accuracy",
        )
        top.bar(
            centers[filled],
            (conf - acc)[filled],
            width[filled],
            bottom=acc[filled],
            color="#e24a33",
            alpha=0.35,
            edgecolor="#e24a33",
            label="gap to confidence",
        )
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
    fig.suptitle(
        f"{record.get('images', '?')} images, {record.get('labelled_pixels', '?')} labelled "
        f"pixels, {record['bins']} bins"
    )
    fig.tight_layout()
    return save_figure(fig, path)


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
        regions = by_index[s.index]["regions"]
        what = "; ".join(f"{r['kind']} ({r['label']}→{r['predicted']})" for r in regions[:2])
        title = f"{Path(by_index[s.index]['image']).name}  score {s.score:.3f}  {what}"
        rows.append(SuspectRow(image, _numpy(mask), s.prediction, s.disagreement, title))
    return plot_suspects(rows, getattr(dataset, "palette", None), path)


def _numpy(mask: Any) -> np.ndarray:
    return mask.numpy() if hasattr(mask, "numpy") else np.asarray(mask)
