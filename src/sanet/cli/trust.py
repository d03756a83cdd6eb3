"""``sanet calibrate``, ``sanet audit-labels`` and ``sanet rank`` (docs/trust.md).

Thin wrappers: they parse arguments, call :mod:`sanet.trust.calibration`,
:mod:`sanet.trust.audit` and :mod:`sanet.experiments.folds`, draw with :mod:`sanet.trust.plots`,
show progress and print results.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from sanet.api.common import expand_inputs
from sanet.cli.common import (
    add_overrides,
    add_overwrite,
    add_protocol_args,
    check_classes,
    device_name,
    open_dataset,
    protocol_from_args,
    protocol_mode,
    refuse_existing,
)
from sanet.errors import UsageError

#: What a stored calibration keeps (the bulky tables stay in calibration.json).
STORED_KEYS = (
    "temperature",
    "bins",
    "ece_before",
    "ece_after",
    "nll_before",
    "nll_after",
    "images",
    "protocol",
    "data",
    "split",
    "risk",
)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``calibrate``, ``audit-labels`` and ``rank``."""
    p = sub.add_parser(
        "calibrate",
        help="fit a temperature (and with --risk an unsure threshold); store it with the model",
    )
    add_protocol_args(p)
    p.add_argument("--data", required=True, metavar="KIND:PATH", help="e.g. voc:data/VOC2012")
    p.add_argument("--split", default="val", help="the labelled split to calibrate on (val)")
    p.add_argument(
        "--risk",
        type=float,
        metavar="ALPHA",
        help="also choose the confidence threshold that keeps the expected share of sure-and-wrong "
        "pixels per image ≤ ALPHA (conformal risk control), e.g. 0.05",
    )
    p.add_argument("--out", type=Path, help="calibration.json, reliability.png (RUN/calibration)")
    p.add_argument("--limit", type=int, help="use only the first N images")
    p.add_argument(
        "--fit-images", type=int, default=200, help="images the temperature is fitted on (200)"
    )
    add_overwrite(p, "calibration.json and reliability.png in --out")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("audit-labels", help="find masks that are probably wrong")
    p.add_argument("recipe", nargs="?", help="with --folds: the YAML recipe (or e.g. demo)")
    add_protocol_args(p, require_checkpoint=False)
    p.add_argument("--folds", type=int, help="train K models on K−1 folds; score out of fold")
    p.add_argument("--data", required=True, metavar="KIND:PATH", help="e.g. folder:data/mine")
    p.add_argument("--split", help="split to audit (val with --checkpoint, train with --folds)")
    p.add_argument("--out", type=Path, required=True, help="label_audit.json, suspects.png")
    p.add_argument("--top", type=int, default=8, help="images in suspects.png (8)")
    p.add_argument(
        "--confidence",
        type=float,
        default=0.9,
        help="evidence where the model gives the label at most 1 − this probability (0.9)",
    )
    p.add_argument(
        "--min-region", type=float, default=0.002, help="least region, share of the image"
    )
    add_overrides(p, help="with --folds: recipe overrides for every fold's run")
    add_overwrite(p, "label_audit.json and suspects.png in --out")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("rank", help="order unlabelled images by what labelling them would teach")
    add_protocol_args(p)
    p.add_argument("inputs", nargs="+", metavar="IMAGE", help="image files, folders or globs")
    p.add_argument("--out", type=Path, required=True, help="the CSV file to write")
    add_overwrite(p, "the CSV file --out")
    p.set_defaults(func=cmd_rank)


# ---------------------------------------------------------------------------------------------
# sanet calibrate
# ---------------------------------------------------------------------------------------------


def cmd_calibrate(args: argparse.Namespace) -> int:
    from sanet._files import atomic_write_text, ensure_writable_dir
    from sanet.cli.common import progress
    from sanet.inference.confidence import pretrained_folder, store_calibration
    from sanet.models.registry import load_model
    from sanet.trust.calibration import check_risk_alpha, fit_calibration, fit_subset
    from sanet.trust.plots import plot_reliability

    folder = pretrained_folder(args.checkpoint)
    protocol = protocol_from_args(args)
    device = device_name(args.device)
    fit_subset([], args.fit_images)  # a bad --fit-images fails now
    dataset = open_dataset(args.data, args.split)
    n = len(dataset) if args.limit is None else min(max(args.limit, 0), len(dataset))
    if n == 0:
        raise UsageError(f"{args.data} split {args.split!r} has no images to calibrate on.")
    if args.risk is not None:
        check_risk_alpha(args.risk, n)
    out = args.out or folder.parent / "calibration"
    ensure_writable_dir(out, "--out")
    refuse_existing([out / "calibration.json", out / "reliability.png"], "--out", args.overwrite)
    ensure_writable_dir(folder, "the model folder")  # the calibration is stored there
    model, _ = load_model(folder)
    check_classes(model, dataset, args.checkpoint)
    fit = len(fit_subset(range(n), args.fit_images))
    with progress() as bar:
        tasks = {
            "fit": bar.add_task("fit temperature", total=fit),
            "measure": bar.add_task("measure", total=n),
        }
        record = fit_calibration(
            model,
            dataset,
            dataset.class_names,
            protocol,
            indices=range(n),
            device=device,
            alpha=args.risk,
            fit_images=args.fit_images,
            on_image=lambda stage: bar.advance(tasks[stage]),
        )
    record.update(data=args.data, split=args.split, checkpoint=str(args.checkpoint))
    record["protocol_mode"] = protocol_mode(protocol)
    atomic_write_text(out / "calibration.json", json.dumps(record, indent=1) + "\n")
    plot_reliability(record, out / "reliability.png")
    stored = store_calibration(folder, {k: record[k] for k in STORED_KEYS if k in record})
    _print_calibration(record, out, stored)
    return 0


def _print_calibration(record: dict[str, Any], out: Path, stored: Path) -> None:
    print(
        f"T = {record['temperature']:.4g}: ECE {record['ece_before']:.4f} → "
        f"{record['ece_after']:.4f}, NLL {record['nll_before']:.4f} → {record['nll_after']:.4f} "
        f"({record['images']} images, {record['labelled_pixels']} labelled pixels)"
    )
    risk = record.get("risk")
    if risk:
        print(
            f"unsure below confidence {risk['threshold']:.6g}: the expected share of sure-and-"
            f"wrong labelled pixels per image is ≤ {risk['alpha']} (conformal risk control over "
            f"{risk['images']} images; {risk['unsure_share']:.1%} of this split's labelled pixels "
            f"are unsure). The guarantee {risk['assumption']}."
        )
    print(f"Wrote {out / 'calibration.json'}, {out / 'reliability.png'}; stored in {stored}")


# ---------------------------------------------------------------------------------------------
# sanet audit-labels
# ---------------------------------------------------------------------------------------------


def cmd_audit(args: argparse.Namespace) -> int:
    from sanet._files import atomic_write_text, ensure_writable_dir
    from sanet.trust.audit import AuditSettings, sort_report

    if (args.checkpoint is None) == (args.recipe is None):
        raise UsageError(
            "audit-labels needs either --checkpoint CKPT (score with a trained model) or a "
            "RECIPE with --folds K (train K models, score out of fold), not both or neither."
        )
    if args.recipe is not None and args.folds is None:
        raise UsageError(f"A recipe ({args.recipe}) needs --folds K (e.g. --folds 5).")
    if args.checkpoint is not None and (args.folds is not None or args.overrides):
        raise UsageError("--folds and --set go with a RECIPE; with --checkpoint drop them.")
    protocol_flags = ("ms_flip", "single_scale", "scales", "flip", "base_size", "crop_size")
    given = [
        f for f in (*protocol_flags, "stride", "device") if getattr(args, f) not in (None, False)
    ]
    if args.recipe is not None and given:
        raise UsageError(
            f"--{given[0].replace('_', '-')} goes with --checkpoint; the fold models are scored "
            "with the recipe's validation protocol on its train.device (set them with --set)."
        )
    if args.top < 0:
        raise UsageError(f"--top must be 0 or more, got {args.top}.")
    settings = AuditSettings(args.confidence, args.min_region)
    ensure_writable_dir(args.out, "--out")
    outputs = [args.out / "label_audit.json", args.out / "suspects.png"]
    refuse_existing(outputs, "--out", args.overwrite)
    if args.checkpoint is not None:
        entries, suspects, dataset, info = _audit_checkpoint(args, settings)
    else:
        entries, suspects, dataset, info = _audit_folds(args, settings)
    ranked = sort_report(entries)
    report = {"images": ranked, "data": args.data, "split": info.pop("split"), **info}
    report["settings"] = {"confidence": settings.confidence, "min_region": settings.min_region}
    atomic_write_text(args.out / "label_audit.json", json.dumps(report, indent=1) + "\n")
    _plot_suspects(dataset, suspects, ranked, args.out / "suspects.png")
    for entry in ranked[: min(5, len(ranked))]:
        top = entry["regions"][0] if entry["regions"] else None
        what = (
            f"{top['kind']}: {top['label']} → {top['predicted']}, {top['pixels']} px" if top else ""
        )
        print(f"{entry['score']:.4f}  {entry['image']}  {what}")
    print(f"Wrote {args.out / 'label_audit.json'} and {args.out / 'suspects.png'}")
    return 0


def _audit_checkpoint(args: argparse.Namespace, settings: Any) -> tuple:
    from sanet.cli.common import progress
    from sanet.inference.confidence import read_calibration
    from sanet.inference.predictor import open_model
    from sanet.trust.audit import audit_split

    protocol = protocol_from_args(args)
    device = device_name(args.device)
    split = args.split or "val"
    dataset = open_dataset(args.data, split)
    if len(dataset) == 0:
        raise UsageError(f"{args.data} split {split!r} has no images to audit.")
    model, meta = open_model(args.checkpoint, device)
    check_classes(model, dataset, args.checkpoint)
    calibration = read_calibration(meta)
    temperature = calibration.temperature if calibration else 1.0
    with progress() as bar:
        task = bar.add_task(f"audit {split}", total=len(dataset))
        entries, suspects = audit_split(
            model,
            dataset,
            dataset.class_names,
            protocol,
            temperature=temperature,
            settings=settings,
            device=device,
            keep=args.top,
            on_image=lambda: bar.advance(task),
        )
    info = {"split": split, "checkpoint": str(args.checkpoint), "temperature": temperature}
    return entries, suspects, dataset, info | {"protocol": protocol.to_dict()}


def _audit_folds(args: argparse.Namespace, settings: Any) -> tuple:
    from sanet.cli.common import progress
    from sanet.config import recipe_path
    from sanet.experiments.folds import kfold_audit
    from sanet.training.progress import TrainingView

    recipe = Path(args.recipe)
    if not recipe.is_file() and recipe.suffix == "" and len(recipe.parts) == 1:
        recipe = recipe_path(args.recipe)  # an embedded recipe by name, e.g. "demo"
    split = args.split or "train"
    state: dict[str, Any] = {}

    def on_fold(fold: int, images: int) -> None:
        # one bar per fold, stopped before the next fold trains (TrainingView draws that)
        state["bar"] = progress()
        state["bar"].start()
        state["task"], state["left"] = (
            state["bar"].add_task(f"audit fold {fold}", total=images),
            images,
        )

    def on_image() -> None:
        state["bar"].advance(state["task"])
        state["left"] -= 1
        if state["left"] == 0:
            state["bar"].stop()

    try:
        entries, suspects, info, dataset = kfold_audit(
            recipe,
            args.folds,
            args.data,
            args.out,
            split=split,
            overrides=args.overrides,
            settings=settings,
            keep=args.top,
            callbacks=TrainingView(),
            on_fold=on_fold,
            on_image=on_image,
        )
    finally:
        if "bar" in state:
            state["bar"].stop()
    return entries, suspects, dataset, info | {"split": split, "recipe": str(recipe)}


def _plot_suspects(dataset: Any, suspects: list, ranked: list[dict], path: Path) -> None:
    from sanet.trust.plots import SuspectRow, plot_suspects

    by_index = {e["index"]: e for e in ranked}
    rows = []
    for s in suspects:
        image, mask = dataset[s.index]
        regions = by_index[s.index]["regions"]
        what = "; ".join(f"{r['kind']} ({r['label']}→{r['predicted']})" for r in regions[:2])
        title = f"{Path(by_index[s.index]['image']).name}  score {s.score:.3f}  {what}"
        rows.append(SuspectRow(image, _numpy(mask), s.prediction, s.disagreement, title))
    plot_suspects(rows, getattr(dataset, "palette", None), path)


def _numpy(mask: Any) -> Any:
    import numpy as np

    return mask.numpy() if hasattr(mask, "numpy") else np.asarray(mask)


# ---------------------------------------------------------------------------------------------
# sanet rank
# ---------------------------------------------------------------------------------------------


def cmd_rank(args: argparse.Namespace) -> int:
    import csv
    import io

    from sanet._files import atomic_write_text, ensure_writable_file
    from sanet.cli.common import progress, report_failed
    from sanet.errors import DataError
    from sanet.inference.predictor import Predictor, load_rgb
    from sanet.trust.audit import rank_scores

    protocol = protocol_from_args(args)
    device = device_name(args.device)
    images = expand_inputs(args.inputs)
    ensure_writable_file(args.out, "--out")
    refuse_existing([args.out], "--out", args.overwrite)
    predictor = Predictor(args.checkpoint, device=device, protocol=protocol)
    rows, failed = [], []
    with progress() as bar:
        task = bar.add_task("rank", total=len(images))
        for path in images:
            try:
                rgb = load_rgb(path)
            except (DataError, FileNotFoundError) as err:
                failed.append(f"{path}: {getattr(err, 'problem', None) or err}")
                bar.advance(task)
                continue
            scores = rank_scores(
                predictor.model,
                rgb,
                protocol,
                temperature=predictor.temperature,
                device=predictor.device,
            )
            rows.append({"image": str(path), **scores})
            bar.advance(task)
    rows.sort(key=lambda r: -r["score"])
    text = io.StringIO()
    fields = ["rank", "image", "score", "mean_entropy", "flip_disagreement"]
    writer = csv.DictWriter(text, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for k, row in enumerate(rows, 1):
        writer.writerow({"rank": k, **{f: _fmt(row[f]) for f in fields[1:]}})
    atomic_write_text(args.out, text.getvalue())
    print(f"Wrote {args.out}: {len(rows)} images, most worth labelling first")
    return report_failed("rank", failed, len(images), "fix or convert these files and rerun")


def _fmt(value: Any) -> Any:
    return f"{value:.6f}" if isinstance(value, float) else value
