"""Trust measured on a trained run (the demo's): `sanet calibrate` on its own val scenes; ECE,
NLL and the risk control on held-out scenes it was not calibrated on; planted label errors
found by `sanet audit-labels`; `sanet rank`'s score against each image's error. Prints one JSON
line per measurement (docs/trust.md quotes them).

    .venv/bin/python benchmarks/trust_demo.py --run runs/demo --work /tmp/trust

The run is copied to WORK/run first (calibrate writes into its model/); nothing in --run changes.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from sanet.cli import main
from sanet.data.planted import PLANTED_KINDS, write_planted_folder
from sanet.data.prepare import prepare_synthetic
from sanet.inference import Predictor
from sanet.inference.confidence import read_calibration
from sanet.trust.audit import planted_recall, rank_scores


def emit(**record) -> None:
    print(json.dumps(record), flush=True)


def held_out(run: Path, folder: Path, threshold: float) -> dict:
    """ECE/NLL raw and calibrated (torchmetrics), per-image sure-and-wrong and unsure shares,
    and rank scores against each image's pixel error, on scenes calibrate never saw."""
    from scipy import stats
    from torchmetrics.classification import MulticlassCalibrationError

    meta = json.loads((run / "model/config.json").read_text())["metadata"]
    protocol = read_calibration(meta).eval_protocol()  # the protocol calibrate used
    calibrated = Predictor(run, protocol=protocol)
    raw = Predictor(run, protocol=protocol, calibrated=False)
    k = len(calibrated.class_names)
    ece = {n: MulticlassCalibrationError(k, n_bins=15, norm="l1", ignore_index=255) for n in "rc"}
    nll, labelled, losses, unsure, scores, errors = {"r": 0.0, "c": 0.0}, 0, [], [], [], []
    for path in sorted((folder / "images/val").glob("*.png")):
        y = torch.from_numpy(np.array(Image.open(folder / "masks/val" / path.name))).long()
        p_raw = torch.from_numpy(raw.predict_proba(path))
        p_cal = torch.from_numpy(calibrated.predict_proba(path))
        valid = y != 255
        for name, p in (("r", p_raw), ("c", p_cal)):
            flat = p.reshape(k, -1).T
            ece[name].update(flat, y.reshape(-1))
            nll[name] += float(
                -p.gather(0, y.clamp(max=k - 1)[None])[0][valid].clamp_min(1e-30).log().sum()
            )
        wrong = p_raw.argmax(0) != y
        sure = p_cal.max(0).values >= threshold
        n = int(valid.sum())
        labelled += n
        losses.append(float((sure & wrong & valid).sum()) / max(n, 1))
        unsure.append(float((~sure & valid).sum()) / max(n, 1))
        errors.append(float((wrong & valid).sum()) / max(n, 1))
        scores.append(
            rank_scores(calibrated.model, path, protocol, temperature=calibrated.temperature)[
                "score"
            ]
        )
    rho = stats.spearmanr(scores, errors)
    return {
        "images": len(losses),
        "ece_raw": float(ece["r"].compute()),
        "ece_calibrated": float(ece["c"].compute()),
        "nll_raw": nll["r"] / labelled,
        "nll_calibrated": nll["c"] / labelled,
        "sure_and_wrong_mean": float(np.mean(losses)),
        "sure_and_wrong_se": float(np.std(losses, ddof=1) / math.sqrt(len(losses))),
        "unsure_mean": float(np.mean(unsure)),
        "pixel_error_mean": float(np.mean(errors)),
        "rank_spearman_vs_error": float(rho.statistic),
        "rank_spearman_p": float(rho.pvalue),
    }


def planted(run: Path, work: Path, images: int, share: float, size: int) -> dict:
    folder = work / "planted"
    key = write_planted_folder(
        folder, num_images=images, share=share, size=size, seed=2, split="val"
    )
    out = work / "audit"
    argv = ["audit-labels", "--checkpoint", str(run), "--data", f"folder:{folder}"]
    assert main([*argv, "--split", "val", "--out", str(out)]) == 0
    ranked = [e["image"] for e in json.loads((out / "label_audit.json").read_text())["images"]]
    answer = [p["image"] for p in key["images"]]
    result = {"images": images, "planted": len(answer), **planted_recall(ranked, answer)}
    top = set(ranked[: result["top"]])
    for kind in PLANTED_KINDS:
        mine = [p["image"] for p in key["images"] if p["kind"] == kind]
        result[f"recall[{kind}]"] = sum(i in top for i in mine) / max(len(mine), 1)
    return result


def kfold(
    run: Path, work: Path, folds: int, steps: int, images: int, share: float, size: int
) -> dict:
    """`audit-labels RECIPE --folds K` with the run's own recipe, each fold trained `steps` steps
    on the other folds of a planted training split."""
    folder = work / "planted-train"
    key = write_planted_folder(folder, num_images=images, share=share, size=size, seed=3)
    out = work / "kfold"
    argv = ["audit-labels", str(run / "config.yaml"), "--folds", str(folds)]
    argv += ["--data", f"folder:{folder}", "--out", str(out)]
    start = time.perf_counter()
    assert main([*argv, "--set", f"train.max_steps={steps}", "train.val_every=0"]) == 0
    ranked = [e["image"] for e in json.loads((out / "label_audit.json").read_text())["images"]]
    answer = [p["image"] for p in key["images"]]
    result = {"folds": folds, "steps_per_fold": steps, "images": images, "planted": len(answer)}
    result |= planted_recall(ranked, answer)
    top = set(ranked[: result["top"]])
    for kind in PLANTED_KINDS:
        mine = [p["image"] for p in key["images"] if p["kind"] == kind]
        result[f"recall[{kind}]"] = sum(i in top for i in mine) / max(len(mine), 1)
    val = []
    for f in range(folds):
        records = (out / "runs" / f"fold{f}" / "metrics.jsonl").read_text().splitlines()
        val += [json.loads(r)["mIoU"] for r in records if '"val"' in r][-1:]
    return result | {"fold_val_mIoU": val, "seconds": round(time.perf_counter() - start, 1)}


def checkpoint_measurements(
    args: argparse.Namespace, run: Path, size: int, seed: int, machine: dict
) -> None:
    prepare_synthetic(args.work / "cal", num_train=0, num_val=args.images, size=size, seed=seed)
    prepare_synthetic(
        args.work / "held", num_train=0, num_val=args.images, size=size, seed=seed + 1
    )
    argv = ["calibrate", "--checkpoint", str(run), "--data", f"folder:{args.work / 'cal'}"]
    assert main([*argv, "--risk", str(args.risk), "--out", str(args.work / "calibration")]) == 0
    record = json.loads((args.work / "calibration/calibration.json").read_text())
    keep = ("temperature", "ece_before", "ece_after", "nll_before", "nll_after", "images", "risk")
    emit(what="calibrate (the run's own val scenes)", **{k: record[k] for k in keep}, **machine)
    emit(what="held-out scenes", **held_out(run, args.work / "held", record["risk"]["threshold"]))
    result = planted(run, args.work, args.planted_images, args.planted_share, size)
    emit(what="planted label errors", **result)


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a trained run directory")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--images", type=int, default=200, help="calibration and held-out scenes")
    parser.add_argument("--risk", type=float, default=0.05)
    parser.add_argument("--planted-images", type=int, default=200)
    parser.add_argument("--planted-share", type=float, default=0.1)
    parser.add_argument("--kfold", type=int, default=0, help="also audit with K fold models")
    parser.add_argument("--kfold-steps", type=int, default=150, help="training steps per fold")
    parser.add_argument("--kfold-images", type=int, default=120)
    parser.add_argument("--skip-checkpoint", action="store_true", help="only the k-fold audit")
    args = parser.parse_args()
    run = args.work / "run"
    shutil.rmtree(args.work, ignore_errors=True)
    run.mkdir(parents=True)
    shutil.copy(args.run / "config.yaml", run / "config.yaml")
    shutil.copytree(args.run / "model", run / "model")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    size = int((cfg["data"].get("options") or {}).get("size", 128))
    seed = int((cfg["data"].get("options") or {}).get("seed", 0))
    machine = {
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }
    start = time.perf_counter()
    if not args.skip_checkpoint:
        checkpoint_measurements(args, run, size, seed, machine)
    if args.kfold:
        emit(
            what="planted label errors, k-fold",
            **kfold(
                run,
                args.work,
                args.kfold,
                args.kfold_steps,
                args.kfold_images,
                args.planted_share,
                size,
            ),
        )
    emit(what="wall time", seconds=round(time.perf_counter() - start, 1))


if __name__ == "__main__":
    main_()
