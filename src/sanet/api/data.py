"""``sanet.prepare`` and ``sanet.check_data``: official downloads (or generated scenes) written in
the layouts sanet loads (``sanet prepare``), and every image/mask pair of a split scanned before
training (``sanet check-data``). docs/datasets.md describes the layouts and the checks."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sanet._files import atomic_write_text, ensure_new_file, ensure_writable_dir
from sanet.api.common import data_name, open_dataset
from sanet.data import SegmentationDataset, build_dataset, parse_data_spec
from sanet.data import check as checks
from sanet.data import prepare as converters
from sanet.errors import UsageError, arg, suggest
from sanet.progress import progress_bar

T = TypeVar("T")

#: The options of each kind :func:`prepare` writes; the ones every call needs come first.
PREPARE_OPTIONS: dict[str, tuple[str, ...]] = {
    "synthetic": ("num_train", "num_val", "size", "seed", "generator", "family", "image_format"),
    "voc-aug": ("sbd", "voc", "skip_checksum"),
    "pascal-context": ("context", "voc2010", "labels59", "skip_checksum"),
}
_REQUIRED = {"voc-aug": ("sbd", "voc"), "pascal-context": ("context", "voc2010")}


@dataclass
class PrepareResult:
    """What :func:`prepare` wrote.

    Attributes:
        kind: ``"synthetic"``, ``"voc-aug"`` or ``"pascal-context"``.
        root: the folder the loaders read (:attr:`data` names it for ``sanet.train`` and co.).
        summary: what was written: counts of images, masks and list entries, the classes.
        parameters: for a member of the scene family (``family=N``), its parameters (also in
            ``root/family.json``); ``None`` otherwise.
    """

    kind: str
    root: Path
    summary: dict[str, Any]
    parameters: dict[str, Any] | None = None

    @property
    def data(self) -> str:
        """``"KIND:ROOT"`` of what was written (synthetic scenes load as ``folder``)."""
        return f"{'folder' if self.kind == 'synthetic' else self.kind}:{self.root}"


@dataclass
class CheckResult:
    """What :func:`check_data` found.

    Attributes:
        report: the JSON report: ``issues`` (kind, severity, files, message), ``issue_counts``,
            class pixel counts and frequencies, suggested class weights, the ignore share.
        path: where the report was written.
        errors: problems that make a pair (or the split) unusable for training.
        warnings: problems worth a look (all-ignore masks, duplicates, a large ignore share).
    """

    report: dict[str, Any]
    path: Path
    errors: int
    warnings: int

    @property
    def ok(self) -> bool:
        """No errors (warnings allowed)."""
        return self.errors == 0


def prepare(
    kind: str, *, out: str | Path | None = None, progress: bool = False, **options: Any
) -> PrepareResult:
    """Write a dataset in the layout sanet loads (docs/datasets.md).

    Args:
        kind: ``"synthetic"`` (generated scenes in the ``folder`` layout), ``"voc-aug"`` (SBD +
            VOC2012 → ``SegmentationClassAug`` and the 10,582-image ``train_aug.txt``) or
            ``"pascal-context"`` (the 459-class ``.mat`` files → 60-label PNGs and the lists).
        out: the output folder; required for ``synthetic``, else by default the VOC folder.
        progress: show a progress bar per step.
        **options: ``synthetic``: ``num_train`` (512), ``num_val`` (64), ``size`` (128),
            ``seed`` (0), ``generator`` (``"scenes"``, ``"glyphs"``, ``"family"``), ``family``
            (a member's seed), ``image_format`` (``"png"``, ``"jpg"``). ``voc-aug``: ``sbd`` and
            ``voc`` (each the download's folder or archive), ``skip_checksum``.
            ``pascal-context``: ``context``, ``voc2010``, ``labels59`` (the official
            ``59_labels.txt``), ``skip_checksum``.

    Returns:
        a :class:`PrepareResult`.
    """
    _check_prepare_args(kind, out, options)
    track = _track if progress else None
    if out is not None:
        ensure_writable_dir(out, arg("out"))
    if kind == "synthetic" and out is not None:  # a missing out was refused above
        summary = converters.prepare_synthetic(out, track=track, **options)
    else:
        run = {"voc-aug": converters.prepare_voc_aug}.get(kind, converters.prepare_pascal_context)
        first, second = (options.pop(key) for key in _REQUIRED[kind])
        summary = run(first, second, out, track=track, **options)
    parameters = summary.pop("parameters", None)
    return PrepareResult(kind, Path(summary["root"]), summary, parameters)


def _check_prepare_args(kind: str, out: str | Path | None, options: Mapping[str, Any]) -> None:
    """Refuse an unknown kind or option, or a missing one, before any work."""
    if kind not in PREPARE_OPTIONS:
        raise UsageError(
            f"Cannot prepare {kind!r}; expected one of {', '.join(PREPARE_OPTIONS)}."
            + suggest(kind, PREPARE_OPTIONS)
        )
    known = PREPARE_OPTIONS[kind]
    for key in options:
        if key not in known:
            raise UsageError(
                f"prepare({kind!r}) has no option {key!r}; expected one of {', '.join(known)}."
                + suggest(key, known)
            )
    if kind == "synthetic" and out is None:
        raise UsageError(
            f"prepare('synthetic') writes the scenes into a folder; give it as {arg('out')}."
        )
    missing = [arg(key) for key in _REQUIRED.get(kind, ()) if options.get(key) is None]
    if missing:
        raise UsageError(
            f"prepare({kind!r}) needs {' and '.join(missing)}: the folder or archive of each "
            "download (docs/datasets.md says where they come from)."
        )


def _track(items: Iterable[T], total: int, description: str) -> Iterator[T]:
    """``items`` with a progress bar (the converters' ``track``)."""
    with progress_bar(unit="file") as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)


def check_data(
    data: str | SegmentationDataset,
    *,
    split: str = "train",
    data_options: Mapping[str, Any] | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    workers: int | None = None,
    progress: bool = False,
) -> CheckResult:
    """Scan every image/mask pair of ``split``: unreadable, truncated or missing files, size
    mismatches, out-of-range labels, RGB masks, all-ignore masks, duplicates; over the split:
    fewer than 2 classes, 0/255 binary masks, one class only, absent classes, a large ignore
    share; class frequencies and suggested class weights (docs/datasets.md).

    Args:
        data: ``"KIND:ROOT"`` (e.g. ``"voc:data/VOC2012"``, ``"synthetic"``) or a dataset.
        data_options: dataset options, as a recipe's ``data.options`` (e.g. a ``label_map``).
        out: the JSON report; by default ``check-data-KIND-SPLIT.json`` in the working folder,
            which a later check replaces when it holds an earlier report (a file of another
            kind by that name is refused).
        overwrite: replace ``out`` when it exists (default: refuse before any work).
        workers: decoding threads (default: up to 8, one per CPU).
        progress: show a progress bar.

    Returns:
        a :class:`CheckResult`; missing files are issues of the report, not errors raised.
    """
    options = dict(data_options or {})
    if isinstance(data, str):
        kind, root = parse_data_spec(data)
    else:
        open_dataset(data, split, options)  # refuses options with a dataset object
        kind, root = data_name(data).partition(":")[0], None
    path = Path(out) if out is not None else Path(f"check-data-{kind}-{split}.json")
    own = out is None and _is_report(path)  # the default report of an earlier check: replaced
    ensure_new_file(path, arg("out"), overwrite or own)
    # Missing files are issues of the scan like any other (all listed), not a stop at building.
    dataset = (
        build_dataset(kind, root, split=split, **{**options, "check_files": False})
        if isinstance(data, str)
        else data
    )
    with progress_bar(unit="pairs", enabled=progress) as bar:
        task = bar.add_task(dataset.name, total=len(dataset))
        report = checks.check_dataset(
            dataset,
            workers=workers or checks.default_workers(),
            progress=lambda n: bar.advance(task, n),
        )
    report |= {"data": data_name(data), "data_options": options, "split": split}
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
    return CheckResult(report, path, report["errors"], report["warnings"])


def _is_report(path: Path) -> bool:
    """A JSON report that :func:`check_data` wrote."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and {"issue_counts", "class_weighting"} <= report.keys()
