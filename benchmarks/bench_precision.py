"""float32 against ``amp="auto"`` (bf16 + channels-last where the CPU has bf16 units) for one
model, train and infer, in ONE process with the timed calls alternated, so that the ratios hold
on a shared machine (docs/benchmarks.md, "CPU precision").

Usage: ``python benchmarks/bench_precision.py [--model sanet:resnet18d] [--size 96]
[--batch 16] [--classes 7] [--steps 5] [--threads 1] [--json precision.json]``.

Each precision is built as ``sanet bench`` builds a peer (same weights, same input), its first
call and one warm-up call are untimed, then ``--steps`` rounds call every precision once in
turn; a row's latency is its median call. Each row also gets the GEMM roof of its dtype
(``torch.matmul`` 2048³, fastest of 3) and its achieved share of it, in wall-clock time (as
``sanet bench``) and in process CPU time (``cpu_*``: with ``--threads 1``, what the work took
on the core while it had it; on a loaded machine the wall clock also counts waiting for a
core). The JSON is rewritten after each mode, so a stop loses little.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from sanet.devices import choose_precision, kernel_family
from sanet.experiments.bench import AMP_DTYPES, BenchSettings, Peer, step_function
from sanet.experiments.measure import ROOF_SIZE, count_flops, environment, gemm_roof, warm_up


def timed_rounds(calls: list, steps: int) -> tuple[list[list[float]], list[list[float]]]:
    """Wall-clock and process CPU seconds of each call over ``steps`` alternated rounds. With
    one thread, CPU seconds leave out the time the process waited for a core that other
    processes held (a loaded machine), which wall-clock seconds include."""
    wall: list[list[float]] = [[] for _ in calls]
    cpu: list[list[float]] = [[] for _ in calls]
    for _ in range(steps):
        for call, w, c in zip(calls, wall, cpu, strict=True):
            start, start_cpu = time.perf_counter(), time.process_time()
            call()
            c.append(time.process_time() - start_cpu)
            w.append(time.perf_counter() - start)
    return wall, cpu


def cpu_time_roof(dtype: torch.dtype, size: int = ROOF_SIZE) -> float:
    """The GEMM roof (TFLOP/s) in process CPU time: the fastest of 3 products after one."""
    a, b = (torch.randn(size, size).to(dtype) for _ in range(2))
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        torch.matmul(a, b)
        best = min(best, time.process_time() - start)
    return 2 * size**3 / best / 1e12


def measure_mode(spec: str, settings: dict[str, BenchSettings], mode: str, steps: int) -> list:
    """One row per precision of ``mode``, their calls alternated."""
    device = torch.device("cpu")
    calls, peers = [], []
    for s in settings.values():
        peer = Peer.build(spec, s)
        call, _ = warm_up(lambda p=peer, s=s: step_function(p.net, p.model, mode, s), device, 1, 0)
        calls.append(call)
        peers.append(peer)
    seconds, cpu_seconds = timed_rounds(calls, steps)
    size = next(iter(settings.values())).size
    flops = count_flops(peers[0].model, torch.empty(1, 3, size, size), train=mode == "train")
    rows = []
    for (name, s), times, cpu in zip(settings.items(), seconds, cpu_seconds, strict=True):
        latency, cpu_latency = statistics.median(times), statistics.median(cpu)
        tflops = flops * s.batch / latency / 1e12
        roof, cpu_roof = gemm_roof("cpu", AMP_DTYPES[s.amp]), cpu_time_roof(AMP_DTYPES[s.amp])
        rows.append(
            {
                "mode": mode,
                "precision": name,
                "amp": s.amp,
                "channels_last": s.channels_last,
                "images_per_s": s.batch / latency,
                "latency_ms": latency * 1e3,
                "call_ms": [round(t * 1e3, 1) for t in times],
                "gflops_per_image": flops / 1e9,
                "tflops": tflops,
                "roof_tflops": roof,
                "roof_fraction": tflops / roof,
                "cpu_ms": cpu_latency * 1e3,
                "cpu_tflops": flops * s.batch / cpu_latency / 1e12,
                "cpu_roof_tflops": cpu_roof,
                "cpu_roof_fraction": flops * s.batch / cpu_latency / 1e12 / cpu_roof,
            }
        )
    for row in rows:
        row["ratio_to_float32"] = row["images_per_s"] / rows[0]["images_per_s"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="sanet:resnet18d")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--classes", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--modes", nargs="+", default=["infer", "train"])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    auto = choose_precision("auto", "cpu")
    base = BenchSettings(
        size=args.size, batch=args.batch, classes=args.classes, threads=args.threads
    )
    settings = {"float32": base}
    if auto.amp != "none":
        settings["auto"] = replace(base, amp=auto.amp, channels_last=auto.channels_last)
    report = {
        "command": "python benchmarks/bench_precision.py "
        + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items()
            if v is not None
        ),
        "environment": environment("cpu") | {"kernel_family": kernel_family(auto.amp)},
        "auto": auto.to_dict(),
        "rows": [],
    }
    for mode in args.modes:
        report["rows"] += measure_mode(args.model, settings, mode, args.steps)
        report["environment"]["load_average_1min_end"] = round(os.getloadavg()[0], 2)
        for row in report["rows"][-len(settings) :]:
            print(
                json.dumps(
                    {
                        k: round(v, 3) if isinstance(v, float) else v
                        for k, v in row.items()
                        if k != "call_ms"
                    }
                )
            )
        if args.json:
            args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"environment": report["environment"], "auto": report["auto"]}))


if __name__ == "__main__":
    main()
