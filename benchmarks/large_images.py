"""Peak resident memory and throughput of tiled against whole-image prediction by image size
(docs/large-images.md, issue 29).

Usage::

    python benchmarks/large_images.py --sizes 2048 4096 6000 8192 12000 16384 \\
        --whole-up-to 8192 --json large_images.json

Each measurement runs in a fresh process (its own ``ru_maxrss``): the demo's model shape (an
untrained SANet-resnet18d with 7 classes, seed 0: speed and memory do not depend on the
weights), the demo's protocol (single scale, windows 96 every 64, 4 windows per forward), torch
on ``--threads`` threads. The input is a tiled, DEFLATE-compressed RGB GeoTIFF of smooth colour
blobs, written block by block (its writing is not timed).

- ``tiled``: ``Predictor.predict_tiled`` end to end (reading, forwards, GeoTIFF writing).
- ``whole``: the GeoTIFF read whole, ``Predictor.predict`` (the whole-image protocol of
  ``sanet predict``), the mask saved as an index PNG: what ``sanet predict`` does today.

Each line also gives the process's CPU seconds (user + system). On a shared machine both move
with the load (torch's threads spin while they wait for a core): ``--repeat N`` alternates the
modes N times so that both meet the same load; compare the best run of each.

``--max-strips N`` stops a tiled run after its first N strips (a full-height strip reaches the
run's peak memory: every strip holds the same buffers); its throughput is that of the strips.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def make_raster(path: Path, size: int, seed: int = 0) -> None:
    """A size × size RGB GeoTIFF of smooth blobs (512-px tiles, DEFLATE), block by block."""
    import rasterio
    from rasterio.windows import Window

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (size // 32 + 2, size // 32 + 2, 3)).astype(np.uint8)
    profile = {"driver": "GTiff", "height": size, "width": size, "count": 3, "dtype": "uint8"}
    profile |= {"tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate"}
    profile |= {"BIGTIFF": "IF_SAFER", "crs": "EPSG:3857"}
    profile["transform"] = rasterio.transform.from_origin(0, size * 0.5, 0.5, 0.5)
    with rasterio.open(path, "w", **profile) as dst:
        for r in range(0, size, 2048):
            h = min(2048, size - r)
            block = np.repeat(np.repeat(coarse[r // 32 : (r + h) // 32 + 2], 32, 0), 32, 1)
            noise = rng.integers(0, 24, (h, size, 3), dtype=np.uint8)
            rows = block[:h, :size] // 2 + noise
            dst.write(rows.transpose(2, 0, 1), window=Window(0, r, size, h))


def child(mode: str, raster: str, out: str, threads: int, max_strips: int | None) -> None:
    """One measurement in this process; prints a JSON line."""
    import torch

    import sanet
    from sanet.inference import EvalProtocol, Predictor

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = sanet.build_model("sanet", backbone="resnet18d", num_classes=7, output_stride=8)
    protocol = EvalProtocol(crop_size=96, stride=64, window_batch=4)
    predictor = Predictor.from_model(model.eval(), protocol=protocol)
    start, blocks = time.perf_counter(), [0, 0]
    cpu0 = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])  # user + system seconds so far
    if mode == "tiled":

        def on_block(done: int, total: int) -> None:
            blocks[:] = [done, total]

        per_strip = None
        if max_strips:
            import rasterio

            with rasterio.open(raster) as src:
                per_strip = -(-src.height // 512)
        stop = (lambda: blocks[0] >= max_strips * per_strip) if per_strip else None  # type: ignore[operator]
        with contextlib.suppress(sanet.errors.Interrupted):  # --max-strips
            predictor.predict_tiled(raster, out, on_block=on_block, should_stop=stop)
    else:
        import rasterio

        from sanet.viz.visualize import mask_to_pil, save_png

        with rasterio.open(raster) as src:
            rgb = src.read().transpose(1, 2, 0)
        mask = predictor.predict(rgb)
        save_png(mask_to_pil(mask), out)
    seconds = time.perf_counter() - start
    with __import__("rasterio").open(raster) as src:
        height, width = src.height, src.width
    fraction = blocks[0] / blocks[1] if mode == "tiled" and blocks[1] else 1.0
    mp = height * width * fraction / 1e6
    usage = resource.getrusage(resource.RUSAGE_SELF)
    rss, cpu = usage.ru_maxrss / 2**20, usage.ru_utime + usage.ru_stime - cpu0  # KiB → GiB
    print(
        json.dumps(
            {
                "mode": mode,
                "size": width,
                "megapixels": round(mp, 2),
                "fraction": round(fraction, 4),
                "seconds": round(seconds, 1),
                "mp_per_s": round(mp / seconds, 4),
                "cpu_s": round(cpu, 1),
                "mp_per_cpu_s": round(mp / cpu, 4),
                "peak_rss_gib": round(rss, 3),
            }
        )
    )


def measure(mode: str, raster: Path, folder: Path, threads: int, max_strips: int | None) -> dict:
    out = folder / f"out_{mode}.{'tif' if mode == 'tiled' else 'png'}"
    for p in folder.glob("out_*"):
        p.unlink()
    for p in folder.glob(".out_*"):
        p.unlink()
    cmd = [sys.executable, __file__, "--child", mode, str(raster), str(out), str(threads)]
    cmd += [str(max_strips or 0)]
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src")}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        return {"mode": mode, "error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 6000])
    parser.add_argument("--whole-up-to", type=int, default=6000, help="largest whole-image run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-strips", type=int, default=None, help="(tiled) stop after N strips")
    parser.add_argument("--strips-above", type=int, default=0, help="--max-strips only above this")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each mode, alternated")
    parser.add_argument("--json", type=Path, help="append the results here (JSON lines)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sanet-large-") as tmp:
        folder = Path(tmp)
        for size in args.sizes:
            raster = folder / f"image_{size}.tif"
            make_raster(raster, size)
            modes = ["tiled"] + (["whole"] if size <= args.whole_up_to else [])
            for mode in modes * args.repeat:  # alternated: both see the same load
                strips = args.max_strips if size > args.strips_above else None
                row = measure(
                    mode, raster, folder, args.threads, strips if mode == "tiled" else None
                )
                print(json.dumps(row), flush=True)
                if args.json:
                    with args.json.open("a") as f:
                        f.write(json.dumps(row) + "\n")
            raster.unlink()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        mode, raster, out, threads, strips = sys.argv[2:7]
        child(mode, raster, out, int(threads), int(strips) or None)
    else:
        main()
