"""``sanet serve`` under load and abuse over loopback: one JSON line per scenario.

Starts ``sanet serve`` in a subprocess (the real CLI, uvicorn, its default limits unless
``--serve-args`` says otherwise), waits for ``/healthz``, runs the scenarios, and reads the
server's resident memory (``/proc/PID/status``) before and after. Scenarios (``--scenario``):

- ``load``: ``--clients`` concurrent clients POST a ``--width``×``--height`` photo-like JPEG to
  ``/v1/segment`` back to back for ``--seconds``: counts by status, p50/p95/p99 of the answered
  (200) requests, throughput, resident memory at start, end and its maximum. 200 and 503 (load shed) are correct answers;
  anything else fails the run (exit 1).
- ``slow-body``: ``--slow-clients`` clients send a multipart body at ``--slow-rate`` bytes/s
  while a probe POSTs a small image and GETs ``/healthz`` every second: the probes' statuses.
- ``big-then-small``: a ``--big``-sized JPEG (default 4000×3000, ~4.5 MB), then 1 s later a
  96×96 one: both statuses and times.
- ``disconnect``: a client that closes its connection mid-inference and one that closes it
  mid-upload, then a 96×96 request: its time, and the server's log lines for the two.

    .venv/bin/python benchmarks/bench_serve.py                      # every scenario, tiny model
    .venv/bin/python benchmarks/bench_serve.py --scenario load --checkpoint demo.onnx
    .venv/bin/python benchmarks/bench_serve.py --scenario big-then-small \\
        --serve-args "--crop-size 64 --stride 48"                   # the issue's 64-px run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

SCENARIOS = ("load", "slow-body", "big-then-small", "disconnect")


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


def photo_jpeg(width: int, height: int, seed: int = 0) -> bytes:
    """A photo-like JPEG: smooth colour fields plus sensor-like noise (4000×3000 → ~4.5 MB at
    quality 92, like a phone photo; pure noise would be several times larger)."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    base = np.asarray(small.resize((width, height), Image.BICUBIC)).astype(np.float32)
    noisy = base + rng.normal(0, 12, base.shape).astype(np.float32)
    buf = io.BytesIO()
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process (Linux), MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def percentiles(seconds: list[float]) -> dict[str, float | None]:
    if not seconds:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    return {f"p{q}_ms": round(float(np.percentile(seconds, q)) * 1000, 1) for q in (50, 95, 99)}


def files(data: bytes, name: str = "photo.jpg") -> dict:
    return {"image": (name, data, "image/jpeg")}


# ---------------------------------------------------------------------------------------------
# Scenarios (each returns a JSON-ready dict)
# ---------------------------------------------------------------------------------------------


async def scenario_load(url: str, args: argparse.Namespace) -> dict:
    image = photo_jpeg(args.width, args.height)
    results: list[tuple[str, float]] = []
    # idle connections expire on the client before uvicorn closes them (5 s): no reuse race
    limits = httpx.Limits(
        max_connections=args.clients, max_keepalive_connections=args.clients, keepalive_expiry=2
    )
    deadline = time.monotonic() + args.seconds
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=600) as client:

        async def one_client() -> None:
            while time.monotonic() < deadline:
                start = time.perf_counter()
                try:
                    r = await client.post("v1/segment", files=files(image))
                    status = str(r.status_code)
                except httpx.HTTPError as err:
                    status = type(err).__name__
                results.append((status, time.perf_counter() - start))

        start = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(args.clients)))
        wall = time.perf_counter() - start
    ok = [s for status, s in results if status == "200"]
    return {
        "image": f"{args.width}x{args.height} JPEG ({len(image):,} B)",
        "clients": args.clients,
        "seconds": args.seconds,
        "statuses": dict(Counter(status for status, _ in results)),
        **percentiles(ok),
        "throughput_rps": round(len(ok) / wall, 2),
        "wall_s": round(wall, 1),
    }


def multipart(data: bytes, boundary: str, name: str = "photo.jpg") -> bytes:
    """A multipart/form-data body with ``data`` as the file field ``image``."""
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode()


async def slow_client(port: int, rate: float, seconds: float, image: bytes) -> str:
    """Send a valid multipart body holding ``image`` at ``rate`` bytes/s (the parser sees a
    well-formed upload in progress); the status the server answered, or how it ended."""
    boundary = "slowboundary"
    body = multipart(image, boundary)
    head = (
        f"POST /v1/segment HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    answer = asyncio.ensure_future(reader.readline())
    deadline = time.monotonic() + seconds
    chunk = max(1, round(rate))
    try:
        for i in range(0, len(body), chunk):
            if time.monotonic() > deadline or answer.done():
                break
            writer.write(body[i : i + chunk])
            await writer.drain()
            await asyncio.wait({answer}, timeout=1.0)
        if answer.done():
            line = answer.result().decode(errors="replace").split()
            return line[1] if len(line) > 1 else "closed"
        return "still sending"
    except (ConnectionError, OSError):
        return "closed"
    finally:
        answer.cancel()
        writer.close()


async def scenario_slow_body(url: str, port: int, args: argparse.Namespace) -> dict:
    small = photo_jpeg(128, 96)
    slow = [
        asyncio.ensure_future(slow_client(port, args.slow_rate, args.seconds, small))
        for _ in range(args.slow_clients)
    ]
    await asyncio.sleep(1.0)  # the slow clients are connected and sending
    probes: list[str] = []
    health: list[str] = []
    probe_ms: list[float] = []
    deadline = time.monotonic() + args.seconds - 2
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        while time.monotonic() < deadline:
            start = time.perf_counter()
            r = await client.post("v1/segment", files=files(small))
            probes.append(str(r.status_code))
            probe_ms.append(time.perf_counter() - start)
            health.append(str((await client.get("healthz")).status_code))
            await asyncio.sleep(1.0)
    return {
        "slow_clients": args.slow_clients,
        "slow_rate_Bps": args.slow_rate,
        "seconds": args.seconds,
        "probe_statuses": dict(Counter(probes)),
        "healthz_statuses": dict(Counter(health)),
        "probe_p50_ms": percentiles(probe_ms)["p50_ms"],
        "slow_client_outcomes": dict(Counter(await asyncio.gather(*slow))),
    }


async def scenario_big_then_small(url: str, args: argparse.Namespace) -> dict:
    w, h = (int(v) for v in args.big.split("x"))
    big, small = photo_jpeg(w, h), photo_jpeg(96, 96)

    async def timed(client: httpx.AsyncClient, data: bytes) -> dict:
        start = time.perf_counter()
        r = await client.post("v1/segment", files=files(data))
        out = {"status": r.status_code, "seconds": round(time.perf_counter() - start, 2)}
        if r.status_code == 200:
            body = r.json()
            out["mask_size"] = f"{body['width']}x{body['height']}"
            out["scale"] = body.get("scale")
        else:
            out["detail"] = r.text[:300]
        return out

    async with httpx.AsyncClient(base_url=url, timeout=900) as client:
        first = asyncio.ensure_future(timed(client, big))
        await asyncio.sleep(1.0)
        second = await timed(client, small)
        return {
            "big": f"{w}x{h} JPEG ({len(big):,} B)",
            "big_answer": await first,
            "small_answer_after_it": second,
        }


async def scenario_disconnect(url: str, port: int, args: argparse.Namespace) -> dict:
    w, h = (int(v) for v in args.big.split("x"))
    big, small = photo_jpeg(w, h), photo_jpeg(96, 96)
    # 1. mid-inference: the whole body sent, the connection closed while the server works
    async with httpx.AsyncClient(base_url=url, timeout=2.0) as client:
        with contextlib.suppress(httpx.TimeoutException):  # leaving closes the connection
            await client.post("v1/segment", files=files(big))
    # 2. mid-upload: half the body, then close
    boundary = "cutboundary"
    body = multipart(small, boundary)
    head = (
        f"POST /v1/segment HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body) + 100}\r\n\r\n"
    ).encode()
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head + body[: len(body) // 2])
    await writer.drain()
    await asyncio.sleep(0.5)
    writer.close()
    # 3. the next client
    async with httpx.AsyncClient(base_url=url, timeout=900) as client:
        start = time.perf_counter()
        r = await client.post("v1/segment", files=files(small))
        return {
            "big": f"{w}x{h}",
            "next_small_status": r.status_code,
            "next_small_seconds": round(time.perf_counter() - start, 2),
        }


# ---------------------------------------------------------------------------------------------


def start_server(args: argparse.Namespace, checkpoint: Path, port: int, log: Path):
    cmd = [sys.executable, "-m", "sanet.cli", "serve", "--checkpoint", str(checkpoint)]
    cmd += ["--port", str(port), *shlex.split(args.serve_args)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log.open("w"), text=True)


async def wait_healthy(url: str, server: subprocess.Popen, log: Path, seconds: float = 600) -> None:
    async with httpx.AsyncClient() as client:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError(f"sanet serve exited: {log.read_text()[-2000:]}")
            try:
                if (await client.get(url + "healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError("sanet serve did not become healthy")


def log_summary(text: str) -> dict:
    """What the server logged: access-log statuses, traceback lines."""
    statuses: Counter = Counter()
    for line in text.splitlines():
        if line.startswith("{") and '"status"' in line:
            with contextlib.suppress(json.JSONDecodeError, KeyError):
                statuses[str(json.loads(line)["status"])] += 1
    return {
        "access_log_statuses": dict(statuses),
        "traceback_lines": sum(1 for line in text.splitlines() if line.startswith("Traceback")),
        "log_lines": len(text.splitlines()),
    }


def run_scenario(name: str, args: argparse.Namespace, checkpoint: Path, tmp: Path) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log = tmp / f"server-{name}.log"
    server = start_server(args, checkpoint, port, log)
    samples: list[float] = []
    done = threading.Event()

    def sample() -> None:  # the server's memory every second while the scenario runs
        while not done.wait(1.0):
            if (mb := rss_mb(server.pid)) is not None:
                samples.append(mb)

    try:
        asyncio.run(wait_healthy(url, server, log))
        rss_start = rss_mb(server.pid)
        threading.Thread(target=sample, daemon=True).start()
        if name == "load":
            result = asyncio.run(scenario_load(url, args))
        elif name == "slow-body":
            result = asyncio.run(scenario_slow_body(url, port, args))
        elif name == "big-then-small":
            result = asyncio.run(scenario_big_then_small(url, args))
        else:
            result = asyncio.run(scenario_disconnect(url, port, args))
        time.sleep(0.5)
        rss_end = rss_mb(server.pid)
    finally:
        done.set()
        server.terminate()
        server.wait(timeout=60)
    return {
        "bench": "serve",
        "scenario": name,
        "checkpoint": str(args.checkpoint or "tiny untrained resnet18d"),
        "serve_args": args.serve_args,
        **result,
        "rss_mb_start": rss_start,
        "rss_mb_end": rss_end,
        "rss_mb_max": max(samples, default=rss_end),
        "rss_mb_every_10s": samples[::10],
        "server_log": log_summary(log.read_text()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    p.add_argument("--checkpoint", type=Path, help="run dir, model/ or .onnx (default: tiny)")
    p.add_argument("--serve-args", default="", help="more `sanet serve` flags, one string")
    p.add_argument("--clients", type=int, default=50, help="load: concurrent clients")
    p.add_argument("--seconds", type=float, default=30.0, help="load, slow-body: duration")
    p.add_argument("--width", type=int, default=500, help="load: image width")
    p.add_argument("--height", type=int, default=375, help="load: image height")
    p.add_argument("--slow-clients", type=int, default=9)
    p.add_argument("--slow-rate", type=float, default=3.0, help="bytes per second")
    p.add_argument("--big", default="4000x3000", help="big-then-small, disconnect: WxH")
    args = p.parse_args()
    names = SCENARIOS if args.scenario == "all" else (args.scenario,)
    failed = False
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        checkpoint = args.checkpoint or tiny_checkpoint(tmp)
        for name in names:
            result = run_scenario(name, args, checkpoint, tmp)
            print(json.dumps(result), flush=True)
            if name == "load":
                failed |= not set(result["statuses"]) <= {"200", "503"}
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
