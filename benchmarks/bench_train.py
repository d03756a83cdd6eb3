"""Training-step throughput (images/s): SANet against torchvision's FCN in the same run.

CPU (this repo's default figures)::

    python benchmarks/bench_train.py --device cpu --crop 256 --batch 4

GPU (the paper-sized setting; add --compile for torch.compile)::

    python benchmarks/bench_train.py --device cuda --crop 512 --batch 16 --amp bf16 \
        --channels-last --models sanet:resnet101s tv:fcn_resnet101 [--compile]

Prints one JSON line per model. A step is forward + SANetLoss (or CE for torchvision) +
backward + SGD update, on random images and labels; the clock stops after a device sync.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import torch.nn.functional as F

import sanet
from sanet.training.engine import autocast


def build(spec: str, num_classes: int) -> tuple[torch.nn.Module, str]:
    kind, _, name = spec.partition(":")
    if kind == "tv":  # torchvision reference: output stride 8, no aux head
        import torchvision

        return getattr(torchvision.models.segmentation, name)(
            weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False
        ), f"torchvision {name}"
    return sanet.build_model(kind, backbone=name, num_classes=num_classes), f"{kind}-{name}"


def measure(args: argparse.Namespace, spec: str) -> dict[str, object]:
    device = torch.device(args.device)
    model, label = build(spec, args.num_classes)
    model = model.to(device).train()
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    net = torch.compile(model) if args.compile else model
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    criterion = sanet.SANetLoss()
    x = torch.randn(args.batch, 3, args.crop, args.crop, device=device).contiguous(
        memory_format=fmt
    )
    y = torch.randint(0, args.num_classes, (args.batch, args.crop, args.crop), device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(device, args.amp):
            out = net(x)
            loss = criterion(out, y)["loss"] if "mask" in out else F.cross_entropy(out["out"], y)
        loss.backward()
        opt.step()

    for _ in range(args.warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    _sync(device)
    seconds = time.perf_counter() - start
    return {
        "model": label, "device": _device_name(device), "crop": args.crop, "batch": args.batch,
        "amp": args.amp, "channels_last": args.channels_last, "compile": args.compile,
        "steps": args.steps, "images_per_s": round(args.batch * args.steps / seconds, 2),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }  # fmt: skip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--num-classes", type=int, default=21)
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument(
        "--models", nargs="+",
        default=["sanet:resnet18d", "sanet:resnet50s", "fcn:resnet50s", "tv:fcn_resnet50"],
        help="kind:backbone (kind = sanet | sanet_se | fcn) or tv:<torchvision builder>",
    )  # fmt: skip
    args = p.parse_args()
    for spec in args.models:
        print(json.dumps(measure(args, spec)), flush=True)


if __name__ == "__main__":
    main()
