"""Memory of tiled prediction is flat in the image's area (issue 29): the peak resident memory
of predicting a 6000² GeoTIFF is within 1.25× that of a 2000² one, and under 2.5 GiB, with the
demo's model (SANet-resnet18d, 7 classes, windows of 96; untrained: memory does not depend on
the weights). Each prediction runs in a fresh process (its own ``ru_maxrss``).

The windows here are 96 px every 96 (the demo's protocol steps by 64): the buffers a strip holds
depend on the window and strip sizes, not on the stride, and this takes 2.25× fewer forward
passes. benchmarks/large_images.py measures the demo's own protocol (docs/large-images.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

CHILD = """
import json, resource, sys, torch, sanet
from sanet.inference import EvalProtocol, Predictor
torch.set_num_threads(2)
torch.manual_seed(0)
model = sanet.build_model("sanet", backbone="resnet18d", num_classes=7, output_stride=8).eval()
predictor = Predictor.from_model(model, protocol=EvalProtocol(crop_size=96, stride=96))
predictor.predict_tiled(sys.argv[1], sys.argv[2])
print(json.dumps({"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def _raster(path: Path, size: int) -> Path:
    import rasterio
    from rasterio.windows import Window

    rng = np.random.default_rng(0)
    profile = {"driver": "GTiff", "height": size, "width": size, "count": 3, "dtype": "uint8"}
    profile |= {"tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate"}
    with rasterio.open(path, "w", **profile) as dst:
        for r in range(0, size, 1000):
            rows = rng.integers(0, 256, (3, min(1000, size - r), size), dtype=np.uint8)
            dst.write(rows, window=Window(0, r, size, rows.shape[1]))
    return path


def _peak_rss(raster: Path, out: Path) -> float:
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(raster), str(out)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_gib"]


@pytest.mark.slow
def test_peak_memory_of_6000_square_is_within_1_25x_of_2000_square(tmp_path: Path) -> None:
    small = _peak_rss(_raster(tmp_path / "s.tif", 2000), tmp_path / "out" / "s.tif")
    large = _peak_rss(_raster(tmp_path / "l.tif", 6000), tmp_path / "out" / "l.tif")
    assert large <= 1.25 * small, (small, large)
    assert large < 2.5, (small, large)
