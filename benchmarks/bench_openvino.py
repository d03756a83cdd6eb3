"""OpenVINO against onnxruntime on the same exported files (docs/benchmarks.md, "Backends side
by side"): the bare graphs on the same normalised windows, one thread, calls alternated; pixel
agreement with onnxruntime fp32 and the mIoU against the labels.

OpenVINO is not a dependency of sanet, so this runs in two steps: ``dump`` (in sanet's
environment) writes the windows and labels as ``.npy``; ``run`` (in an environment with
``openvino`` and ``onnxruntime``, no torch needed) times the graphs and prints one JSON line
per graph and runtime::

    .venv/bin/python benchmarks/bench_openvino.py dump --data synthetic: --out /tmp/ov-data \\
        --options '{num_images: 384, size: 96, seed: 0}' --images 24
    /tmp/ov/bin/python benchmarks/bench_openvino.py run --data /tmp/ov-data \\
        --fp32 fp32.onnx --int8 int8.onnx --rounds 20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np


def dump(args: argparse.Namespace) -> None:
    import yaml

    from sanet.api.common import open_dataset
    from sanet.inference.predictor import image_to_tensor, normalize

    dataset = open_dataset(args.data, args.split, yaml.safe_load(args.options or "{}"))
    n = min(args.images, len(dataset))
    picked = [round(i * (len(dataset) - 1) / max(n - 1, 1)) for i in range(n)]
    x = [normalize(image_to_tensor(dataset[i][0])[None]).numpy()[0] for i in picked]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "x.npy", np.stack(x).astype(np.float32))
    np.save(out / "y.npy", np.stack([np.asarray(dataset[i][1]) for i in picked]))


def _miou(masks: list[np.ndarray], labels: np.ndarray, k: int) -> float:
    cm = np.zeros((k, k), np.int64)
    for m, t in zip(masks, labels, strict=True):
        v = t != 255
        cm += np.bincount(k * t[v].astype(np.int64) + m[v], minlength=k * k).reshape(k, k)
    inter = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - inter
    return float((inter / np.maximum(union, 1))[union > 0].mean())


def run(args: argparse.Namespace) -> None:
    import onnxruntime as ort
    import openvino as ov

    x, y = np.load(Path(args.data) / "x.npy"), np.load(Path(args.data) / "y.npy")
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    core = ov.Core()

    def compiled(path: str, precision: str):
        hints = {"INFERENCE_NUM_THREADS": args.threads, "PERFORMANCE_HINT": "LATENCY"}
        hints["INFERENCE_PRECISION_HINT"] = precision
        model = core.compile_model(path, "CPU", hints)
        return lambda a: model(a)[model.output("logits")]

    def session(path: str):
        s = ort.InferenceSession(path, so)
        return lambda a: s.run(["logits"], {"image": a})[0]

    runs = {
        "onnxruntime fp32": session(args.fp32),
        "onnxruntime int8": session(args.int8),
        "openvino fp32 (f32)": compiled(args.fp32, "f32"),
        "openvino fp32 (bf16 hint)": compiled(args.fp32, "bf16"),
        "openvino int8 (QDQ file)": compiled(args.int8, "f32"),
    }
    masks = {n: [f(x[i : i + 1]).argmax(1)[0] for i in range(len(x))] for n, f in runs.items()}
    k = int(runs["onnxruntime fp32"](x[:1]).shape[1])
    ref = masks["onnxruntime fp32"]
    wall: dict[str, list[float]] = {n: [] for n in runs}
    cpu: dict[str, list[float]] = {n: [] for n in runs}
    names = list(runs)
    for r in range(args.rounds):  # the order rotates from round to round
        for n in names[r % len(names) :] + names[: r % len(names)]:
            start, start_cpu = time.perf_counter(), time.process_time()
            runs[n](x[r % len(x)][None])
            wall[n].append(time.perf_counter() - start)
            cpu[n].append(time.process_time() - start_cpu)
    for n in runs:
        agree = float(np.mean([np.mean(a == b) for a, b in zip(masks[n], ref, strict=True)]))
        row = {"graph": n, "cpu_ms": round(statistics.median(cpu[n]) * 1e3, 2)}
        row |= {"wall_ms": round(statistics.median(wall[n]) * 1e3, 2), "agreement": agree}
        print(json.dumps(row | {"miou": round(_miou(masks[n], y, k), 4)}))
    caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    versions = {"openvino": ov.__version__, "onnxruntime": ort.__version__}
    print(json.dumps(versions | {"load": os.getloadavg()[0], "openvino_cpu": caps}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="step", required=True)
    d = sub.add_parser("dump")
    d.add_argument("--data", default="synthetic:")
    d.add_argument("--split", default="val")
    d.add_argument("--options", default=None, help="dataset options (YAML)")
    d.add_argument("--images", type=int, default=24)
    d.add_argument("--out", required=True)
    r = sub.add_parser("run")
    r.add_argument("--data", required=True, help="the folder `dump` wrote")
    r.add_argument("--fp32", required=True)
    r.add_argument("--int8", required=True)
    r.add_argument("--rounds", type=int, default=20)
    r.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    (dump if args.step == "dump" else run)(args)


if __name__ == "__main__":
    main()
