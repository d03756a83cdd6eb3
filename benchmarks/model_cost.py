"""Parameter counts and forward FLOPs of sanet / fcn / sanet_se (docs/paper-fidelity.md table).

Usage: ``python benchmarks/model_cost.py [--size 512] [--backbones resnet50s resnet101s]``.
Prints one JSON line per model. FLOPs are counted by ``torch.utils.flop_counter`` (one
multiply-add = 2 FLOPs) for a single image in eval mode.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.utils.flop_counter import FlopCounterMode

import sanet


def measure(name: str, backbone: str, size: int, num_classes: int) -> dict[str, object]:
    model = sanet.build_model(name, backbone=backbone, num_classes=num_classes).eval()
    params = sum(p.numel() for p in model.parameters())
    backbone_params = sum(p.numel() for p in model.backbone.parameters())
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, size, size))
    return {
        "model": name,
        "backbone": backbone,
        "input": f"1x3x{size}x{size}",
        "num_classes": num_classes,
        "params_M": round(params / 1e6, 2),
        "backbone_params_M": round(backbone_params / 1e6, 2),
        "GFLOPs": round(counter.get_total_flops() / 1e9, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--num-classes", type=int, default=59)
    parser.add_argument("--backbones", nargs="+", default=["resnet50s", "resnet101s"])
    parser.add_argument("--models", nargs="+", default=["sanet", "fcn", "sanet_se"])
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    for backbone in args.backbones:
        for name in args.models:
            print(json.dumps(measure(name, backbone, args.size, args.num_classes)), flush=True)


if __name__ == "__main__":
    main()
