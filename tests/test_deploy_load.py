"""Load and abuse of the real ``sanet serve`` (the CLI, uvicorn, default limits) on 127.0.0.1,
bounded in time, through ``benchmarks/bench_serve.py`` (marked slow). The figures the benchmark
prints at full length are in docs/benchmarks.md ("Serving").

- 50 clients for 15 s: every answer is 200 or 503 (load shed), none 504, memory flat;
- 9 clients sending their bodies at 3 B/s: probes and /healthz keep getting 200, the slow
  uploads end in 408;
- a 12 MP phone photo, then a 96×96 image: both answered, the small one within seconds;
- a client that leaves mid-inference and one that leaves mid-upload: two 499 lines, no
  traceback, and the next request is answered within seconds (the abandoned work stopped).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def bench(checkpoint: Path, *args: str) -> dict:
    cmd = [sys.executable, str(ROOT / "benchmarks/bench_serve.py"), "--checkpoint", str(checkpoint)]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["server_log"]["traceback_lines"] == 0, result
    return result


@pytest.mark.reliability("r54")
@pytest.mark.slow
def test_fifty_clients_get_200_or_503_and_memory_stays_flat(tiny_checkpoint: Path) -> None:
    result = bench(tiny_checkpoint, "--scenario", "load", "--clients", "50", "--seconds", "15")
    assert set(result["statuses"]) <= {"200", "503"}, result  # no 504, no error, no reset
    assert result["statuses"].get("200", 0) >= 1
    assert result["p50_ms"] <= result["p95_ms"] <= result["p99_ms"]
    assert result["rss_mb_end"] < result["rss_mb_start"] + 250, result


@pytest.mark.reliability("r53")
@pytest.mark.slow
def test_slow_bodies_never_block_other_clients(tiny_checkpoint: Path) -> None:
    result = bench(
        tiny_checkpoint,
        "--scenario", "slow-body", "--seconds", "20", "--serve-args", "--upload-timeout 8",
    )  # fmt: skip
    assert set(result["probe_statuses"]) == {"200"} and set(result["healthz_statuses"]) == {"200"}
    assert result["slow_client_outcomes"] == {"408": 9}, result


@pytest.mark.reliability("r55")
@pytest.mark.slow
def test_a_12_mp_photo_then_a_small_image(tiny_checkpoint: Path) -> None:
    # the case: a run whose windows are 64 px (5,229 windows at native size)
    result = bench(
        tiny_checkpoint,
        "--scenario", "big-then-small", "--serve-args", "--crop-size 64 --stride 48",
    )  # fmt: skip
    big, small = result["big_answer"], result["small_answer_after_it"]
    assert big["status"] == 200 and big["mask_size"] == "4000x3000", result
    assert big["seconds"] < 30, result  # the timeout is 60 s
    assert small["status"] == 200 and small["seconds"] < 10, result


@pytest.mark.reliability("r56")
@pytest.mark.slow
def test_abandoned_work_is_stopped(tiny_checkpoint: Path) -> None:
    # native size: the 12 MP photo takes minutes of windows, so the client leaves mid-inference
    result = bench(
        tiny_checkpoint,
        "--scenario", "disconnect", "--serve-args", "--max-side 0 --timeout 3600",
    )  # fmt: skip
    assert result["next_small_status"] == 200 and result["next_small_seconds"] < 10, result
    assert result["server_log"]["access_log_statuses"].get("499") == 2, result
