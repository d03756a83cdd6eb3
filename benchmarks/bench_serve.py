"""Load on ``sanet serve`` over loopback: many clients POSTing an image at once.

Starts ``sanet serve`` in a subprocess (the real CLI, uvicorn, the configured limits), waits for
``/healthz``, then ``--clients`` concurrent clients each send ``--requests`` images to
``/v1/segment`` (each client sends its next request as soon as the previous one is answered).
Prints one JSON line: status counts, p50/p95 latency of the answered (200) requests, throughput
(200s per second of wall time) and the machine. A 503 (queue full) is a correct answer under
overload; any other non-200 status is a failure (exit status 1).

    .venv/bin/python benchmarks/bench_serve.py                            # tiny untrained model
    .venv/bin/python benchmarks/bench_serve.py --checkpoint runs/demo --size 96
    .venv/bin/python benchmarks/bench_serve.py --checkpoint demo.onnx --size 96 --max-queue 64
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_checkpoint(folder: Path) -> Path:
    """An untrained 3-class SANet-resnet18d (speed does not depend on the weights)."""
    import torch

    import sanet

    torch.manual_seed(0)
    model = sanet.build_model("sanet", backbone="resnet18d", num_classes=3)
    return model.save_pretrained(folder / "model", metadata={"class_names": ["a", "b", "c"]})


def jpeg(size: int) -> bytes:
    rgb = np.random.default_rng(0).integers(0, 256, (size, size * 4 // 3, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def start_server(args: argparse.Namespace, checkpoint: Path, port: int) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "sanet.cli",
        "serve",
        "--checkpoint",
        str(checkpoint),
        "--port",
        str(port),
        "--max-concurrent",
        str(args.max_concurrent),
        "--max-queue",
        str(args.max_queue),
        "--timeout",
        str(args.timeout),
    ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


async def wait_healthy(url: str, server: subprocess.Popen, seconds: float = 600) -> None:
    async with httpx.AsyncClient() as client:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError(f"sanet serve exited: {server.stderr.read()[-2000:]}")
            try:
                if (await client.get(url + "healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError("sanet serve did not become healthy")


async def load(url: str, image: bytes, clients: int, requests: int) -> tuple[list, float]:
    """``(status, seconds)`` of every request, and the wall time of the whole load."""
    results: list[tuple[int, float]] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=600) as client:

        async def one_client() -> None:
            for _ in range(requests):
                start = time.perf_counter()
                files = {"image": ("photo.jpg", image, "image/jpeg")}
                r = await client.post("v1/segment?format=png", files=files)
                results.append((r.status_code, time.perf_counter() - start))

        start = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
    return results, time.perf_counter() - start


def summarise(results: list, wall: float, args: argparse.Namespace) -> dict:
    ok = [s for status, s in results if status == 200]
    statuses: dict[str, int] = {}
    for status, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    pct = (lambda q: round(float(np.percentile(ok, q)) * 1000, 1)) if ok else (lambda q: None)
    return {
        "bench": "serve",
        "checkpoint": str(args.checkpoint or "tiny untrained resnet18d"),
        "image": f"{args.size * 4 // 3}x{args.size} JPEG",
        "clients": args.clients,
        "requests_per_client": args.requests,
        "max_concurrent": args.max_concurrent,
        "max_queue": args.max_queue,
        "statuses": statuses,
        "p50_ms": pct(50),
        "p95_ms": pct(95),
        "throughput_rps": round(len(ok) / wall, 2),
        "wall_s": round(wall, 2),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, help="run dir, model/ or .onnx (default: tiny)")
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--requests", type=int, default=4, help="per client, one after another")
    p.add_argument("--size", type=int, default=96, help="image height (width = 4/3 of it)")
    p.add_argument("--max-concurrent", type=int, default=1)
    p.add_argument("--max-queue", type=int, default=8)
    p.add_argument("--timeout", type=float, default=60.0)
    args = p.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or tiny_checkpoint(Path(tmp))
        server = start_server(args, checkpoint, port)
        try:
            asyncio.run(wait_healthy(url, server))
            results, wall = asyncio.run(load(url, jpeg(args.size), args.clients, args.requests))
        finally:
            server.terminate()
            server.wait(timeout=60)
    summary = summarise(results, wall, args)
    print(json.dumps(summary))
    return 0 if set(summary["statuses"]) <= {"200", "503"} else 1


if __name__ == "__main__":
    sys.exit(main())
