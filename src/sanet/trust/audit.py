"""Where labels are probably wrong (``sanet.audit_labels``) and which unlabelled images are worth
annotating next (``sanet.rank``), from a model's (calibrated) probabilities (docs/trust.md).

**Audit.** A pixel is *evidence against its label* when it is labelled (not 255), the model's
arg-max differs from the label and the model is confident the label is wrong: it gives the label
at most ``1 − confidence`` probability (implied by a prediction at least ``confidence`` sure; it
also counts a pixel whose probability the model spreads over other classes). Such pixels
are grouped into regions (8-connected, one given class and one predicted class per region);
regions smaller than ``min_region`` of the image are dropped (scattered mistakes of the model,
not a mislabelled object). A region's *evidence* is ``Σ (confidence − p[given label])`` over its
pixels. Regions are scored one by one: an image's ``region_score`` is its largest region's
evidence divided by the image's labelled pixels (a wrong object stands out even in an image
whose other pixels the model gets wrong here and there). A labelled object whose outline a small
shift would move onto the model's prediction (``audit_shifts``) gives ``shift_score``; the
image's ``score`` is the larger of the two (docs/trust.md, "Measured: planted label errors").
Each entry also keeps ``image_evidence``
(the evidence of all its regions over its labelled pixels: the score before regions were ranked
one by one) and ``disagreement`` (the share of labelled pixels whose arg-max differs from the
label: the naive score). Region kinds, where class 0 is a background class: label background
and prediction an object → ``missing object``; label an object and prediction background →
``spurious region``; otherwise ``wrong class``.

**Rank.** The image and its mirror image are predicted separately (single forward protocol
without flips): ``mean_entropy`` is the mean over pixels of the entropy of their average,
divided by ``log K`` (0: certain, 1: uniform), and ``flip_disagreement`` the share of pixels
whose two arg-max classes differ. ``score = (mean_entropy + flip_disagreement) / 2``.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from sanet.conventions import IGNORE_INDEX
from sanet.data.check import check_training_labels
from sanet.data.datasets import SegmentationDataset
from sanet.data.synthetic import SyntheticDataset
from sanet.errors import UsageError, arg
from sanet.inference.confidence import label_stats, protocol_views
from sanet.inference.predictor import image_to_tensor, normalize
from sanet.inference.protocol import EvalProtocol, predict_proba
from sanet.metrics import ConfusionMatrix
from sanet.trust.audit_shifts import boundary_shifts

KINDS = ("missing object", "wrong class", "spurious region")  # of a region (docs/trust.md)
#: images a model's agreement with the labels is measured on before the rest is scored
GATE_IMAGES = 32
#: the least mIoU against the audited labels of a model to audit with (docs/trust.md)
MIN_MIOU = 0.3
#: a shifted outline's evidence against a region's in an image's score: chosen on the design
#: scenes only (docs/trust.md, "Measured: planted label errors")
SHIFT_WEIGHT = 4.0


@dataclass(frozen=True)
class AuditSettings:
    """What counts as evidence against a label.

    Attributes:
        confidence: evidence where the (calibrated) probability of the given label is at most
            ``1 − confidence``.
        min_region: least region size, as a share of the image's pixels (and at least 16 px).
        min_miou: the least agreement (mIoU against the audited labels) of a model to audit
            with (docs/trust.md); 0 audits with any model.
    """

    confidence: float = 0.9
    min_region: float = 0.002
    min_miou: float = MIN_MIOU

    def __post_init__(self) -> None:
        if not 0 < self.confidence < 1:
            raise UsageError(
                f"{arg('confidence')} must lie between 0 and 1, got {self.confidence}."
            )
        if not 0 <= self.min_region < 1:
            raise UsageError(f"{arg('min_region')} must lie in [0, 1), got {self.min_region}.")
        if not 0 <= self.min_miou <= 1:
            raise UsageError(f"{arg('min_miou')} must lie in [0, 1], got {self.min_miou}.")

    def record(self) -> dict[str, float]:
        """The settings as ``label_audit.json`` keeps them."""
        return dataclasses.asdict(self)


def background_class(class_names: Sequence[str]) -> int | None:
    """Class 0 when it is called background (VOC, PASCAL Context, the synthetic scenes), else
    ``None`` (Cityscapes, ADE20K: every region is then a ``wrong class``)."""
    return 0 if class_names and class_names[0].lower().strip("_ ") == "background" else None


@dataclass
class Suspect:
    """One image kept for the suspects picture: its index, prediction and disagreement."""

    score: float
    index: int
    prediction: np.ndarray  # (H, W) uint8 arg-max
    disagreement: np.ndarray  # (H, W) bool: pixels of the kept regions


def label_regions(
    pred: np.ndarray,
    conf: np.ndarray,
    p_label: np.ndarray,
    label: np.ndarray,
    class_names: Sequence[str],
    settings: AuditSettings,
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """The regions where a confident prediction contradicts the label, largest evidence first,
    and the mask of their pixels.

    Shape: every input ``(H, W)``: arg-max, its probability, the probability of the given label,
    the label (ids and 255).
    """
    from scipy import ndimage

    against = (label != IGNORE_INDEX) & (pred != label) & (p_label <= 1 - settings.confidence)
    least = max(16, math.ceil(settings.min_region * label.size))
    regions, kept = [], np.zeros(label.shape, bool)
    background = background_class(class_names)
    pairs = {(int(a), int(b)) for a, b in zip(label[against], pred[against], strict=True)}
    for given, predicted in sorted(pairs):
        parts, count = ndimage.label(
            against & (label == given) & (pred == predicted), np.ones((3, 3))
        )
        sizes = np.bincount(parts.ravel(), minlength=count + 1)
        for k in np.flatnonzero(sizes >= least):
            if k == 0:
                continue
            where = parts == k
            ys, xs = np.nonzero(where)
            regions.append(
                {
                    "kind": _kind(given, predicted, background),
                    "label": class_names[given],
                    "label_id": given,
                    "predicted": class_names[predicted],
                    "predicted_id": predicted,
                    "pixels": int(sizes[k]),
                    "box": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1],
                    "confidence": float(conf[where].mean()),
                    "evidence": float((conf[where] - p_label[where]).sum()),
                }
            )
            kept |= where
    regions.sort(key=lambda r: -r["evidence"])
    return regions, kept


def object_shifts(
    pred: np.ndarray,
    conf: np.ndarray,
    label: np.ndarray,
    class_names: Sequence[str],
    settings: AuditSettings,
) -> list[dict[str, Any]]:
    """The labelled objects whose outline looks shifted (:func:`boundary_shifts`), largest
    evidence first; none without a background class (a shift is told by the background it
    leaves and covers)."""
    background = background_class(class_names)
    if background is None:
        return []
    least = max(16, math.ceil(settings.min_region * label.size))
    return boundary_shifts(pred, conf, label, class_names, background, settings.confidence, least)


def _kind(given: int, predicted: int, background: int | None) -> str:
    if background is not None and given == background:
        return KINDS[0]
    if background is not None and predicted == background:
        return KINDS[2]
    return KINDS[1]


class Agreement:
    """How far a model's arg-max agrees with the labels it audits: pixel accuracy and mIoU over
    the labelled pixels (:class:`~sanet.metrics.ConfusionMatrix`), where the labels are the
    audited ones, errors included."""

    def __init__(self, num_classes: int) -> None:
        self.matrix, self.images = ConfusionMatrix(num_classes, device="cpu"), 0

    def add(self, pred: np.ndarray, label: np.ndarray) -> None:
        self.matrix.update(torch.from_numpy(pred), torch.from_numpy(label))
        self.images += 1

    def record(self) -> dict[str, Any]:
        """``{"mIoU", "pixAcc", "images", "labelled_pixels"}``."""
        found = self.matrix.compute()
        keep = ("mIoU", "pixAcc", "labelled_pixels")
        return {k: found[k] for k in keep} | {"images": self.images}


def gate_order(indices: Sequence[int], first: int) -> list[int]:
    """``indices`` with ``first`` of them, evenly spaced, in front (the images a model's
    agreement is checked on before the rest are scored)."""
    n = len(indices)
    front = sorted({k * n // first for k in range(first)}) if n > first else list(range(n))
    chosen = set(front)
    return [indices[k] for k in front] + [indices[k] for k in range(n) if k not in chosen]


@torch.no_grad()
def audit_split(
    model: nn.Module,
    dataset: Any,
    class_names: Sequence[str],
    protocol: EvalProtocol,
    *,
    indices: Sequence[int] | None = None,
    temperature: float = 1.0,
    settings: AuditSettings | None = None,
    device: str | torch.device = "cpu",
    keep: int = 8,
    on_image: Callable[[], None] | None = None,
    gate: Callable[[dict[str, Any]], None] | None = None,
    gate_images: int = GATE_IMAGES,
) -> tuple[list[dict[str, Any]], list[Suspect], dict[str, Any]]:
    """Score every image of ``dataset`` (or ``indices``) against its label.

    With ``gate``, ``gate_images`` images evenly spaced over the split are scored first and
    ``gate(agreement)`` is called with the model's :class:`Agreement` over them: it raises to
    stop a model too weak to audit with before the rest is scored.

    Returns:
        ``(entries, suspects, agreement)``: one ``{"image", "index", "score",
        "image_evidence", "disagreement", "labelled_pixels", "regions"}`` per image (dataset order), the ``keep`` highest-scoring
        images' predictions, and the model's agreement with the labels over every image
        (``Agreement.record``, with ``"gate"``: the same over the first images).
    """
    settings = settings or AuditSettings()
    model = model.to(device).eval()
    order = list(range(len(dataset)) if indices is None else indices)
    order = gate_order(order, gate_images) if gate else order
    agreement, entries, heap, checked = Agreement(len(class_names)), [], [], None
    for i in order:
        entry, pred, kept = _audit_image(
            model, dataset, i, class_names, protocol, temperature, settings, device, agreement
        )
        entries.append(entry)
        item = (entry["score"], -int(i), Suspect(entry["score"], int(i), pred, kept))
        (heapq.heappush if len(heap) < keep else heapq.heappushpop)(heap, item)
        if on_image:
            on_image()
        if gate and checked is None and agreement.images == min(gate_images, len(order)):
            checked = agreement.record()
            gate(checked)
    found = agreement.record() | ({"gate": checked} if checked else {})
    entries.sort(key=lambda e: e["index"])
    return entries, [s for *_, s in sorted(heap, key=lambda t: (-t[0], -t[1]))], found


def _audit_image(
    model, dataset, i, class_names, protocol, temperature, settings, device, agreement
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """One image's audit entry, its prediction and the mask of its kept regions."""
    image, mask = dataset[i]
    x = normalize(image_to_tensor(image), device)
    y = torch.as_tensor(np.asarray(mask)).long().to(device)
    (view,) = protocol_views(model, x, protocol, [(temperature, label_stats(y))])
    pred, conf, p_label = (v.cpu().numpy() for v in view)
    label = y.cpu().numpy()
    pred = pred.astype(np.int64)
    agreement.add(pred, label)
    scores, kept = score_image(pred, conf, p_label, label, class_names, settings)
    entry = {"image": image_name(dataset, i), "index": int(i), **scores}
    return entry, pred.astype(np.uint8), kept


def score_image(
    pred: np.ndarray,
    conf: np.ndarray,
    p_label: np.ndarray,
    label: np.ndarray,
    class_names: Sequence[str],
    settings: AuditSettings,
) -> tuple[dict[str, Any], np.ndarray]:
    """An image's scores against its label and the mask of its kept regions.

    ``score`` is the larger of ``region_score`` (its most suspicious region's evidence over its
    labelled pixels) and ``shift_score`` (its most shifted-looking object's evidence, times
    ``SHIFT_WEIGHT``, over the same): a shifted outline's two thin strips are each too small to
    outrank a model's own mistakes, the shift that explains both is not (docs/trust.md).

    Shape: every input ``(H, W)``, as :func:`label_regions`.

    Returns:
        ``({"score", "region_score", "shift_score", "image_evidence", "disagreement",
        "labelled_pixels", "regions", "shifts"}, kept)``.
    """
    regions, kept = label_regions(pred, conf, p_label, label, class_names, settings)
    shifts = object_shifts(pred, conf, label, class_names, settings)
    labelled = max(int((label != IGNORE_INDEX).sum()), 1)
    evidence = [r["evidence"] / labelled for r in regions]
    region_score = max(evidence, default=0.0)
    shift_score = SHIFT_WEIGHT * max((s["evidence"] for s in shifts), default=0.0) / labelled
    wrong = (pred != label) & (label != IGNORE_INDEX)
    scores = {
        "score": max(region_score, shift_score),
        "region_score": region_score,
        "shift_score": shift_score,
        "image_evidence": sum(evidence),
        "disagreement": float(wrong.sum() / labelled),
        "labelled_pixels": int((label != IGNORE_INDEX).sum()),
        "regions": regions,
        "shifts": shifts,
    }
    return scores, kept


def agreement_gate(model: str, split: str, min_miou: float) -> Callable[[dict[str, Any]], None]:
    """The ``gate`` of :func:`audit_split`: refuse a model whose mIoU against the labels of the
    first images is below ``min_miou`` (``model`` and ``split`` name them in the message)."""

    def gate(found: dict[str, Any]) -> None:
        if found["mIoU"] >= min_miou:
            return
        raise UsageError(
            f"The model {model} agrees too little with the labels of {split} to audit "
            f"them: mIoU {found['mIoU']:.3f} (pixel accuracy {found['pixAcc']:.3f}) on "
            f"{found['images']} images spread over the split, below the {min_miou:.2f} an "
            "audit needs (docs/trust.md, 'A model good enough to audit with'): its own "
            "confident mistakes would outnumber the label errors. Fix: train it longer or on "
            f"more data, or audit with a better model; {arg('min_miou', 0)} audits anyway."
        )

    return gate


def check_labels(dataset: Any) -> list[str]:
    """The split-wide label checks of training (:func:`~sanet.data.check.check_training_labels`:
    0/255 masks read with 255 as ignore, one class only) on a dataset of files; raises for a
    split that cannot be audited, returns the warnings. Generated or in-memory datasets pass."""
    if not isinstance(dataset, SegmentationDataset) or isinstance(dataset, SyntheticDataset):
        return []
    return check_training_labels(dataset)


def image_name(dataset: Any, index: int) -> str:
    """The image file of sample ``index`` (its generated name for synthetic data)."""
    return str(dataset.files(index)[0]) if hasattr(dataset, "files") else str(index)


def sort_report(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Most suspicious first (ties: dataset order)."""
    return sorted(entries, key=lambda e: (-e["score"], e["index"]))


def planted_recall(
    ranked: Sequence[str], planted: Sequence[str], top: int | None = None
) -> dict[str, float]:
    """Precision and recall of the ``planted`` images among the first ``top`` of ``ranked``
    (default ``2 × len(planted)``)."""
    top = 2 * len(planted) if top is None else top
    found = len(set(ranked[:top]) & set(planted))
    return {
        "top": top,
        "found": found,
        "precision": found / max(min(top, len(ranked)), 1),
        "recall": found / max(len(planted), 1),
    }


@torch.no_grad()
def rank_scores(
    model: nn.Module,
    image: Any,
    protocol: EvalProtocol,
    *,
    temperature: float = 1.0,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """``mean_entropy``, ``flip_disagreement`` and their mean ``score`` for one image (the model
    on ``device``)."""
    x = normalize(image_to_tensor(image), device)
    single = dataclasses.replace(protocol, flip=False)
    p = predict_proba(model, x, single, temperature=temperature)  # (K, H, W)
    q = predict_proba(model, x.flip(-1), single, temperature=temperature).flip(-1)
    mean = (p + q) / 2
    entropy = -(mean * mean.clamp_min(1e-12).log()).sum(0) / math.log(max(mean.shape[0], 2))
    disagree = (p.argmax(0) != q.argmax(0)).float().mean()
    h, d = float(entropy.mean()), float(disagree)
    return {"mean_entropy": h, "flip_disagreement": d, "score": (h + d) / 2}
