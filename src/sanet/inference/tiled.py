"""The sliding-window protocol streamed over an image of any size, in memory independent of its
area (docs/large-images.md).

The whole-image protocol (``protocol.py``) holds ``K × h_s × w_s`` float sums per scale. Here
the image's *global* window grid is the same (windows of ``crop_size`` every ``stride``, the
last one aligned to the border, at every scale), but it is visited in vertical strips of
``Tiling.strip`` columns, and inside a strip down in blocks of ``Tiling.tile`` rows:

- a strip computes every window that reaches into its columns (a window that crosses a strip
  boundary is computed again in the next strip: about ``crop / strip`` more forward passes);
- per scale, a rolling sum of window probabilities and a count cover about
  ``(tile · s + crop) × (strip · s + crop)`` scaled pixels. Once every window row starting above
  the rows a block needs is added, those rows are final: the block's probabilities are the
  average of the per-scale maps, bilinearly resized to the image's size with the taps
  ``F.interpolate`` uses (``models/resize.py``), as ``combine_bands`` does.

So a block's probabilities are the whole-image protocol's, up to the float rounding of a
different batch composition. Batches never mix window rows, so a block computed again (a
resumed run) gets the very same windows in the very same batches: the same bits.

Scales are relative to the image's own resolution (``base_size`` is not used: it would shrink a
20,000-pixel image to 520). Windows that hold only nodata pixels are not computed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sanet.conventions import IGNORE_INDEX
from sanet.data.transforms import normalize_image
from sanet.errors import UsageError, arg
from sanet.inference.protocol import MIN_INPUT, EvalProtocol, window_starts
from sanet.inference.raster import RasterSource
from sanet.metrics import ConfusionMatrix
from sanet.models.resize import interpolation_taps

_AMP = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # as protocol.py's amp


@dataclass(frozen=True)
class Tiling:
    """How a large image is cut: output tiles (and block rows) of ``tile`` pixels, strips of
    ``strip`` columns (a multiple of ``tile``)."""

    tile: int = 512
    strip: int = 2048

    def __post_init__(self) -> None:
        if self.tile < 16 or self.tile % 16:
            raise UsageError(f"{arg('tile_size')} must be a multiple of 16, got {self.tile}.")
        if self.strip < self.tile or self.strip % self.tile:
            raise UsageError(
                f"{arg('strip_width')} must be a multiple of {arg('tile_size')} ({self.tile}), "
                f"got {self.strip}."
            )

    def blocks(self, height: int, width: int) -> list[tuple[slice, slice]]:
        """``(rows, cols)`` of every block, strip by strip, top to bottom within a strip."""
        return [
            (slice(r, min(r + self.tile, height)), slice(c, min(c + self.strip, width)))
            for c in range(0, width, self.strip)
            for r in range(0, height, self.tile)
        ]


@dataclass
class Block:
    """One block of the image: its rows and columns, the class probabilities at each
    temperature asked (``(K, h, w)`` float32) and which pixels are valid (``(h, w)`` bool)."""

    index: int
    rows: slice
    cols: slice
    probs: list[torch.Tensor]
    valid: np.ndarray


def tiled_protocol(protocol: EvalProtocol) -> EvalProtocol:
    """``protocol`` with its scales relative to the image's own resolution (no base size)."""
    return dataclasses.replace(protocol, base_size=None)


class _Axis:
    """One axis of the image (``n`` pixels) at one scale (``m`` pixels), and the bilinear taps
    between them (``F.interpolate``'s, align_corners=False)."""

    def __init__(self, n: int, m: int, device: torch.device) -> None:
        self.n, self.m, self.same = n, m, n == m
        if not self.same:
            self.down = interpolation_taps(n, m, device)  # image index → scaled taps
            self.up = interpolation_taps(m, n, device)  # scaled index → image taps

    def need(self, a: int, b: int) -> tuple[int, int]:
        """Scaled indices that image indices ``a..b-1`` interpolate from."""
        if self.same:
            return a, b
        return int(self.down[0][a]), int(self.down[1][b - 1]) + 1

    def source(self, a: int, b: int) -> tuple[int, int]:
        """Image indices that scaled indices ``a..b-1`` interpolate from."""
        if self.same:
            return a, b
        return int(self.up[0][a]), int(self.up[1][b - 1]) + 1

    @staticmethod
    def _lerp(x: torch.Tensor, taps: Any, a: int, b: int, lo: int, dim: int) -> torch.Tensor:
        i0, i1, f = (t[a:b] for t in taps)
        shape = [1] * x.ndim
        shape[dim] = b - a
        f = f.view(shape)
        return x.index_select(dim, i0 - lo) * (1 - f) + x.index_select(dim, i1 - lo) * f

    def to_scaled(self, x: torch.Tensor, a: int, b: int, lo: int, dim: int) -> torch.Tensor:
        """Scaled indices ``a..b-1`` from image values starting at index ``lo``."""
        if self.same:
            return x.narrow(dim, a - lo, b - a)
        return self._lerp(x, self.up, a, b, lo, dim)

    def touched(self, v: torch.Tensor, a: int, b: int, lo: int, dim: int) -> torch.Tensor:
        """Whether scaled indices ``a..b-1`` interpolate from any true value of ``v``."""
        if self.same:
            return v.narrow(dim, a - lo, b - a)
        i0, i1 = (t[a:b] - lo for t in self.up[:2])
        return v.index_select(dim, i0) | v.index_select(dim, i1)

    def to_image(self, x: torch.Tensor, a: int, b: int, lo: int, dim: int) -> torch.Tensor:
        """Image indices ``a..b-1`` from scaled values starting at index ``lo``."""
        if self.same:
            return x.narrow(dim, a - lo, b - a)
        return self._lerp(x, self.down, a, b, lo, dim)


def _window_probs(
    model: nn.Module, tiles: torch.Tensor, protocol: EvalProtocol, temperatures: Sequence[float]
) -> list[torch.Tensor]:
    """Probabilities of equal-size windows at each temperature from one forward pass (mirrors in
    the same batch, un-mirrored and averaged), computed as ``protocol.py`` computes them.

    Shape: tiles ``(B, 3, h, w)`` → one ``(B, K, h, w)`` per temperature.
    """
    n, (h, w) = len(tiles), tiles.shape[-2:]
    x = torch.cat([tiles, tiles.flip(-1)]) if protocol.flip else tiles
    ph, pw = max(0, MIN_INPUT - h), max(0, MIN_INPUT - w)
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))  # zeros = the mean colour after normalisation
    if protocol.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    dtype = _AMP[protocol.amp]
    with torch.no_grad(), torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
        logits = model(x)["out"]
    logits = logits[..., :h, :w].float()
    out = []
    for t in temperatures:
        p = (logits if t == 1.0 else logits / t).softmax(dim=1)
        out.append((p[:n] + p[n:].flip(-1)) / 2 if protocol.flip else p)
    return out


class _ScaleStrip:
    """One scale of the protocol over one strip: its windows, computed row by row into a
    rolling sum and count, and the finished rows resized to the image's size."""

    def __init__(self, run: _Run, scale: float, cols: slice) -> None:
        self.run, p = run, run.protocol
        h, w = max(1, round(run.height * scale)), max(1, round(run.width * scale))  # protocol.py
        self.rows, self.cols = _Axis(run.height, h, run.device), _Axis(run.width, w, run.device)
        self.ch, self.cw = min(p.crop_size, h), min(p.crop_size, w)
        self.ys = window_starts(h, self.ch, p.stride)
        lo, hi = self.cols.need(cols.start, cols.stop)
        self.xs = [x for x in window_starts(w, self.cw, p.stride) if x < hi and x + self.cw > lo]
        self.x0, self.out_cols = self.xs[0], cols
        self.width = self.xs[-1] + self.cw - self.x0
        self.done, self.base = 0, 0  # window rows added; scaled row of the sums' first row
        # Room for one block's rows and the windows reaching below them, allocated once: the
        # sums move up by one block after each (``_drop``), never grow in steady state.
        rows = int(run.tile * h / run.height) + 3 + self.ch
        self.used = 0  # rows of the sums in use, from ``base``
        self.count = torch.zeros(rows, self.width, device=run.device)
        self.sums = [
            torch.zeros(run.num_classes, rows, self.width, device=run.device)
            for _ in run.temperatures
        ]

    def start_at(self, row: int) -> None:
        """Continue at image row ``row`` (a resumed run): add again the windows of the rows
        finished before that still reach the rows not yet written."""
        if row == 0:
            return
        prev_hi, self.base = self.rows.need(row - 1, row)[1], self.rows.need(row, row + 1)[0]
        self.done = sum(1 for y in self.ys if y < prev_hi)
        self._add([k for k in range(self.done) if self.ys[k] + self.ch > self.base])

    def advance(self, rows: slice) -> list[torch.Tensor]:
        """The probabilities of image rows ``rows`` × the strip's columns, one per temperature:
        ``(K, len(rows), len(cols))``."""
        lo, hi = self.rows.need(rows.start, rows.stop)
        todo = [k for k in range(self.done, len(self.ys)) if self.ys[k] < hi]
        self._add(todo)
        self.done += len(todo)
        self._grow(hi)
        a, b = lo - self.base, hi - self.base
        count = self.count[a:b].clamp(min=1)  # 0 only where every window was nodata
        out = []
        for s in self.sums:
            m = self.rows.to_image(s[:, a:b] / count, rows.start, rows.stop, lo, 1)
            out.append(self.cols.to_image(m, self.out_cols.start, self.out_cols.stop, self.x0, 2))
        if rows.stop < self.run.height:
            self._drop(self.rows.need(rows.stop, rows.stop + 1)[0])
        return out

    def _add(self, todo: list[int]) -> None:
        """Add the windows of window rows ``todo`` (indices into ``ys``) to the sums; windows
        that hold only nodata are skipped."""
        if not todo:
            return
        ch, cw, x0, run = self.ch, self.cw, self.x0, self.run
        r0, r1 = self.ys[todo[0]], self.ys[todo[-1]] + ch
        x, valid = run.read_scaled(self, (r0, r1), (x0, x0 + self.width))
        per_batch = max(1, run.protocol.window_batch // (2 if run.protocol.flip else 1))
        for k in todo:
            y = self.ys[k] - r0
            keep = [c for c in self.xs if valid[y : y + ch, c - x0 : c - x0 + cw].any()]
            for i in range(0, len(keep), per_batch):  # batches never mix window rows
                chunk = keep[i : i + per_batch]
                tiles = torch.stack([x[:, y : y + ch, c - x0 : c - x0 + cw] for c in chunk])
                probs = _window_probs(run.model, tiles, run.protocol, run.temperatures)
                self._accumulate(self.ys[k], chunk, probs)

    def _accumulate(self, y: int, xs: list[int], probs: list[torch.Tensor]) -> None:
        """Add windows at row ``y``; the rows of a window above the sums' first row (a window
        added again on a resume) are written already and left out."""
        self._grow(y + self.ch)
        skip = max(0, self.base - y)
        r, h = y + skip - self.base, self.ch - skip
        for j, x in enumerate(xs):
            c = x - self.x0
            for s, p in zip(self.sums, probs, strict=True):
                s[:, r : r + h, c : c + self.cw] += p[j][:, skip:]
            self.count[r : r + h, c : c + self.cw] += 1

    def _grow(self, end: int) -> None:
        """Rows up to scaled row ``end`` (exclusive) in use (more room if ever needed)."""
        need = end - self.base
        extra = need - self.count.shape[0]
        if extra > 0:
            self.count = F.pad(self.count, (0, 0, 0, extra))
            self.sums = [F.pad(s, (0, 0, 0, extra)) for s in self.sums]
        self.used = max(self.used, need)

    def _drop(self, base: int) -> None:
        """Forget the scaled rows above ``base`` (final, handed out): the rows below move up."""
        cut, used = base - self.base, self.used
        keep = max(0, used - cut)
        for t in [self.count, *self.sums]:
            if keep:
                t[..., :keep, :] = t[..., cut:used, :].clone()
            t[..., keep:used, :] = 0
        self.base, self.used = base, keep


class _Run:
    """One image under one protocol: the model, where it runs, and reading scaled regions."""

    def __init__(
        self,
        model: nn.Module,
        source: RasterSource,
        protocol: EvalProtocol,
        temperatures: Sequence[float],
        device: torch.device | str,
        tile: int,
    ) -> None:
        self.model, self.source, self.protocol = model, source, tiled_protocol(protocol)
        self.tile = tile
        self.temperatures, self.device = list(temperatures), torch.device(device)
        self.height, self.width = source.height, source.width
        with torch.no_grad():  # the number of classes, from one small forward pass
            probe = torch.zeros(1, 3, MIN_INPUT, MIN_INPUT, device=self.device)
            self.num_classes = int(model(probe)["out"].shape[1])

    def read_scaled(
        self, strip: _ScaleStrip, rows: tuple[int, int], cols: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled rows × columns of the normalised image ``(3, r, c)`` and whether each scaled
        pixel interpolates from a valid one ``(r, c)`` (on the CPU)."""
        ra, rb = strip.rows.source(*rows)
        ca, cb = strip.cols.source(*cols)
        rgb, valid = self.source.read(slice(ra, rb), slice(ca, cb))
        x = normalize_image(torch.from_numpy(rgb).to(self.device))
        x = strip.cols.to_scaled(strip.rows.to_scaled(x, *rows, ra, 1), *cols, ca, 2)
        v = torch.from_numpy(valid).to(self.device)
        v = strip.cols.touched(strip.rows.touched(v, *rows, ra, 0), *cols, ca, 1)
        return x, v.cpu()


def stream_blocks(
    model: nn.Module,
    source: RasterSource,
    protocol: EvalProtocol,
    *,
    tiling: Tiling | None = None,
    temperatures: Sequence[float] = (1.0,),
    start: int = 0,
    device: torch.device | str = "cpu",
) -> Iterator[Block]:
    """The image's blocks (:meth:`Tiling.blocks` order) from block ``start`` on, each with the
    protocol's probabilities at every temperature in ``temperatures`` (``softmax(logits / T)``
    in every forward, as ``predict_proba``'s ``temperature``), from one set of forward passes.

    ``model`` is a model in eval mode on ``device`` returning ``{"out": logits}``. Memory is
    about ``4 · K · len(temperatures) · Σ_s (tile·s + crop) · (strip·s + crop)`` bytes, whatever
    the image's size.
    """
    tiling = tiling or Tiling()
    run = _Run(model, source, protocol, temperatures, device, tiling.tile)
    plan = tiling.blocks(run.height, run.width)
    strips: list[_ScaleStrip] = []
    for index in range(start, len(plan)):
        rows, cols = plan[index]
        if not strips or strips[0].out_cols != cols:  # a new strip
            strips = [_ScaleStrip(run, s, cols) for s in run.protocol.scales]
            for strip in strips:
                strip.start_at(rows.start)
        maps = [strip.advance(rows) for strip in strips]
        probs = maps[0]  # one scale: its map (sum([m]) / 1 is m, bit for bit)
        if len(maps) > 1:  # the average of the scales, as combine_bands takes it
            probs = [sum(m[t] for m in maps) / len(maps) for t in range(len(run.temperatures))]
        yield Block(index, rows, cols, probs, source.valid(rows, cols))  # type: ignore[misc]


def confusion_tiled(
    model: nn.Module,
    source: RasterSource,
    labels: Any,
    cm: ConfusionMatrix,
    protocol: EvalProtocol,
    *,
    tiling: Tiling | None = None,
    device: torch.device | str = "cpu",
) -> ConfusionMatrix:
    """Add one large image to ``cm``, block by block: ``labels(rows, cols)`` gives the class ids
    (0..K-1, 255 = ignore) of a block; nodata pixels are left out."""
    for block in stream_blocks(model, source, protocol, tiling=tiling, device=device):
        target = torch.as_tensor(np.asarray(labels(block.rows, block.cols)), dtype=torch.int64)
        target[~torch.from_numpy(block.valid)] = IGNORE_INDEX
        cm.update(block.probs[0].argmax(0)[None], target[None].to(device))
    return cm
