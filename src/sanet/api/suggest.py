"""``sanet.suggest``: the next images to label from a pool, uncertain and unlike each other
(``sanet suggest``; docs/active-learning.md)."""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sanet._files import atomic_write_text, ensure_new_file
from sanet.api.common import ProtocolArg, device_of, expand_inputs, open_dataset, protocol_of
from sanet.errors import DataError, NotFoundError, SanetError, UsageError, arg
from sanet.inference import predictor as inference_predictor
from sanet.inference.runs import run_config
from sanet.progress import progress_bar
from sanet.trust.suggest import classifier_layer, duplicate_radius, image_scores, pick

logger = logging.getLogger(__name__)

#: the CSV's columns
SUGGEST_FIELDS = (
    "rank",
    "image",
    "score",
    "uncertainty",
    "mean_entropy",
    "unsure_share",
    "distance",
    "nearest",
    "reason",
)


@dataclass
class SuggestResult:
    """What :func:`suggest` picked and wrote.

    Attributes:
        rows: one per picked image, in the order picked: ``rank`` (1, 2, ...), ``image``,
            ``score`` (the gain it was picked for: uncertainty × distance), ``uncertainty``,
            ``mean_entropy``, ``unsure_share`` (``None`` without a risk threshold),
            ``distance`` and ``nearest`` (the nearest earlier pick; ``None`` for the first),
            ``reason`` (docs/active-learning.md).
        out: the CSV file (the same rows).
        failed: pool files that could not be read, with the reason (the others were scored).
        excluded: pool images left out because ``exclude`` lists them.
        overlap: pool images left out because the run trained on them.
        duplicates: ``{image left out: the picked image it nearly duplicates}``.
        features: ``"classifier input"`` or ``"class probabilities"`` (an ``.onnx`` model).
        budget: the budget asked for (``rows`` is shorter when the pool ran out).
        pool: how many pool files were given (read or not, excluded or not).
    """

    rows: list[dict[str, Any]]
    out: Path
    failed: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    overlap: list[str] = field(default_factory=list)
    duplicates: dict[str, str] = field(default_factory=dict)
    features: str = "classifier input"
    budget: int = 0
    pool: int = 0


def suggest(
    checkpoint: str | Path,
    pool: str | Path | list[str | Path],
    budget: int,
    *,
    out: str | Path,
    exclude: str | Path | Sequence[str | Path] | None = None,
    duplicate: float = 0.05,
    protocol: ProtocolArg = None,
    device: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> SuggestResult:
    """Pick the next ``budget`` images of ``pool`` to label: each one uncertain (calibrated
    entropy, and the unsure share when the model carries a risk threshold) and far, in the
    model's features, from the images picked before it (docs/active-learning.md).

    Args:
        checkpoint: a run directory, ``.pt``, ``save_pretrained`` folder or ``.onnx`` file.
        pool: the unlabelled images: files, folders (their images) or glob patterns.
        budget: how many to pick (at least 1). A budget larger than what the pool holds picks
            every image it can (logged); near-duplicates are still never picked together.
        out: the CSV file to write (refused when it exists, unless ``overwrite``).
        exclude: images already labelled: a text file with one entry per line, or a list of
            entries; an entry matches a pool image by path, file name or file stem.
        duplicate: near-duplicates lie closer than this share of the median distance between
            pool images (0: exact copies only).
        protocol: ``None``: the run's own; ``"paper"``, ``"single"`` or an ``EvalProtocol``.
        overwrite, progress: replace ``out``; show a progress bar.

    Returns:
        a :class:`SuggestResult`. Pool images the run trained on (its ``data`` section) are
        left out with a warning; unreadable files are left out and listed in ``failed``.
    """
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise UsageError(f"{arg('budget')} must be a whole number of images ≥ 1, got {budget!r}.")
    if duplicate < 0:
        raise UsageError(f"{arg('duplicate')} must be 0 or more, got {duplicate}.")
    entries = _exclude_entries(exclude)  # a missing list is refused before the model is read
    device = device_of(device)
    chosen = protocol_of(checkpoint, protocol, device)
    images = expand_inputs(pool)
    out = ensure_new_file(out, arg("out"), overwrite, example="next.csv")
    left, excluded, overlap = _pool_left(checkpoint, images, entries)
    predictor = inference_predictor.Predictor(checkpoint, device=device, protocol=chosen)
    layer = classifier_layer(predictor.model)
    scored, failed = _score_pool(predictor, layer, left, progress)
    result = SuggestResult([], out, failed, [str(p) for p in excluded], [str(p) for p in overlap])
    result.features = "classifier input" if layer is not None else "class probabilities"
    result.budget, result.pool = budget, len(images)
    if budget > len(scored):
        logger.warning(
            "The budget (%d) is larger than the %d pool images left to pick from: picking every "
            "one that is not a near-duplicate.",
            budget,
            len(scored),
        )
    _pick_rows(result, scored, budget, duplicate)
    atomic_write_text(out, _csv(result.rows))
    return result


def _pool_left(checkpoint: str | Path, images: list[Path], entries: set[str]) -> tuple:
    """``(left, excluded, overlap)``: the pool without the images ``entries`` (of ``exclude``)
    name and those the run trained on (warned)."""
    excluded = [p for p in images if _listed(p, entries)]
    overlap = [p for p in training_overlap(checkpoint, images) if p not in excluded]
    if overlap:
        logger.warning(
            "%d pool images are in the training set of %s; they are left out (e.g. %s).",
            len(overlap),
            checkpoint,
            overlap[0],
        )
    dropped = set(excluded) | set(overlap)
    left = [p for p in images if p not in dropped]
    if images and not left:  # an empty CSV would read as "nothing worth labelling"
        raise UsageError(
            f"Nothing to suggest: every one of the {len(images)} pool images is already "
            f"labelled ({len(excluded)} listed in {arg('exclude')}, {len(overlap)} in the run's "
            f"training set); nothing was written. Give {arg('pool')} the images still to label."
        )
    return left, excluded, overlap


def _pick_rows(result: SuggestResult, scored: list, budget: int, duplicate: float) -> None:
    """Run the picking on the scored images; fill ``rows`` and ``duplicates``."""
    if not scored:
        return
    features = np.stack([s.features for _, s in scored])
    uncertainty = np.array([s.uncertainty for _, s in scored])
    radius = duplicate_radius(features, duplicate)
    picks, duplicates = pick(features, uncertainty, min(budget, len(scored)), radius)
    names = [str(path) for path, _ in scored]
    for rank, p in enumerate(picks, 1):
        s = scored[p.index][1]
        result.rows.append(
            {
                "rank": rank,
                "image": names[p.index],
                "score": p.gain,
                "uncertainty": s.uncertainty,
                "mean_entropy": s.mean_entropy,
                "unsure_share": s.unsure_share,
                "distance": p.distance,
                "nearest": None if p.nearest is None else names[p.nearest],
                "reason": p.reason,
            }
        )
    result.duplicates = {names[k]: names[v] for k, v in sorted(duplicates.items())}


def _score_pool(predictor: Any, layer: Any, images: list[Path], progress: bool) -> tuple:
    """``([(path, ImageScores)], failed)`` over the pool, unreadable files listed in ``failed``."""
    scored, failed = [], []
    with progress_bar(unit="img", enabled=progress) as bar:
        task = bar.add_task("suggest", total=len(images))
        for path in images:
            try:
                rgb = inference_predictor.load_rgb(path)
            except (DataError, FileNotFoundError) as err:
                failed.append(f"{path}: {getattr(err, 'problem', None) or err}")
            else:
                scored.append((path, image_scores(predictor, rgb, layer)))
            bar.advance(task)
    return scored, failed


def _exclude_entries(exclude: str | Path | Sequence[str | Path] | None) -> set[str]:
    """The entries of ``exclude``: the lines of a file (blank lines and ``#`` comments
    skipped), or the items of a list."""
    if exclude is None:
        return set()
    if isinstance(exclude, (str, Path)):
        path = Path(exclude)
        if not path.is_file():
            raise NotFoundError(
                f"{arg('exclude')} {str(path)!r} is not a file; expected a text file with one "
                "labelled image (path, file name or stem) per line. Fix: write that file (e.g. "
                "`ls images/train > labelled.txt`), or leave out the option to exclude nothing."
            )
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        items: Sequence[str | Path] = [s.strip() for s in lines]
    else:
        items = exclude
    return {str(i).strip() for i in items if str(i).strip() and not str(i).startswith("#")}


def _listed(path: Path, entries: set[str]) -> bool:
    """Whether an entry names ``path``: its path (as given or resolved), name or stem."""
    if not entries:
        return False
    return bool({str(path), path.name, path.stem} & entries) or any(
        os.path.sep in e and Path(e).expanduser().resolve() == path for e in entries
    )


def training_overlap(checkpoint: str | Path, images: list[Path]) -> list[Path]:
    """The ``images`` that are training images of ``checkpoint``'s run (its ``data`` section):
    the same file, or a file with the same bytes. ``[]`` (logged) when the run's data is not
    files or cannot be opened here."""
    data = run_config(checkpoint).get("data") or {}
    kind, root = data.get("dataset"), data.get("root") or ""
    if not kind or kind == "synthetic":
        return []
    try:
        train = open_dataset(
            f"{kind}:{root}", data.get("train_split", "train"), data.get("options") or {}
        )
        files = [Path(train.files(i)[0]) for i in range(len(train))]
    except (SanetError, OSError) as err:
        logger.warning("Could not check the pool against the run's training images: %s", err)
        return []
    resolved = {f.resolve() for f in files}
    by_size: dict[int, list[Path]] = {}
    for f in files:
        try:
            by_size.setdefault(f.stat().st_size, []).append(f)
        except OSError:
            continue
    found = []
    for path in images:
        if path.resolve() in resolved or _same_bytes(path, by_size):
            found.append(path)
    return found


def _same_bytes(path: Path, by_size: dict[int, list[Path]]) -> bool:
    try:
        same = by_size.get(path.stat().st_size, [])
        return bool(same) and _digest(path) in {_digest(f) for f in same}
    except OSError:
        return False


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _csv(rows: list[dict[str, Any]]) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(SUGGEST_FIELDS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({f: _cell(row[f]) for f in SUGGEST_FIELDS})
    return text.getvalue()


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    return f"{value:.6f}" if isinstance(value, float) else value
