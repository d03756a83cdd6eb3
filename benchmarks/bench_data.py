"""Train input pipeline throughput: images/s per DataLoader worker, and workers for a GPU.

Writes ``--num-images`` random-content 500×375 JPEGs (VOC's typical size) in the ``folder``
layout, then times ``dataset[i]`` with the paper's train transforms (long side U(0.5, 2.0) × 520,
pad, random 480 crop, flip, normalise) in one process with one torch thread — what one
DataLoader worker does — split into decode and transform, and finally through a real
DataLoader with ``--workers`` processes. Prints one JSON line per measurement.

    .venv/bin/python benchmarks/bench_data.py
    .venv/bin/python benchmarks/bench_data.py --num-images 64 --repeats 2 --workers 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sanet.data import build_dataset, train_transforms

GPU_IMAGES_PER_S = 160  # what a GPU training run consumes (SPEC §2.4 recipe on one GPU)


def write_fixture(root: Path, n: int, seed: int = 0) -> None:
    """``n`` 500×375 JPEGs with smooth content (JPEG-realistic size) and 21-class masks."""
    rng = np.random.default_rng(seed)
    (root / "images/train").mkdir(parents=True)
    (root / "masks/train").mkdir(parents=True)
    (root / "classes.txt").write_text("\n".join(f"c{k}" for k in range(21)) + "\n")
    yy, xx = np.mgrid[0:375, 0:500].astype(np.float32)
    for i in range(n):
        f = rng.uniform(0.005, 0.05, 4)
        img = np.stack(
            [127 + 120 * np.sin(f[c] * xx + f[3] * yy + c) for c in range(3)], axis=-1
        ) + rng.normal(0, 12, (375, 500, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
            root / "images/train" / f"{i:05d}.jpg", quality=90
        )
        mask = ((xx // 50 + yy // 50 + i) % 21).astype(np.uint8)
        Image.fromarray(mask).save(root / "masks/train" / f"{i:05d}.png")


def time_loop(fn, n: int, repeats: int) -> float:
    """Items per second of ``fn(i)`` over ``repeats`` passes of ``n`` items (best pass)."""
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(n):
            fn(i)
        best = min(best, time.perf_counter() - t0)
    return n / best


def time_loader(ds, workers: int, batch: int, samples: int) -> float:
    """Images per second through a DataLoader with ``workers`` processes (after the first batch)."""
    sampler = torch.utils.data.RandomSampler(
        ds, replacement=True, num_samples=samples, generator=torch.Generator().manual_seed(0)
    )
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=True
    )
    it = iter(loader)
    next(it)  # start-up (fork, first batch) is not throughput
    t0, n = time.perf_counter(), 0
    for image, _ in it:
        n += image.shape[0]
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader processes to time")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--loader-samples", type=int, default=256, help="images through the loader")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a DataLoader worker runs with one torch thread
    common = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        write_fixture(Path(tmp), args.num_images)
        raw = build_dataset("folder", tmp)
        aug = build_dataset("folder", tmp, transforms=train_transforms(520, 480))
        torch.manual_seed(0)
        pairs = [raw[i] for i in range(len(raw))]
        tf = train_transforms(520, 480)
        rates = {
            "decode": time_loop(lambda i: raw[i], len(raw), args.repeats),
            "transforms": time_loop(lambda i: tf(*pairs[i]), len(raw), args.repeats),
            "pipeline": time_loop(lambda i: aug[i], len(aug), args.repeats),
        }
        for stage, rate in rates.items():
            line = {"bench": "data", "stage": stage, "images_per_s_per_worker": round(rate, 1)}
            print(json.dumps({**line, "image": "500x375 jpg", "crop": 480, **common}))
        per_worker = rates["pipeline"]
        print(
            json.dumps(
                {
                    "bench": "data",
                    "stage": "workers_needed",
                    "target_images_per_s": GPU_IMAGES_PER_S,
                    "workers": math.ceil(GPU_IMAGES_PER_S / per_worker),
                    "images_per_s_per_worker": round(per_worker, 1),
                    **common,
                }
            )
        )
        if args.workers:
            rate = time_loader(aug, args.workers, args.batch, args.loader_samples)
            print(
                json.dumps(
                    {
                        "bench": "data",
                        "stage": "dataloader",
                        "workers": args.workers,
                        "images_per_s": round(rate, 1),
                        "batch": args.batch,
                        **common,
                    }
                )
            )


if __name__ == "__main__":
    main()
