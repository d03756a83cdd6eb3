"""What the calibration of `sanet calibrate` keeps under shift (docs/trust.md, "Under shift"):
ECE, the mean and per-image sure-and-wrong share and the unsure share on held-out scenes that
are darker, brighter, blurred, noisy, JPEG-compressed or rescaled.

    .venv/bin/python benchmarks/calibration_shift.py --run /tmp/calib/run --work /tmp/calib/shift

1. Calibrate on `--cal` clean held-out scenes (seed `--cal-seed`), as `sanet calibrate` does:
   one temperature (NLL), the mean-risk threshold (`--alpha`), the per-image threshold
   (`--alpha-image`, `--delta`, level `--level`) and the per-class thresholds (`--alpha`).
   The alternative: one temperature per class (``softmax(z_c / T_c)``, fitted by NLL on the same
   images, thresholds chosen on them the same way).
2. Measure on `--test` other held-out scenes (seed `--test-seed`), clean and under each shift
   (the same scenes each time), with the library's measuring pass.

One JSON line per (shift, calibration) in WORK/shift.jsonl; a rerun skips the lines it has.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter
from torch import nn

from sanet.conventions import IGNORE_INDEX
from sanet.data import build_dataset
from sanet.devices import cpu_features
from sanet.inference.predictor import normalize
from sanet.inference.runs import run_protocol
from sanet.models import registry
from sanet.trust.calibration import fit_calibration, measure_images
from sanet.trust.risk import THRESHOLDS, class_thresholds, conformal_threshold, ltt_threshold

SHIFTS = {
    "clean": None,
    "darker x0.6": ("brightness", 0.6),
    "brighter x1.5": ("brightness", 1.5),
    "blur sigma 1": ("blur", 1.0),
    "blur sigma 2": ("blur", 2.0),
    "noise sigma 10": ("noise", 10.0),
    "noise sigma 25": ("noise", 25.0),
    "jpeg q30": ("jpeg", 30),
    "jpeg q10": ("jpeg", 10),
    "scale x0.75": ("scale", 0.75),
    "scale x1.5": ("scale", 1.5),
}


def machine() -> str:
    """The CPU model and core count (e.g. "AMD EPYC ..., 2 cores")."""
    return f"{cpu_features()['name']}, {os.cpu_count()} cores"


def shift_image(image: np.ndarray, mask: np.ndarray, kind: str, value: float, seed: int):
    """``(image (H, W, 3) uint8, mask (H, W))`` under one shift."""
    if kind == "brightness":
        return np.clip(image.astype(np.float64) * value, 0, 255).round().astype(np.uint8), mask
    if kind == "noise":
        noise = np.random.default_rng(seed).normal(0, value, image.shape)
        return np.clip(image + noise, 0, 255).round().astype(np.uint8), mask
    pil = Image.fromarray(image)
    if kind == "blur":
        return np.asarray(pil.filter(ImageFilter.GaussianBlur(value))), mask
    if kind == "jpeg":
        buf = io.BytesIO()
        pil.save(buf, "JPEG", quality=int(value))
        return np.asarray(Image.open(buf).convert("RGB")), mask
    size = (round(image.shape[1] * value), round(image.shape[0] * value))
    small = pil.resize(size, Image.BILINEAR)
    return np.asarray(small), np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))


class Shifted:
    """A dataset whose images are shifted (deterministically per index)."""

    def __init__(self, base, shift) -> None:
        self.base, self.shift = base, shift
        self.class_names = base.class_names

    def __len__(self) -> int:
        return len(self.base)

    def files(self, i: int):
        return self.base.files(i)

    def __getitem__(self, i: int):
        image, mask = self.base[i]
        if self.shift is None:
            return image, mask
        rgb = image.permute(1, 2, 0).numpy()
        rgb, m = shift_image(rgb, mask.numpy().astype(np.uint8), *self.shift, seed=i)
        return torch.from_numpy(np.array(rgb)).permute(2, 0, 1), torch.from_numpy(
            m.astype(np.int64)
        )


class PerClassTemperature(nn.Module):
    """``model``'s logits divided by one temperature per class (the protocol's softmax at
    ``T = 1`` then gives ``softmax(z_c / T_c)``)."""

    def __init__(self, model: nn.Module, temperatures: torch.Tensor) -> None:
        super().__init__()
        self.model, self.t = model, temperatures

    def forward(self, x):
        return {"out": self.model(x)["out"] / self.t[None, :, None, None]}


def fit_class_temperatures(model, dataset, pixels_per_image: int = 2000) -> torch.Tensor:
    """``T_c`` minimising the NLL of ``softmax(z_c / T_c)`` on a sample of labelled pixels."""
    rng = np.random.default_rng(0)
    zs, ys = [], []
    for i in range(len(dataset)):
        image, mask = dataset[i]
        with torch.no_grad():
            z = model(normalize(image)[None])["out"]
            z = F.interpolate(z, size=mask.shape, mode="bilinear", align_corners=False)[0]
        z, y = z.reshape(z.shape[0], -1).T, mask.reshape(-1)
        keep = np.flatnonzero((y != IGNORE_INDEX).numpy())
        keep = rng.choice(keep, min(pixels_per_image, len(keep)), replace=False)
        zs.append(z[keep])
        ys.append(y[keep])
    z, y = torch.cat(zs), torch.cat(ys)
    log_t = torch.zeros(z.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([log_t], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return log_t.detach().exp()


def thresholds(stats, names, args) -> dict:
    """The three rules chosen on the calibration images, as `sanet calibrate` chooses them."""
    losses = stats.matrix()
    lam = conformal_threshold(losses, args.alpha)[0]
    lam_image = ltt_threshold(losses, args.alpha_image, args.delta, 1 - args.level)[0]
    curves = [stats.class_losses(c) for c in range(len(names))]
    per_class = [c["threshold"] for c in class_thresholds(curves, args.alpha, lam, names)]
    return {"mean": lam, "per_image": lam_image, "per_class": per_class}


def measure(result: dict, rules: dict, names, args) -> dict:
    stats = result["images"]
    raw_risk, _ = stats.at(0.0)
    out = {
        "ece_raw": result["before"].ece(),
        "ece": result["after"].ece(),
        "nll": result["nll"][1] / max(result["pixels"], 1),
        "pixel_error": float(raw_risk.mean()),
    }
    risk, unsure = stats.at(rules["mean"])
    out.update(mean_risk=float(risk.mean()), unsure_mean_rule=float(unsure.mean()))
    risk, unsure = stats.at(rules["per_image"])
    out.update(
        share_above_alpha_image=float((risk > args.alpha_image).mean()),
        unsure_per_image_rule=float(unsure.mean()),
    )
    worst = 0.0
    for c, t in enumerate(rules["per_class"]):
        curves = stats.class_losses(c)
        if len(curves) and t is not None:
            worst = max(worst, float(curves[:, int(np.searchsorted(THRESHOLDS, t))].mean()))
    out.update(
        worst_class_risk=worst, unsure_per_class_rule=float(stats.at(rules["per_class"])[1].mean())
    )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--cal-seed", type=int, default=31)
    p.add_argument("--cal", type=int, default=300)
    p.add_argument("--test-seed", type=int, default=32)
    p.add_argument("--test", type=int, default=300)
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--alpha-image", type=float, default=0.1)
    p.add_argument("--delta", type=float, default=0.1)
    p.add_argument("--level", type=float, default=0.9)
    args = p.parse_args()
    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    out = args.work / "shift.jsonl"
    lines = out.read_text().splitlines() if out.exists() else []
    done = {(r["shift"], r["calibration"]) for r in map(json.loads, lines)}
    model, _ = registry.load_model(Path(args.run) / "model")
    model.eval()
    protocol = run_protocol(args.run, device="cpu")
    cal, test = (
        build_dataset("synthetic", None, "val", num_images=n, size=args.size, seed=seed)
        for seed, n in ((args.cal_seed, args.cal), (args.test_seed, args.test))
    )
    names, k = list(cal.class_names), len(cal.class_names)
    t0 = time.time()
    temperature = fit_calibration(model, cal, names, protocol)["temperature"]
    class_t = fit_class_temperatures(model, cal)
    methods = {
        "one temperature": (model, temperature),
        "per-class temperatures": (PerClassTemperature(model, class_t).eval(), 1.0),
    }
    rules = {}
    for name, (net, t) in methods.items():
        stats = measure_images(net, cal, range(len(cal)), k, protocol, t, "cpu", True)["images"]
        rules[name] = thresholds(stats, names, args)
    print(json.dumps({"temperature": temperature, "class_temperatures": class_t.tolist(),
                      "rules": rules, "seconds": round(time.time() - t0)}), flush=True)  # fmt: skip
    for shift_name, shift in SHIFTS.items():
        for name, (net, t) in methods.items():
            if (shift_name, name) in done:
                continue
            shifted = Shifted(test, shift)
            result = measure_images(net, shifted, range(len(shifted)), k, protocol, t, "cpu", True)
            record = {
                "shift": shift_name,
                "calibration": name,
                **measure(result, rules[name], names, args),
            }
            record["machine"] = machine()
            line = json.dumps(record)
            print(line, flush=True)
            with out.open("a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
