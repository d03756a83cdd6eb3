"""Images in, masks out: ``Predictor`` (load once, predict many) on PyTorch or onnxruntime,
image conversion and normalisation, and ``evaluate`` (a confusion matrix over a dataset under a
protocol)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sanet.conventions import IGNORE_INDEX
from sanet.data.io import load_image
from sanet.data.transforms import normalize_image
from sanet.devices import resolve_device
from sanet.errors import UsageError, arg
from sanet.inference.confidence import (
    CALIBRATION_KEY,
    Calibration,
    arg_max,
    calibrate_hint,
    largest,
    protocol_views,
    read_calibration,
)
from sanet.inference.onnx_backend import OnnxModel, providers_for
from sanet.inference.protocol import EvalProtocol, predict_mask, predict_proba
from sanet.inference.runs import run_protocol
from sanet.inference.tiled import Tiling
from sanet.inference.tiled_job import TiledOutput, predict_raster
from sanet.metrics import ConfusionMatrix
from sanet.models.registry import load_model

logger = logging.getLogger(__name__)


def open_model(
    checkpoint: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """``(model, metadata)`` from a ``save_pretrained`` folder, a run directory or a ``.pt``
    checkpoint (PyTorch), or an ``.onnx`` file (onnxruntime on ``device``'s provider).

    Both kinds of model take a normalised ``(N, 3, h, w)`` batch and return
    ``{"out": logits}``, so the protocol code drives either.
    """
    if Path(checkpoint).suffix.lower() == ".onnx":
        model = OnnxModel(checkpoint, providers=providers_for(device))
        return model, model.metadata
    return load_model(checkpoint, map_location="cpu")


def load_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB (pixels as stored, no EXIF rotation)."""
    return load_image(path)


def image_to_tensor(image: Any) -> torch.Tensor:
    """A path, PIL image, ``(H, W, 3)`` uint8 array or ``(3, H, W)`` uint8 tensor → ``(3, H, W)``
    uint8 tensor."""
    from PIL import Image

    if isinstance(image, (str, Path)):
        image = load_rgb(image)
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        if image.ndim != 3 or image.shape[-1] not in (3, 4) or image.dtype != np.uint8:
            raise UsageError(
                f"Expected an (H, W, 3) uint8 image array, got shape {image.shape} dtype "
                f"{image.dtype}. Convert with np.asarray(PIL.Image.open(p).convert('RGB'))."
            )
        return torch.from_numpy(np.array(image[..., :3], copy=True)).permute(2, 0, 1)
    if isinstance(image, torch.Tensor) and image.ndim == 3 and image.shape[0] == 3:
        if image.dtype != torch.uint8:
            raise UsageError(f"Expected a uint8 (3, H, W) tensor, got {image.dtype}.")
        return image
    raise UsageError(
        f"Cannot read an image from {type(image).__name__}: pass a file path, a PIL image, an "
        "(H, W, 3) uint8 numpy array or a (3, H, W) uint8 tensor."
    )


def normalize(image: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(…, 3, H, W)`` uint8 → ImageNet-normalised float32 on ``device`` (what the models
    expect; the same function as training's ``Normalize``)."""
    return normalize_image(image.to(device, non_blocking=True))


class Predictor:
    """Load a checkpoint once, predict many images: ``sanet.Predictor(ckpt).predict(image)``.

    Args:
        checkpoint: a ``save_pretrained`` folder, a run directory or a ``.pt`` checkpoint
            (PyTorch), or an ``.onnx`` file from ``sanet export`` (onnxruntime).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ... (for ``.onnx``: the execution provider;
            the protocol's tensor work then stays on the CPU).
        protocol: inference protocol; default: the run's own (:func:`~sanet.inference.runs.
            run_protocol`: the ``eval`` section of the run the checkpoint belongs to, or the one
            an exported file carries), as ``sanet predict`` and ``sanet eval`` use it.
        calibrated: use the calibration ``sanet calibrate`` stored with the model (calibrated
            probabilities, confidence, unsure pixels); ``False``: the raw probabilities.
        amp: the default protocol's precision: ``"none"`` (float32), ``"bf16"``, ``"fp16"`` or
            ``"auto"`` (bf16 + channels-last on a CPU with bf16 units; docs/benchmarks.md).

    Both backends share the pre- and post-processing (normalisation, padding of inputs below
    32 px, sliding window, scales, flips): only the network call differs. Arg-max masks do not
    depend on the calibration (docs/trust.md).

    Attributes:
        model, metadata, class_names (list or ``None``), palette (list of RGB or ``None``),
        backend (``"torch"`` or ``"onnxruntime"``), calibration (``Calibration`` or ``None``).
    """

    def __init__(
        self,
        checkpoint: str | Path,
        device: str | torch.device = "cpu",
        protocol: EvalProtocol | None = None,
        *,
        calibrated: bool = True,
        amp: str = "none",
    ) -> None:
        if protocol is not None and amp != "none":
            raise UsageError(
                f"Give {arg('amp')} in the protocol (EvalProtocol(amp=...)), not both."
            )
        model, metadata = open_model(checkpoint, device)
        if protocol is None:
            protocol = run_protocol(checkpoint, device=device, amp=amp)
        if isinstance(model, OnnxModel):
            device = "cpu"  # onnxruntime returns host arrays; the glue runs where they are
        self._setup(model, metadata, device, protocol, calibrated)

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        device: str | torch.device = "cpu",
        protocol: EvalProtocol | None = None,
        metadata: dict[str, Any] | None = None,
        *,
        calibrated: bool = True,
    ) -> Predictor:
        """Wrap an in-memory model (e.g. right after training); ``metadata`` may hold a
        calibration. Without a run to read, ``protocol`` defaults to single scale."""
        self = cls.__new__(cls)
        self._setup(model, metadata or {}, device, protocol, calibrated)
        return self

    def _setup(
        self,
        model: nn.Module,
        metadata: dict[str, Any],
        device: str | torch.device,
        protocol: EvalProtocol | None,
        calibrated: bool = True,
    ) -> None:
        self.device = resolve_device(device)
        self.protocol = protocol or EvalProtocol()
        self.model = _prepare(model, self.device, self.protocol)
        self.metadata = dict(metadata)
        self.backend = "onnxruntime" if isinstance(model, OnnxModel) else "torch"
        #: how a server chose this backend (``sanet serve --backend``), else ``None``
        self.backend_choice: dict[str, Any] | None = None
        self.class_names: list[str] | None = self.metadata.get("class_names")
        palette = self.metadata.get("palette")
        self.palette = [tuple(c) for c in palette] if palette else None
        self.calibration: Calibration | None = (
            read_calibration(self.metadata) if calibrated else None
        )
        if self.calibration is not None and not self.calibration.matches(self.protocol):
            logger.warning(
                "The calibration was fitted under the protocol %s; this Predictor uses another "
                "(%s), so its probabilities are calibrated only approximately. Pass "
                "protocol=predictor.calibration.eval_protocol() to use the same one.",
                self.calibration.protocol,
                {
                    k: v
                    for k, v in self.protocol.to_dict().items()
                    if k in self.calibration.protocol
                },
            )

    @property
    def temperature(self) -> float:
        """The calibration's temperature (1.0 when uncalibrated or ``calibrated=False``)."""
        return self.calibration.temperature if self.calibration is not None else 1.0

    def predict_proba(self, image: Any) -> np.ndarray:
        """Class probabilities ``(K, H, W)`` float32 at the image's own size: calibrated
        (``softmax(logits / T)`` in every forward) when the model carries a calibration."""
        x = normalize(image_to_tensor(image), self.device)
        return (
            predict_proba(self.model, x, self.protocol, temperature=self.temperature).cpu().numpy()
        )

    def predict(
        self,
        image: Any,
        *,
        unsure: bool = False,
        max_side: int | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> np.ndarray:
        """Class ids ``(H, W)`` int64 at the image's own size.

        Args:
            unsure: 255 where the calibrated confidence is below the calibration's risk
                threshold (``sanet calibrate --risk``; docs/trust.md).
            max_side: bound the work on large images: one longer than this is first resized
                (bilinear) to a long side of ``max_side`` (:func:`working_size`), predicted
                there under the protocol, and its mask resized back to ``(H, W)`` (nearest).
            should_stop: asked between forward passes; True stops the work with
                :class:`~sanet.inference.protocol.Cancelled`.
        """
        if unsure:
            self.unsure_threshold()  # refused before the forward passes
            mask, confidence = self.predict_with_confidence(
                image, max_side=max_side, should_stop=should_stop
            )
            return self.apply_unsure(mask, confidence)
        x, size = self._working_input(image, max_side)
        mask = predict_mask(self.model, x, self.protocol, should_stop=should_stop)
        return resize_mask(mask, size).cpu().numpy()

    def predict_with_confidence(
        self,
        image: Any,
        *,
        max_side: int | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(mask, confidence)``: the arg-max mask of :meth:`predict` (``(H, W)`` int64) and
        each pixel's largest calibrated probability (``(H, W)`` float32), from one set of
        forward passes (``max_side``, ``should_stop``: as in :meth:`predict`)."""
        x, size = self._working_input(image, max_side)
        views = [(1.0, arg_max), (self.temperature, largest)]
        mask, conf = protocol_views(self.model, x, self.protocol, views, should_stop=should_stop)
        return resize_mask(mask, size).cpu().numpy(), resize_mask(conf, size).float().cpu().numpy()

    def _working_input(
        self, image: Any, max_side: int | None
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """The normalised image at its working size (:func:`working_size`) and its own size."""
        x = normalize(image_to_tensor(image), self.device)
        size = (int(x.shape[-2]), int(x.shape[-1]))
        small = working_size(*size, max_side)
        if small != size:
            x = F.interpolate(x[None], size=small, mode="bilinear", align_corners=False)[0]
        return x, size

    def predict_tiled(
        self,
        image: Any,
        out: str | Path,
        *,
        confidence: bool = False,
        unsure: bool = False,
        bands: Sequence[int] | None = None,
        value_range: tuple[float, float] | None = None,
        tile_size: int = 512,
        strip_width: int = 2048,
        resume: bool = False,
        overwrite: bool = False,
        should_stop: Callable[[], Any] | None = None,
        on_block: Callable[[int, int], None] | None = None,
    ) -> TiledOutput:
        """Predict an image of any size block by block into GeoTIFF, in memory independent of
        its area (docs/large-images.md): class ids at ``out`` (uint8, the palette as colour
        table, the input's CRS, transform and nodata); with ``confidence`` also
        ``OUT_confidence.tif`` (255 × the calibrated largest probability), with ``unsure``
        ``OUT_unsure.tif`` (1 where the confidence is below the risk threshold). The same
        answer as the whole-image sliding window (scales relative to the image's resolution).

        Args:
            image: a raster file (GeoTIFF, any GDAL format, PNG, JPEG) or an ``(H, W, 3)``
                uint8 array.
            bands: the 3 bands (1-based) used as red, green, blue of a multispectral raster.
            value_range: values mapped onto 0..255 (16-bit: default 0..65535; float: needed).
            tile_size, strip_width: the output tiles (block rows) and the strips' width.
            resume: continue a stopped prediction of ``out`` (whole outputs are kept);
                overwrite: replace outputs and discard a partial prediction.
            should_stop: asked after each block; truthy stops with
                :class:`~sanet.errors.Interrupted` (the partial files are kept for ``resume``).
            on_block: called with ``(blocks done, blocks in all)``.
        """
        return predict_raster(
            self,
            image,
            out,
            confidence=confidence,
            unsure=unsure,
            bands=bands,
            value_range=value_range,
            tiling=Tiling(tile_size, strip_width),
            resume=resume,
            overwrite=overwrite,
            should_stop=should_stop,
            on_block=on_block,
        )

    def unsure_pixels(self, confidence: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Which pixels are unsure: those whose calibrated confidence is *below* the risk
        threshold λ̂ (bool, the shape of ``confidence``). A pixel with confidence exactly λ̂ is
        sure: the conformal risk control counts a pixel as sure when its confidence is ≥ λ
        (docs/trust.md), and its guarantee is for that set. Compared in float64, as the loss
        curves were (a float32 comparison would round λ̂ to float32 first). The one place the
        threshold is applied (:meth:`apply_unsure`, ``sanet predict``, the server all call it).

        A model calibrated with ``per_class`` has a threshold per predicted class: give the
        arg-max ``mask`` to apply them (each at least λ̂); without it, λ̂ alone is applied,
        which keeps the image-level guarantee but not the per-class ones."""
        threshold = np.float64(self.unsure_threshold())
        per_class = self.calibration.class_thresholds if self.calibration else None
        if per_class is None or mask is None:
            return confidence < threshold
        table = np.asarray(per_class, np.float64)
        return confidence < table[np.minimum(mask, len(table) - 1)]

    def apply_unsure(self, mask: np.ndarray, confidence: np.ndarray) -> np.ndarray:
        """``mask`` with 255 on the :meth:`unsure_pixels` (the class thresholds applied)."""
        return np.where(self.unsure_pixels(confidence, mask), IGNORE_INDEX, mask)

    def unsure_threshold(self) -> float:
        """The calibrated confidence below which a pixel is unsure (``sanet calibrate --risk``).

        Raises:
            ValueError: the model carries no risk threshold (or ``calibrated=False``).
        """
        if self.calibration is None or self.calibration.threshold is None:
            state = (
                "calibrated=False was asked"
                if self.calibration is None and self.metadata.get(CALIBRATION_KEY)
                else "the model carries no risk threshold"
            )
            raise UsageError(
                f"Unsure pixels need a calibrated risk threshold, but {state}. Calibrate the "
                f"model with a risk level first ({calibrate_hint(0.05)}) and keep "
                f"{arg('calibrated', True)}."
            )
        return self.calibration.threshold


def working_size(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """``(height, width)`` scaled so that the long side is at most ``max_side`` (kept when it
    already is, or when ``max_side`` is None), rounded as the protocol rounds its scales."""
    long_side = max(height, width)
    if max_side is None or long_side <= max_side:
        return height, width
    return max(1, round(height * max_side / long_side)), max(1, round(width * max_side / long_side))


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of class ids, sampling at pixel centres.

    Shape: ``(h, w)`` → ``size``.
    """
    (h, w), (H, W) = mask.shape[-2:], size
    if (h, w) == (H, W):
        return mask
    rows = ((torch.arange(H, device=mask.device) + 0.5) * (h / H)).long().clamp(max=h - 1)
    cols = ((torch.arange(W, device=mask.device) + 0.5) * (w / W)).long().clamp(max=w - 1)
    return mask[rows[:, None], cols[None, :]]


def _prepare(model: nn.Module, device: torch.device, protocol: EvalProtocol | None) -> nn.Module:
    """``model`` on ``device`` in eval mode, in ``channels_last`` when the protocol says so."""
    model = model.to(device).eval()
    if protocol is not None and protocol.channels_last and not isinstance(model, OnnxModel):
        model = model.to(memory_format=torch.channels_last)
    return model


def evaluate_pairs(
    model: nn.Module,
    pairs: Iterable[tuple[Any, Any]],
    num_classes: int,
    protocol: EvalProtocol | None = None,
    device: str | torch.device = "cpu",
    on_image: Callable[[int, np.ndarray], None] | None = None,
    cm: ConfusionMatrix | None = None,
) -> ConfusionMatrix:
    """Accumulate a :class:`~sanet.metrics.ConfusionMatrix` over ``(image, mask)`` pairs: the
    one evaluation loop (``sanet eval``, validation during training, DDP shards).

    ``image`` is anything :func:`image_to_tensor` reads (uint8 ``(3, H, W)``, a path, a PIL
    image, an array) with an ``(H, W)`` mask, or a uint8 batch ``(N, 3, H, W)`` (a DataLoader's)
    with ``(N, H, W)`` masks. Images are normalised here and predicted at their full original
    size under ``protocol``; ``on_image(i, pred)`` is called after each image (progress bars,
    saving predictions; it costs a host copy of the prediction). ``cm``: add to this matrix
    (e.g. a continued evaluation's) instead of a new one.

    Returns:
        the ``ConfusionMatrix`` (call ``compute()``; under DDP ``all_reduce()`` first).
    """
    device = torch.device(device)
    model = _prepare(model, device, protocol)
    if cm is None:
        cm = ConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX, device=device)
    done = 0
    for image, mask in pairs:
        batched = isinstance(image, torch.Tensor) and image.ndim == 4
        images = image if batched else image_to_tensor(image)[None]
        masks = torch.as_tensor(mask)
        pred = predict_mask(model, normalize(images, device), protocol)  # (N, H, W)
        cm.update(pred, (masks if batched else masks[None]).to(device, non_blocking=True))
        for p in pred if on_image is not None else ():
            on_image(done, p.cpu().numpy())
            done += 1
    return cm
