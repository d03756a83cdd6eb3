"""How often each guarantee of `sanet calibrate` fails, over many random calibration/test splits
of scenes the model never saw (docs/trust.md, "Checked on random splits").

    .venv/bin/python benchmarks/calibration_splits.py --run /tmp/calib/run --work /tmp/calib/splits

1. The temperature is fitted once on `--fit-images` held-out scenes (seed `--fit-seed`), as
   `sanet calibrate` fits it (`fit_calibration`, no risk level).
2. A pool of `--pool` other held-out scenes (seed `--pool-seed`) is measured once with the
   library's measuring pass (`measure_images`, per-class curves on): per image its loss curve
   on the threshold grid. Cached in WORK/pool.pkl (a rerun reuses it).
3. Each of `--splits` splits draws `--n-cal` calibration images from the pool at random; the
   rest are the test images. The thresholds are chosen on the calibration images exactly as
   `sanet calibrate` chooses them, and the test images' own curves say what happened there.

Prints one JSON line per guarantee (and writes them to WORK/splits.jsonl):

- mean (`--risk α`): the promise is `E[L] ≤ α` over calibration draws and images: the mean over
  splits of the test mean should be ≤ α; how often a split's test mean exceeds α is reported
  too (an expectation bound does not limit it).
- per image (`--risk α --per-image δ`, level 1 − ε): fails when the share of test images above
  α exceeds δ; nominal failure rate ε.
- per class (`--risk α --per-class`): per class, the test images' mean sure-and-wrong share among
  the labelled pixels predicted as the class, against α.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import time
from pathlib import Path

import numpy as np
import torch

from sanet.data import build_dataset
from sanet.devices import cpu_features
from sanet.inference.runs import run_protocol
from sanet.models import registry
from sanet.trust.calibration import fit_calibration, measure_images
from sanet.trust.images import ImageStats
from sanet.trust.risk import THRESHOLDS, class_thresholds, conformal_threshold, ltt_threshold


def emit(out: Path, **record) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    with out.open("a") as f:
        f.write(line + "\n")


def machine() -> str:
    """The CPU model and core count (e.g. "AMD EPYC ..., 2 cores")."""
    return f"{cpu_features()['name']}, {os.cpu_count()} cores"


def scenes(seed: int, n: int, size: int):
    return build_dataset("synthetic", None, "val", num_images=n, size=size, seed=seed)


def pool_stats(args) -> tuple[ImageStats, float, list[str]]:
    """The temperature and the pool's per-image curves (cached in WORK/pool.pkl)."""
    cache = args.work / "pool.pkl"
    if cache.exists():
        return pickle.loads(cache.read_bytes())
    model, _ = registry.load_model(Path(args.run) / "model")
    protocol = run_protocol(args.run, device="cpu")
    fit = scenes(args.fit_seed, args.fit_images, args.size)
    t0 = time.time()
    temperature = fit_calibration(model, fit, fit.class_names, protocol)["temperature"]
    pool = scenes(args.pool_seed, args.pool, args.size)
    k = len(pool.class_names)
    measured = measure_images(model, pool, range(len(pool)), k, protocol, temperature, "cpu", True)
    result = (measured["images"], temperature, list(pool.class_names))
    cache.write_bytes(pickle.dumps(result))
    print(f"# pool measured in {time.time() - t0:.0f} s", flush=True)
    return result


def interval(k: int, n: int) -> list[float]:
    """The 95 % Clopper-Pearson interval of a rate seen ``k`` times in ``n``."""
    from scipy.stats import beta

    low = beta.ppf(0.025, k, n - k + 1) if k else 0.0
    high = beta.ppf(0.975, k + 1, n - k) if k < n else 1.0
    return [round(float(low), 4), round(float(high), 4)]


def subset(stats: ImageStats, rows: np.ndarray) -> ImageStats:
    """The images ``rows`` of ``stats`` as their own ImageStats."""
    out = ImageStats(stats.num_classes, stats.per_class)
    for name in ("names", "losses", "sure", "labelled", "pixels", "classes"):
        setattr(out, name, [getattr(stats, name)[i] for i in rows])
    return out


def class_curves(stats: ImageStats, k: int) -> list[np.ndarray]:
    return [stats.class_losses(c) for c in range(k)]


def class_test_risk(stats: ImageStats, thresholds: list) -> list[float | None]:
    """Per class, the mean over test images predicting it of its sure-and-wrong share."""
    out = []
    for c, t in enumerate(thresholds):
        curves = stats.class_losses(c)
        if not len(curves):
            out.append(None)
            continue
        out.append(0.0 if t is None else float(curves[:, np.searchsorted(THRESHOLDS, t)].mean()))
    return out


def run_splits(args, stats: ImageStats, names: list[str]) -> dict:
    rng = np.random.default_rng(args.split_seed)
    n, k = len(stats.names), len(names)
    got = {"mean": [], "mean_above": [], "per_image": [], "per_class": [], "unsure": {}}
    for key in ("mean", "per_image", "per_class"):
        got["unsure"][key] = []
    for _ in range(args.splits):
        order = rng.permutation(n)
        cal, test = subset(stats, order[: args.n_cal]), subset(stats, order[args.n_cal :])
        lam = conformal_threshold(cal.matrix(), args.alpha)[0]
        risk, unsure = test.at(lam)
        got["mean"].append(risk.mean())
        got["mean_above"].append((risk > args.alpha_image).mean())
        got["unsure"]["mean"].append(unsure.mean())
        lam_i = ltt_threshold(cal.matrix(), args.alpha_image, args.delta, 1 - args.level)[0]
        risk, unsure = test.at(lam_i)
        got["per_image"].append((risk > args.alpha_image).mean())
        got["unsure"]["per_image"].append(unsure.mean())
        chosen = class_thresholds(class_curves(cal, k), args.alpha, lam, names)
        rule = [c["threshold"] for c in chosen]
        got["per_class"].append(class_test_risk(test, rule))
        got["unsure"]["per_class"].append(test.at(rule)[1].mean())
    return got


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--fit-seed", type=int, default=21)
    p.add_argument("--fit-images", type=int, default=200)
    p.add_argument("--pool-seed", type=int, default=22)
    p.add_argument("--pool", type=int, default=1000)
    p.add_argument("--n-cal", type=int, default=200)
    p.add_argument("--splits", type=int, default=500)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--alpha", type=float, default=0.05, help="mean and per-class risk level")
    p.add_argument("--alpha-image", type=float, default=0.1, help="per-image risk level")
    p.add_argument("--delta", type=float, default=0.1)
    p.add_argument("--level", type=float, default=0.9)
    args = p.parse_args()
    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    out = args.work / "splits.jsonl"
    stats, temperature, names = pool_stats(args)
    raw, _ = stats.at(0.0)
    setting = {
        "run": args.run,
        "temperature": temperature,
        "pool": len(stats.names),
        "n_cal": args.n_cal,
        "splits": args.splits,
        "machine": machine(),
    }
    emit(out, kind="pool", **setting, raw_mean_risk=float(raw.mean()),
         raw_share_above_alpha_image=float((raw > args.alpha_image).mean()))  # fmt: skip
    got = run_splits(args, stats, names)
    for record in summaries(args, got, names):
        emit(out, **record)


def summaries(args, got: dict, names: list[str]) -> list[dict]:
    """One record per guarantee: what was promised and how often the test images broke it."""
    mean = np.array(got["mean"])
    share = np.array(got["per_image"])
    failures = int((share > args.delta).sum())
    per_class = np.array(got["per_class"], dtype=float)  # (splits, K); NaN: not in the test
    classes = {}
    for c, name in enumerate(names):
        values = per_class[:, c][~np.isnan(per_class[:, c])]
        classes[name] = {
            "mean_test_risk": float(values.mean()),
            "se": float(values.std(ddof=1) / np.sqrt(len(values))),
            "share_of_splits_above_alpha": float((values > args.alpha).mean()),
        }
    return [
        {
            "kind": "mean",
            "alpha": args.alpha,
            "mean_test_risk": float(mean.mean()),
            "se": float(mean.std(ddof=1) / np.sqrt(len(mean))),
            "share_of_splits_above_alpha": float((mean > args.alpha).mean()),
            "unsure": float(np.mean(got["unsure"]["mean"])),
            # the per-image statement's share, left to chance by the mean rule
            "mean_share_above_alpha_image": float(np.mean(got["mean_above"])),
            "splits_share_above_alpha_image_over_delta": float(
                (np.array(got["mean_above"]) > args.delta).mean()
            ),
        },
        {
            "kind": "per_image",
            "alpha": args.alpha_image,
            "delta": args.delta,
            "level": args.level,
            "nominal_failure_rate": round(1 - args.level, 6),
            "failures": failures,
            "failure_rate": failures / len(share),
            "ci95": interval(failures, len(share)),
            "mean_share_above_alpha": float(share.mean()),
            "q90_share_above_alpha": float(np.quantile(share, 0.9)),
            "unsure": float(np.mean(got["unsure"]["per_image"])),
        },
        {
            "kind": "per_class",
            "alpha": args.alpha,
            "classes": classes,
            "unsure": float(np.mean(got["unsure"]["per_class"])),
        },
    ]


if __name__ == "__main__":
    main()
