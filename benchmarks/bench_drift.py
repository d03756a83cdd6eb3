"""How ``sanet serve``'s drift monitor behaves on a trained model (docs/deploy.md, "Drift"):
the false-alarm rate of windows of in-distribution requests, and how many requests of a shifted
stream pass before it is flagged. One JSON line per measurement on stdout (and in
``WORK/results.jsonl``).

    .venv/bin/python benchmarks/bench_drift.py --run runs/demo --work /tmp/drift

1. The run is copied to ``WORK/run`` and calibrated there (``sanet.calibrate`` on the first
   ``--calib-images`` images of its val split, ``--risk``): the temperature and the risk
   threshold the server uses. Nothing in ``--run`` changes.
2. Per-request statistics (mean calibrated confidence, unsure share, class shares, pixels) of a
   pool of ``--pool`` held-out scenes (the ``test`` split: the demo's generator, images neither
   training nor calibration saw) and of ``--shifted`` scenes under each shift, computed by the
   server's own function (``sanet.serve.unsure.predict``, at the server's working size), cached
   in ``WORK/stats.json``.
3. False alarms: ``--repeats`` times, a reference of ``--reference`` pool images drawn at random
   (the calibration images a model would store) and a stream of ``--stream`` other pool images
   through a :class:`~sanet.serve.drift.DriftMonitor` (the server's class); the share of its
   full windows flagged "drifting". The guarantee is over both draws: reported per window over
   all streams, and the spread over references.
4. Detection: ``--repeats`` times, a fresh reference, one window of in-distribution requests,
   then shifted scenes: how many shifted requests pass until the window is "drifting".
5. The served app (``create_app`` under FastAPI's test client) is fed pool images and its
   ``/healthz`` compared with the offline monitor: the same statistics reach the same state.
6. When the run's calibration carries the reference ``sanet calibrate`` stores (its calibration
   images, the ``val`` split), the false alarms of streams of held-out ``test`` scenes against
   that one stored reference (as served), and how far the stored per-image statistics are from
   the server's own of the same images.

``--measures`` picks some of them (``false_alarms,detection,served,stored``).
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from sanet.api.calibration import calibrate
from sanet.data.synthetic import SyntheticDataset
from sanet.inference import Predictor
from sanet.serve.drift import DriftMonitor, RequestStats, read_reference
from sanet.serve.unsure import predict


def shift(name: str, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One held-out scene under shift ``name`` (each a change a deployed model meets)."""
    img = Image.fromarray(rgb)
    h, w = rgb.shape[:2]
    if name == "darker":  # exposure: 60 % of the brightness
        return (rgb * 0.6).astype(np.uint8)
    if name == "blur":  # out of focus
        return np.asarray(img.filter(ImageFilter.GaussianBlur(1.5)))
    if name == "noise":  # sensor noise, σ = 20 grey levels
        return np.clip(rgb + rng.normal(0, 20, rgb.shape), 0, 255).astype(np.uint8)
    if name == "jpeg":  # quality 10
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=10)
        return np.asarray(Image.open(buf).convert("RGB"))
    if name == "zoom":  # the central half, enlarged to the same size: objects twice as large
        crop = img.crop((w // 4, h // 4, w // 4 + w // 2, h // 4 + h // 2))
        return np.asarray(crop.resize((w, h), Image.BILINEAR))
    if name == "smaller":  # the whole scene at 2/3 of the size: fewer pixels per image
        return np.asarray(img.resize((w * 2 // 3, h * 2 // 3), Image.BILINEAR))
    raise ValueError(name)


SHIFTS = ("darker", "blur", "noise", "jpeg", "zoom", "smaller", "glyphs")


def as_row(stats: RequestStats) -> dict:
    return {
        "mean_confidence": stats.mean_confidence,
        "unsure_share": stats.unsure_share,
        "class_shares": list(stats.class_shares),
        "pixels": stats.pixels,
    }


def as_stats(row: dict) -> RequestStats:
    return RequestStats(
        row["mean_confidence"], row["unsure_share"], tuple(row["class_shares"]), row["pixels"]
    )


def pool_stats(predictor: Predictor, side: int, args: argparse.Namespace, cache: Path) -> dict:
    """``{"pool": [row, ...], shift: [row, ...]}``, computed once and cached."""
    done = json.loads(cache.read_text()) if cache.exists() else {}
    opts = {"size": args.size, "seed": 0}
    test = SyntheticDataset("test", num_images=args.pool + args.shifted, **opts)
    glyphs = SyntheticDataset("test", num_images=args.shifted, generator="glyphs", **opts)
    wanted = {"pool": range(args.pool), **{s: range(args.shifted) for s in SHIFTS}}
    for name, indices in wanted.items():
        if len(done.get(name, [])) == len(indices):
            continue
        rng = np.random.default_rng(1)
        rows, start = [], time.perf_counter()
        for i in indices:
            if name == "pool":
                rgb = test.read_image(i)
            elif name == "glyphs":  # other shapes and textures: a new kind of scene
                rgb = glyphs.read_image(i)
            else:
                rgb = shift(name, test.read_image(args.pool + i), rng)
            rows.append(as_row(predict(lambda: False, predictor, rgb, side).stats))
        done[name] = rows
        cache.write_text(json.dumps(done))
        seconds = time.perf_counter() - start
        print(f"# stats of {len(rows)} {name} images in {seconds:.0f} s", flush=True)
    return done


def monitor(reference: list[dict], names: list[str], window: int) -> DriftMonitor:
    record = {"reference": {"images": len(reference), "per_image": columns(reference)}}
    return DriftMonitor(read_reference(record, names)[0], names, window=window)


def columns(rows: list[dict]) -> dict:
    return {
        k: [r[k] for r in rows]
        for k in ("mean_confidence", "unsure_share", "class_shares", "pixels")
    }


def false_alarms(pool: list[dict], names: list[str], args, window: int) -> dict:
    rng = np.random.default_rng(2)
    flagged, windows, per_reference, runs = 0, 0, [], []
    for _ in range(args.repeats):
        order = rng.permutation(len(pool))
        ref = [pool[i] for i in order[: args.reference]]
        stream = [pool[i] for i in order[args.reference : args.reference + args.stream]]
        mon, mine, run, longest = monitor(ref, names, window), 0, 0, 0
        for row in stream:
            mon.add(as_stats(row))
            state = mon.state()["status"]
            if state in ("in distribution", "drifting"):
                windows += 1
                mine += state == "drifting"
                run = run + 1 if state == "drifting" else 0
                longest = max(longest, run)
        flagged += mine
        runs.append(longest)
        per_reference.append(mine / (len(stream) - window + 1))
    rates = np.array(per_reference)
    se = rates.std(ddof=1) / np.sqrt(len(rates))  # windows of one stream are not independent
    return {
        "measure": "false_alarms",
        "window": window,
        "reference": args.reference,
        "streams": args.repeats,
        "windows": windows,
        "flagged_share": round(flagged / windows, 4),
        "flagged_share_95ci": [
            round(flagged / windows - 1.96 * se, 4),
            round(flagged / windows + 1.96 * se, 4),
        ],
        "streams_with_any_alarm": round(float((rates > 0).mean()), 3),
        "per_reference_share_median": round(float(np.median(rates)), 4),
        "per_reference_share_p90": round(float(np.quantile(rates, 0.9)), 4),
        "longest_alarm_run_p95": float(np.quantile(runs, 0.95)),
        "longest_alarm_run_max": int(max(runs)),
        "threshold": mon.threshold,
    }


def detection(pool: list[dict], shifted: list[dict], names, args, window: int, name: str) -> dict:
    rng = np.random.default_rng(3)
    delays, features = [], {}
    for _ in range(args.repeats):
        order = rng.permutation(len(pool))
        mon = monitor([pool[i] for i in order[: args.reference]], names, window)
        for i in order[args.reference : args.reference + window]:
            mon.add(as_stats(pool[i]))
        delay = None
        for n, j in enumerate(rng.permutation(len(shifted))[: args.max_delay], start=1):
            mon.add(as_stats(shifted[j]))
            state = mon.state()
            if state["status"] == "drifting":
                delay = n
                features[state["feature"]] = features.get(state["feature"], 0) + 1
                break
        delays.append(delay)
    found = np.array([d for d in delays if d is not None])
    return {
        "measure": "detection",
        "shift": name,
        "window": window,
        "reference": args.reference,
        "streams": args.repeats,
        "detected_share": round(len(found) / len(delays), 3),
        "max_requests": args.max_delay,
        "delay_median": float(np.median(found)) if len(found) else None,
        "delay_p90": float(np.quantile(found, 0.9)) if len(found) else None,
        "delay_max": int(found.max()) if len(found) else None,
        "first_feature": features,
        "mean_confidence_shifted": round(
            float(np.mean([r["mean_confidence"] for r in shifted])), 4
        ),
        "mean_confidence_pool": round(float(np.mean([r["mean_confidence"] for r in pool])), 4),
    }


def stored_reference(predictor: Predictor, pool: list[dict], names, args) -> dict | None:
    """Streams of held-out scenes against the one reference the model stores, if it has one."""
    record = predictor.calibration.record
    ref, why = read_reference(record, names)
    if ref is None:
        print(f"# no stored reference: {why}", flush=True)
        return None
    images = SyntheticDataset("val", num_images=ref.images, size=args.size, seed=0)
    served = [  # the server's statistics of the first calibration images
        as_row(predict(lambda: False, predictor, images.read_image(i), args.size).stats)
        for i in range(min(ref.images, 50))
    ]
    stored = record["reference"]["per_image"]
    gap = max(
        float(np.max(np.abs(np.subtract(row[k], stored[k][i]))))
        for i, row in enumerate(served)
        for k in ("mean_confidence", "unsure_share", "class_shares", "pixels")
        if stored.get(k) is not None and row[k] is not None
    )
    rng = np.random.default_rng(4)
    flagged = windows = 0
    per_stream = []
    for _ in range(args.repeats):
        mon, mine = DriftMonitor(ref, names, window=args.window), 0
        for i in rng.permutation(len(pool))[: args.stream]:
            mon.add(as_stats(pool[i]))
            state = mon.state()["status"]
            windows += state in ("in distribution", "drifting")
            mine += state == "drifting"
        flagged += mine
        per_stream.append(mine)
    return {
        "measure": "false_alarms_stored_reference",
        "window": args.window,
        "reference": ref.images,
        "streams": args.repeats,
        "windows": windows,
        "flagged_share": round(flagged / windows, 4),
        "streams_with_any_alarm": round(float(np.mean(np.array(per_stream) > 0)), 3),
        "threshold": mon.threshold,
        "stored_vs_served_max_gap": gap,
    }


def served_check(predictor: Predictor, side: int, args, ref: list[dict], names) -> dict:
    """The app itself (limits as ``sanet serve`` sets them) against the offline monitor."""
    from fastapi.testclient import TestClient

    from sanet.serve.app import create_app
    from sanet.serve.limits import ServeLimits

    served = Predictor(args.work / "run")  # as calibrate would store it: in the record
    served.calibration.record["reference"] = {"images": len(ref), "per_image": columns(ref)}
    offline = monitor(ref, names, args.window)
    images = SyntheticDataset("test", num_images=args.window, size=args.size, seed=0)
    with TestClient(
        create_app(served, ServeLimits(max_side=side), drift_window=args.window),
        base_url="http://127.0.0.1",
    ) as client:
        for i in range(args.window):
            buf = io.BytesIO()
            Image.fromarray(images.read_image(i)).save(buf, "PNG")
            assert (
                client.post("/v1/segment", files={"image": ("a.png", buf.getvalue())}).status_code
                == 200
            )
            offline.add(predict(lambda: False, predictor, images.read_image(i), side).stats)
        drift = client.get("/healthz").json()["drift"]
    want = offline.state()
    return {
        "measure": "served_equals_offline",
        "status": [drift["status"], want["status"]],
        "statistic": [drift["statistic"], want["statistic"]],
        "threshold": [drift["threshold"], want["threshold"]],
        "same": drift["status"] == want["status"] and drift["statistic"] == want["statistic"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, required=True, help="a trained run (e.g. runs/demo)")
    p.add_argument("--work", type=Path, required=True, help="a folder of this study's files")
    p.add_argument("--size", type=int, default=96, help="scene side (the demo's: 96)")
    p.add_argument("--risk", type=float, default=0.1, help="α of the risk threshold")
    p.add_argument("--calib-images", type=int, default=200)
    p.add_argument("--pool", type=int, default=1000, help="held-out in-distribution scenes")
    p.add_argument("--shifted", type=int, default=300, help="scenes per shift")
    p.add_argument("--reference", type=int, default=200, help="reference images per draw")
    p.add_argument("--stream", type=int, default=300, help="requests per false-alarm stream")
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--window", type=int, default=50)
    p.add_argument("--windows", default="20,50,100", help="windows measured besides --window")
    p.add_argument("--max-delay", type=int, default=300, help="shifted requests at most")
    p.add_argument("--measures", default="false_alarms,detection,served,stored")
    args = p.parse_args()
    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    run = args.work / "run"
    if not run.exists():
        shutil.copytree(args.run, run, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    predictor = Predictor(run)
    if predictor.calibration is None:
        options = {"num_images": args.calib_images, "size": args.size, "seed": 0}
        calibrate(
            run,
            "synthetic:",
            split="val",
            data_options=options,
            risk=args.risk,
            out=args.work / "calibration",
            overwrite=True,
        )
        predictor = Predictor(run)
    side = args.size  # the demo's working side: data.base_size
    names = list(predictor.class_names)
    stats = pool_stats(predictor, side, args, args.work / "stats.json")
    out = (args.work / "results.jsonl").open("a")

    def emit(record: dict) -> None:
        record.update(machine=platform.node(), torch_threads=torch.get_num_threads())
        line = json.dumps(record)
        print(line, flush=True)
        out.write(line + "\n")
        out.flush()

    emit(
        {
            "measure": "calibration",
            "temperature": predictor.calibration.temperature,
            "threshold": predictor.calibration.threshold,
            "alpha": predictor.calibration.alpha,
        }
    )
    pool, measures = stats["pool"], args.measures.split(",")
    windows = sorted({args.window, *(int(w) for w in args.windows.split(",") if w)})
    for window in windows if "false_alarms" in measures else []:
        emit(false_alarms(pool, names, args, window))
    for window in windows if "detection" in measures else []:
        for name in SHIFTS:
            emit(detection(pool, stats[name], names, args, window, name))
    if "served" in measures:
        emit(served_check(predictor, side, args, pool[: args.reference], names))
    if "stored" in measures and (found := stored_reference(predictor, pool, names, args)):
        emit(found)


if __name__ == "__main__":
    main()
