"""The paper's evaluation protocol on tensors (docs/design.md, "Protocol"): single scale, multi-scale + flip,
sliding window. Images in, masks out (``Predictor``, ``evaluate``) is ``predictor.py``.

How one image is predicted (:func:`predict_proba`):

1. For each scale ``s``: resize the image so that its long side is ``base_size · s`` (or, with
   ``base_size=None``, scale both sides by ``s``; single scale at ``s = 1`` keeps the image).
2. At that size, images larger than ``crop_size`` go through a sliding window (``crop_size``
   windows every ``stride`` px, the last window aligned to the border); windows of equal size,
   across scales, are batched (``window_batch`` per forward) and their softmax probabilities
   averaged where they overlap. With ``flip`` every window is also run mirrored (in the same
   batch) and the two averaged.
3. The per-scale probability maps are bilinearly resized to the input size and averaged.

Memory bound: per-scale probability maps are kept at their *scaled* resolution, and step 3 is
done in bands of ``band_rows`` output rows, so the full-resolution ``(K, H, W)`` tensor is never
materialised by :func:`predict_mask`. Peak memory is about ``4·K·Σ_s h_s·w_s`` bytes for the
per-scale maps (with ``base_size`` set this does not grow with the input: ~8.6·base_size² pixels
for the paper's six scales, e.g. 0.55 GB for K = 59 at base 520) plus ``4·K·band_rows·W`` for a
band and the ``(H, W)`` output. Without ``base_size`` (native resolution) the maps are
``4·K·H·W·Σ s²`` bytes: a 4000×3000 image with K = 21 needs ~1 GB at single scale.
:func:`predict_proba` returns the full ``(K, H, W)`` map, so it needs that much more on top.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sanet.conventions import BASE_SIZE, EVAL_CROP_SIZE, EVAL_STRIDE, PAPER_SCALES
from sanet.errors import UsageError
from sanet.models.resize import interpolation_taps

logger = logging.getLogger(__name__)

MIN_INPUT = 32  # the models need H, W ≥ 32; smaller windows are zero-padded (mean colour)
_AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class EvalProtocol:
    """How an image becomes a prediction; written next to the metrics it produced.

    Attributes:
        scales: resize factors; ``(1.0,)`` is single scale.
        flip: also predict the horizontally mirrored image and average.
        base_size: long side at scale 1.0 (the paper: 520); ``None`` keeps the image's own size.
        crop_size: sliding-window size (480); images at most this large take one forward.
        stride: sliding-window step (320 = 2/3 of the crop).
        window_batch: windows (flips included) per forward pass.
        band_rows: output rows combined at a time (bounds memory on large images).
        amp: ``"none"``, ``"bf16"`` or ``"fp16"``: forward passes under autocast (faster on
            GPUs and on CPUs with bf16 units; softmax and averaging stay float32).
            :func:`~sanet.inference.runs.run_protocol` resolves ``"auto"``.
        channels_last: windows (and the model, where a Predictor or an evaluation owns it) in
            ``torch.channels_last`` (what oneDNN's bf16 kernels run fastest on).
    """

    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    base_size: int | None = None
    crop_size: int = EVAL_CROP_SIZE
    stride: int = EVAL_STRIDE
    window_batch: int = 4
    band_rows: int = 256
    amp: str = "none"
    channels_last: bool = False

    def __post_init__(self) -> None:
        if not self.scales or any(s <= 0 for s in self.scales):
            raise UsageError(f"scales must be positive numbers, got {self.scales!r}.")
        if self.crop_size < MIN_INPUT or not 0 < self.stride <= self.crop_size:
            raise UsageError(
                f"Need crop_size ≥ {MIN_INPUT} and 0 < stride ≤ crop_size, got crop_size "
                f"{self.crop_size}, stride {self.stride} (the paper: {EVAL_CROP_SIZE} and {EVAL_STRIDE})."
            )
        if self.amp not in _AMP_DTYPES:
            raise UsageError(f"amp must be one of {list(_AMP_DTYPES)}, got {self.amp!r}.")
        if self.base_size is not None and self.base_size < 1:
            raise UsageError(f"base_size must be positive or None, got {self.base_size}.")

    @classmethod
    def paper_ms_flip(cls, base_size: int = BASE_SIZE, **kwargs: Any) -> EvalProtocol:
        """Scales 0.5–1.75 of base size 520, each with its mirror image (Sec. 4)."""
        return cls(scales=PAPER_SCALES, flip=True, base_size=base_size, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (for ``metrics.json``)."""
        d = asdict(self)
        d["scales"] = list(self.scales)
        d["probabilities"] = "softmax, averaged over windows, flips and scales"
        return d


class Cancelled(Exception):
    """Inference stopped between two forward passes because ``should_stop()`` said so (e.g. a
    server request that timed out or whose client left)."""


# ---------------------------------------------------------------------------------------------
# Tensor-level inference
# ---------------------------------------------------------------------------------------------


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Window offsets covering ``size``; the last window ends exactly at the border."""
    if size <= window:
        return [0]
    return [*range(0, size - window, stride), size - window]


def window_count(height: int, width: int, protocol: EvalProtocol) -> int:
    """Model inputs (windows, mirrored ones included) that one ``height × width`` image takes
    under ``protocol``: the unit of progress inside a large image."""
    total = 0
    for s in protocol.scales:
        h, w = _scaled_size(height, width, s, protocol.base_size)
        ch, cw = min(protocol.crop_size, h), min(protocol.crop_size, w)
        total += len(window_starts(h, ch, protocol.stride)) * len(
            window_starts(w, cw, protocol.stride)
        )
    return total * (2 if protocol.flip else 1)


def _forward_probs(
    model: nn.Module,
    tiles: torch.Tensor,
    amp: str = "none",
    *,
    temperature: float = 1.0,
    channels_last: bool = False,
) -> torch.Tensor:
    """Softmax probabilities of a batch of equal-size tiles, zero-padding tiles below 32 px;
    ``softmax(logits / temperature)`` (temperature scaling enters every forward: docs/trust.md).

    Shape: tiles ``(B, 3, h, w)`` → ``(B, K, h, w)``.
    """
    h, w = tiles.shape[-2:]
    ph, pw = max(0, MIN_INPUT - h), max(0, MIN_INPUT - w)
    if ph or pw:
        tiles = F.pad(tiles, (0, pw, 0, ph))  # zeros = the mean colour after normalisation
    if channels_last:
        tiles = tiles.contiguous(memory_format=torch.channels_last)
    dtype = _AMP_DTYPES[amp]
    with torch.autocast(tiles.device.type, dtype=dtype, enabled=dtype is not None):
        logits = model(tiles)["out"]
    logits = logits[..., :h, :w].float()
    return (logits if temperature == 1.0 else logits / temperature).softmax(dim=1)


def _window_probs(
    model: nn.Module, tiles: torch.Tensor, protocol: EvalProtocol, *, temperature: float = 1.0
) -> torch.Tensor:
    """Probabilities of equal-size windows; with ``flip`` their mirrors go in the same forward
    and are un-mirrored and averaged with them.

    Shape: tiles ``(B, 3, h, w)`` → ``(B, K, h, w)``.
    """
    cl = protocol.channels_last
    if not protocol.flip:
        return _forward_probs(model, tiles, protocol.amp, temperature=temperature, channels_last=cl)
    n = len(tiles)
    both = torch.cat([tiles, tiles.flip(-1)])
    probs = _forward_probs(model, both, protocol.amp, temperature=temperature, channels_last=cl)
    return (probs[:n] + probs[n:].flip(-1)) / 2


def _scaled_size(h: int, w: int, scale: float, base_size: int | None) -> tuple[int, int]:
    if base_size is None:
        return max(1, round(h * scale)), max(1, round(w * scale))
    long_side = round(base_size * scale)
    if h >= w:
        return long_side, max(1, round(w * long_side / h))
    return max(1, round(h * long_side / w)), long_side


def _scaled_windows(
    image: torch.Tensor, protocol: EvalProtocol
) -> tuple[list[torch.Tensor], list[tuple[int, int, int, int, int]]]:
    """The image at every scale, and every sliding window as ``(scale index, top, left, h, w)``.

    Shape: image ``(3, H, W)`` → list of ``(3, h_s, w_s)``.
    """
    h, w = image.shape[-2:]
    scaled, windows = [], []
    for i, s in enumerate(protocol.scales):
        size = _scaled_size(h, w, s, protocol.base_size)
        resized = image
        if size != (h, w):
            resized = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        scaled.append(resized)
        ch, cw = min(protocol.crop_size, size[0]), min(protocol.crop_size, size[1])
        windows += [
            (i, y, x, ch, cw)
            for y in window_starts(size[0], ch, protocol.stride)
            for x in window_starts(size[1], cw, protocol.stride)
        ]
    return scaled, windows


@torch.no_grad()
def scale_probs(
    model: nn.Module,
    image: torch.Tensor,
    protocol: EvalProtocol,
    store: torch.device | str | None = None,
    *,
    should_stop: Callable[[], bool] | None = None,
    temperature: float = 1.0,
) -> list[torch.Tensor]:
    """Per-scale probability maps at their scaled resolutions (step 1–2 of the module docstring).

    ``temperature`` divides the logits of every forward before its softmax (calibrated
    probabilities, docs/trust.md); 1.0 is the plain protocol.

    The sliding windows of all scales are pooled and those of equal size share forward passes
    (``window_batch`` windows, mirrors included, per pass): with the paper's scales a 500×375
    image's 480×480 windows of scales 1.25, 1.5 and 1.75 go through together. Each window's
    probabilities are those of its own forward, so the result equals scale-by-scale inference
    up to the float rounding of a different batch size.

    ``should_stop`` is asked before every forward pass; when it returns True the work stops
    with :class:`Cancelled` (a forward pass is not interrupted: stopping takes at most one).

    Shape: image ``(3, H, W)`` normalised → list of ``(K, h_s, w_s)``.
    """
    store = torch.device(store) if store is not None else image.device
    scaled, windows = _scaled_windows(image, protocol)
    acc = [torch.zeros(0, device=store)] * len(scaled)  # (K, h_s, w_s) once K is known
    count = [torch.zeros(1, *x.shape[-2:], device=store) for x in scaled]
    per_batch = max(1, protocol.window_batch // (2 if protocol.flip else 1))
    for shape in dict.fromkeys(win[3:] for win in windows):  # window sizes, first-seen order
        same = [win for win in windows if win[3:] == shape]
        for k in range(0, len(same), per_batch):
            if should_stop is not None and should_stop():
                raise Cancelled(f"stopped after {k} of {len(same)} windows of size {shape}")
            chunk = same[k : k + per_batch]
            tiles = torch.stack([scaled[i][:, y : y + ch, x : x + cw] for i, y, x, ch, cw in chunk])
            probs = _window_probs(model, tiles, protocol, temperature=temperature).to(store)
            for (i, y, x, ch, cw), p in zip(chunk, probs, strict=True):
                if not acc[i].numel():
                    acc[i] = torch.zeros(p.shape[0], *scaled[i].shape[-2:], device=store)
                acc[i][:, y : y + ch, x : x + cw] += p
                count[i][:, y : y + ch, x : x + cw] += 1
    return [a / c for a, c in zip(acc, count, strict=True)]  # overlaps averaged


def _resize_band(p: torch.Tensor, out_hw: tuple[int, int], y0: int, y1: int) -> torch.Tensor:
    """Rows ``y0..y1-1`` of ``F.interpolate(p, out_hw, bilinear)`` without the full output.

    Shape: p ``(K, h, w)`` → ``(K, y1 - y0, W)``.
    """
    (H, W), (h, w) = out_hw, p.shape[-2:]
    if (h, w) == (H, W):
        return p[:, y0:y1]
    r0, r1, fy = (t[y0:y1] for t in interpolation_taps(H, h, p.device))  # F.interpolate's taps
    rows = p[:, r0] * (1 - fy)[None, :, None] + p[:, r1] * fy[None, :, None]  # (K, b, w)
    # Columns: bilinear b→b rows is the identity, so this resizes the width only, exactly as
    # the full-size F.interpolate would (and much faster than a gather).
    return F.interpolate(rows[None], size=(y1 - y0, W), mode="bilinear", align_corners=False)[0]


def combine_bands(
    maps: Sequence[torch.Tensor],
    out_hw: tuple[int, int],
    band_rows: int,
    reduce: Callable[[torch.Tensor], torch.Tensor],
) -> list[torch.Tensor]:
    """Average the per-scale maps at the output size, one band of rows at a time."""
    bands = []
    for y0 in range(0, out_hw[0], band_rows):
        y1 = min(out_hw[0], y0 + band_rows)
        band = sum(_resize_band(m, out_hw, y0, y1) for m in maps) / len(maps)  # (K, b, W)
        bands.append(reduce(band))
    return bands


def predict_proba(
    model: nn.Module,
    images: torch.Tensor,
    protocol: EvalProtocol | None = None,
    store: torch.device | str | None = None,
    *,
    should_stop: Callable[[], bool] | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Class probabilities under ``protocol`` (default: single scale).

    Args:
        model: a segmentation model in eval mode returning ``{"out": logits}``.
        images: normalised images on the model's device.
        store: device for the probability maps (default: the images'); "cpu" keeps GPU memory
            free for the forward passes on large images.
        should_stop: asked before every forward pass; True stops with :class:`Cancelled`.
        temperature: each forward's probabilities are ``softmax(logits / temperature)`` before
            the averaging (a calibration's temperature, docs/trust.md; 1.0: the plain protocol).

    Shape:
        - images: ``(N, 3, H, W)`` or ``(3, H, W)``
        - output: ``(N, K, H, W)`` (or ``(K, H, W)``) float32, summing to 1 over K.
    """
    return _predict(
        model,
        images,
        protocol,
        store,
        reduce=lambda band: band,
        dim=1,
        should_stop=should_stop,
        temperature=temperature,
    )


def predict_mask(
    model: nn.Module,
    images: torch.Tensor,
    protocol: EvalProtocol | None = None,
    store: torch.device | str | None = None,
    *,
    should_stop: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """Arg-max class ids under ``protocol``, never holding the full-size probability map
    (``should_stop``: as in :func:`predict_proba`).

    Shape: images ``(N, 3, H, W)`` or ``(3, H, W)`` → ``(N, H, W)`` or ``(H, W)`` int64.
    """
    reduce = lambda band: band.argmax(dim=0)  # noqa: E731
    return _predict(model, images, protocol, store, reduce=reduce, dim=0, should_stop=should_stop)


def _predict(
    model: nn.Module,
    images: torch.Tensor,
    protocol: EvalProtocol | None,
    store: torch.device | str | None,
    reduce: Callable[[torch.Tensor], torch.Tensor],
    dim: int,
    *,
    should_stop: Callable[[], bool] | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per image: per-scale probabilities, combined band by band, each band ``reduce``d and
    the bands concatenated along ``dim`` (the row axis of the reduced band)."""
    protocol = protocol or EvalProtocol()
    single = images.ndim == 3
    out = []
    for image in images[None] if single else images:
        maps = scale_probs(
            model, image, protocol, store, should_stop=should_stop, temperature=temperature
        )
        bands = combine_bands(maps, tuple(image.shape[-2:]), protocol.band_rows, reduce)
        out.append(torch.cat(bands, dim=dim))
    result = torch.stack(out)
    return result[0] if single else result
