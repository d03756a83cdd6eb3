"""Segment images with a ``sanet export`` ONNX file and nothing else: numpy, Pillow, onnxruntime.

This is the inference protocol recorded in the file's metadata (``protocol``), written out in
numpy so that runtimes without torch or sanet give the masks ``sanet predict`` gives (tested
pixel for pixel: tests/test_onnx_example.py). docs/deploy.md, "Without sanet", describes each
step. For one image:

1. ``x = (rgb / 255 - mean) / std`` (float32, ``(3, H, W)``).
2. Per scale ``s``: the size is ``round(H·s), round(W·s)``, or with ``base_size`` the long side
   ``round(base_size·s)`` and the short side in proportion (Python's ``round``); ``x`` is resized
   to it bilinearly (half-pixel centres, no antialiasing: ``F.interpolate(align_corners=False)``)
   unless it already has it.
3. Windows of ``min(crop_size, side)`` every ``stride`` px, the last one on the border; windows of
   equal size are batched (``window_batch`` per run; with ``flip`` each window's mirror image goes
   in the same run). Inputs under ``min_size`` are zero-padded at the bottom/right and the logits
   cropped back. Softmax over classes; a mirror's probabilities are mirrored back and averaged
   with the window's; overlapping windows are averaged.
4. Each scale's probabilities are resized bilinearly to ``(H, W)`` and averaged over scales; the
   mask is the arg-max (the first class on ties).

    python examples/onnx_predict.py demo.onnx photo.jpg more/*.png --out masks/
    python examples/onnx_predict.py demo.onnx photo.jpg --scales 0.75,1,1.25 --flip --base-size 96
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

# --- Resizing as torch does it (float32, the same taps and the same order of operations) -------


def taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of bilinear resizing with half-pixel centres, as
    ``F.interpolate(..., mode="bilinear", align_corners=False)`` computes them on the CPU: the
    scale in float32, and ``scale · (i + ½) − ½`` rounded once (a fused multiply-add; exact in
    float64, then rounded to float32)."""
    scale = np.float64(np.float32(in_size) / np.float32(out_size))
    real = (scale * (np.arange(out_size) + 0.5) - 0.5).astype(np.float32)
    real = np.maximum(real, np.float32(0))
    i0 = np.minimum(np.floor(real).astype(np.int64), in_size - 1)
    w1 = np.clip(real - i0.astype(np.float32), 0, 1).astype(np.float32)
    return i0, np.minimum(i0 + 1, in_size - 1), np.float32(1) - w1, w1


def resize(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(C, h, w)`` float32 → ``(C, height, width)``: along the width, then the height."""
    c0, c1, cw0, cw1 = taps(x.shape[2], width)
    r0, r1, rw0, rw1 = taps(x.shape[1], height)
    across = x[:, :, c0] * cw0 + x[:, :, c1] * cw1
    return across[:, r0] * rw0[:, None] + across[:, r1] * rw1[:, None]


def resize_probs(p: np.ndarray, height: int, width: int) -> np.ndarray:
    """Per-scale probabilities ``(K, h, w)`` → ``(K, height, width)`` as sanet combines them:
    rows first (``protocol._resize_band``, the same float32 taps), then columns as
    :func:`resize`."""
    if p.shape[1:] == (height, width):
        return p
    r0, r1, fy0, fy1 = taps(p.shape[1], height)
    rows = p[:, r0] * fy0[None, :, None] + p[:, r1] * fy1[None, :, None]
    c0, c1, cw0, cw1 = taps(p.shape[2], width)
    return rows[:, :, c0] * cw0 + rows[:, :, c1] * cw1


# --- The protocol -------------------------------------------------------------------------------


def scaled_size(h: int, w: int, scale: float, base_size: int | None) -> tuple[int, int]:
    if base_size is None:
        return max(1, round(h * scale)), max(1, round(w * scale))
    long_side = round(base_size * scale)
    if h >= w:
        return long_side, max(1, round(w * long_side / h))
    return max(1, round(h * long_side / w)), long_side


def starts(size: int, window: int, stride: int) -> list[int]:
    """Window offsets covering ``size``; the last window ends exactly at the border."""
    return [0] if size <= window else [*range(0, size - window, stride), size - window]


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class OnnxSegmenter:
    """An exported file and its recorded protocol (``overrides`` replace protocol keys)."""

    def __init__(self, path: str | Path, **overrides: object) -> None:
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.meta = {k: json.loads(v) for k, v in meta.items()}
        self.protocol = {**self.meta["protocol"], **overrides}
        self.mean = np.array(self.meta["mean"], np.float32)[:, None, None]
        self.std = np.array(self.meta["std"], np.float32)[:, None, None]
        self.input = self.session.get_inputs()[0].name

    def forward(self, tiles: np.ndarray) -> np.ndarray:
        """Softmax probabilities of equal-size tiles ``(B, 3, h, w)`` → ``(B, K, h, w)``."""
        h, w = tiles.shape[-2:]
        low = int(self.meta.get("min_size", 32))
        padded = np.pad(tiles, ((0, 0), (0, 0), (0, max(0, low - h)), (0, max(0, low - w))))
        logits = self.session.run(None, {self.input: np.ascontiguousarray(padded)})[0]
        return softmax(logits[..., :h, :w].astype(np.float32))

    def window_probs(self, tiles: np.ndarray) -> np.ndarray:
        if not self.protocol["flip"]:
            return self.forward(tiles)
        n = len(tiles)
        probs = self.forward(np.concatenate([tiles, tiles[..., ::-1]]))
        return (probs[:n] + probs[n:, ..., ::-1]) / np.float32(2)

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB → ``(H, W)`` class ids."""
        pr = self.protocol
        x = (rgb.transpose(2, 0, 1).astype(np.float32) / np.float32(255) - self.mean) / self.std
        H, W = rgb.shape[:2]
        scaled, windows = [], []
        for i, s in enumerate(pr["scales"]):
            h, w = scaled_size(H, W, s, pr["base_size"])
            scaled.append(x if (h, w) == (H, W) else resize(x, h, w))
            ch, cw = min(pr["crop_size"], h), min(pr["crop_size"], w)
            windows += [
                (i, y, x0, ch, cw)
                for y in starts(h, ch, pr["stride"])
                for x0 in starts(w, cw, pr["stride"])
            ]
        acc = [None] * len(scaled)
        count = [np.zeros((1, *im.shape[1:]), np.float32) for im in scaled]
        per_batch = max(1, pr["window_batch"] // (2 if pr["flip"] else 1))
        for shape in dict.fromkeys(win[3:] for win in windows):  # sizes in first-seen order
            same = [win for win in windows if win[3:] == shape]
            for k in range(0, len(same), per_batch):
                chunk = same[k : k + per_batch]
                tiles = np.stack([scaled[i][:, y : y + h, x0 : x0 + w] for i, y, x0, h, w in chunk])
                for (i, y, x0, h, w), p in zip(chunk, self.window_probs(tiles), strict=True):
                    if acc[i] is None:
                        acc[i] = np.zeros((p.shape[0], *scaled[i].shape[1:]), np.float32)
                    acc[i][:, y : y + h, x0 : x0 + w] += p
                    count[i][:, y : y + h, x0 : x0 + w] += 1
        maps = [a / c for a, c in zip(acc, count, strict=True)]
        total = resize_probs(maps[0], H, W)
        for m in maps[1:]:
            total = total + resize_probs(m, H, W)
        return (total / np.float32(len(maps))).argmax(axis=0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", help="an .onnx file written by `sanet export`")
    p.add_argument("images", nargs="+", help="image files (8-bit; pixels as stored, no EXIF turn)")
    p.add_argument("--out", type=Path, default=Path("masks"), help="folder for <stem>.png masks")
    p.add_argument("--scales", help="comma-separated scales (default: the recorded protocol's)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--base-size", type=int, help="long side at scale 1 (0: the image's own)")
    args = p.parse_args()
    overrides: dict[str, object] = {}
    if args.scales:
        overrides["scales"] = [float(s) for s in args.scales.split(",")]
    if args.flip is not None:
        overrides["flip"] = args.flip
    if args.base_size is not None:
        overrides["base_size"] = args.base_size or None
    model = OnnxSegmenter(args.model, **overrides)
    names, palette = model.meta["class_names"], model.meta["palette"]
    args.out.mkdir(parents=True, exist_ok=True)
    for path in args.images:
        mask = model.predict(np.asarray(Image.open(path).convert("RGB")))
        out = Image.fromarray(mask.astype(np.uint8), mode="P")
        out.putpalette([v for c in palette for v in c])
        out.save(args.out / f"{Path(path).stem}.png")
        counts = np.bincount(mask.ravel(), minlength=len(names))
        shares = ", ".join(
            f"{names[k]} {counts[k] / mask.size:.1%}" for k in np.argsort(-counts)[:3]
        )
        print(
            f"{path}: {mask.shape[1]}×{mask.shape[0]} → {args.out / Path(path).stem}.png ({shares})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
