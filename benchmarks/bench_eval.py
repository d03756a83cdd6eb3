"""Evaluation throughput: images/s of single-scale and multi-scale + flip inference.

Prints one JSON line per measurement. Random weights are fine: speed does not depend on them.

    .venv/bin/python benchmarks/bench_eval.py                       # sanet-resnet50s, 500×375, CPU
    .venv/bin/python benchmarks/bench_eval.py --device cuda --repeats 5
    .venv/bin/python benchmarks/bench_eval.py --backbone resnet18d --modes single
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from sanet import build_model
from sanet.inference import EvalProtocol, predict_mask


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    model: torch.nn.Module,
    image: torch.Tensor,
    protocol: EvalProtocol,
    repeats: int,
    warmup: int,
) -> float:
    """Seconds per image (mean over ``repeats`` after ``warmup`` untimed runs)."""
    for _ in range(warmup):
        predict_mask(model, image, protocol)
    _sync(image.device)
    start = time.perf_counter()
    for _ in range(repeats):
        predict_mask(model, image, protocol)
    _sync(image.device)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="resnet50s")
    p.add_argument("--num-classes", type=int, default=21)
    p.add_argument("--height", type=int, default=375)
    p.add_argument("--width", type=int, default=500)
    p.add_argument("--device", default="cpu")
    p.add_argument("--modes", default="single,ms-flip", help="comma-separated: single, ms-flip")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--ms-repeats", type=int, default=1)
    p.add_argument("--window-batch", type=int, default=4)
    args = p.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model("sanet", backbone=args.backbone, num_classes=args.num_classes)
    model = model.to(device).eval()
    image = torch.randn(3, args.height, args.width, device=device)
    protocols = {
        "single": (EvalProtocol(window_batch=args.window_batch), args.repeats, 1),
        # one untimed single-scale run above already warmed the allocator and kernels
        "ms-flip": (EvalProtocol.paper_ms_flip(window_batch=args.window_batch), args.ms_repeats, 0),
    }
    for mode in args.modes.split(","):
        protocol, repeats, warmup = protocols[mode]
        seconds = measure(model, image, protocol, repeats, warmup)
        print(
            json.dumps(
                {
                    "benchmark": "eval",
                    "mode": mode,
                    "model": f"sanet-{args.backbone}",
                    "image": f"{args.width}x{args.height}",
                    "num_classes": args.num_classes,
                    "device": str(device),
                    "threads": torch.get_num_threads(),
                    "cpu": platform.processor() or platform.machine(),
                    "protocol": protocol.to_dict(),
                    "seconds_per_image": round(seconds, 3),
                    "images_per_second": round(1 / seconds, 4),
                    "torch": torch.__version__,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
