"""Export a trained model to one self-describing ONNX file, checked against PyTorch.

The graph comes from PyTorch's own exporter (``torch.onnx.export(..., dynamo=True)``, which
needs ``onnxscript``), with dynamic batch, height and width. The file carries what a runtime
needs besides the graph as JSON strings in ``metadata_props`` (class names, palette, mean/std,
minimum size, model config, protocol, versions: :data:`~sanet.inference.onnx_backend.
METADATA_KEYS`). Before the file is written, onnxruntime runs it against the PyTorch model at the
export size and at two odd sizes — odd sizes are where ceil-mode pooling (Fig. 2c's ``APool``)
and resize-to-size (Eq. 4's ``Up``) can go wrong — and the export fails if they disagree.

Not shipped: AOTInductor packages, which gave wrong outputs at odd sizes when built from an
even-sized example (ceil-mode pooling specialised away; measured in issue 10).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sanet._files import atomic_save_bytes
from sanet.conventions import IMAGENET_MEAN, IMAGENET_STD
from sanet.errors import ExportCheckError, UsageError, arg
from sanet.exporting.outputs import add_outputs, check_outputs
from sanet.inference.confidence import CALIBRATION_KEY
from sanet.inference.onnx_backend import INPUT_NAME, OUTPUT_NAME
from sanet.inference.protocol import EvalProtocol
from sanet.models.segmentation import MIN_SIZE, SegmentationModel
from sanet.version import __version__

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 20
#: PyTorch's exporter writes opset 18 (its torchlib) and newer; a lower opset needs a version
#: conversion that may fail and leave the file at 18 (measured: opset 7 asked for gave an opset-18
#: file). Above the installed onnx package's newest opset it fails the same way (29 gave 18).
MIN_OPSET = 18


@dataclass(frozen=True)
class ParityTolerance:
    """When onnxruntime and PyTorch count as equal.

    Attributes:
        atol, rtol: ``max|Δ logits| ≤ atol + rtol · max|logits|`` at every checked size.
        argmax: least fraction of pixels whose arg-max class agrees.
    """

    atol: float = 1e-4
    rtol: float = 1e-4
    argmax: float = 0.999


def max_opset() -> int:
    """The newest opset the installed ``onnx`` package knows (28 for onnx 1.23)."""
    import onnx

    return int(onnx.defs.onnx_opset_version())


def check_export_options(
    out: str | Path, size: int, opset: int, tolerance: ParityTolerance
) -> None:
    """Refuse, before any work, options the export would fail on (or silently not honour).

    Raises:
        ValueError: ``out`` not an ``.onnx`` name, ``size`` below the models' minimum,
            ``opset`` outside ``MIN_OPSET..max_opset()``, a negative or NaN tolerance.
    """
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise UsageError(
            f"{arg('out')} must name an .onnx file, got {str(out)!r}; e.g. "
            f"{arg('out', 'model.onnx')}"
        )
    if size < MIN_SIZE:
        raise UsageError(
            f"{arg('size', size)} is below {MIN_SIZE}, the smallest image side sanet's models "
            f"take (the graph declares H, W ≥ {MIN_SIZE} and is traced at {arg('size')}). Fix: "
            f"{arg('size', MIN_SIZE)} or more (default: the run's data.crop_size)."
        )
    top = max_opset()
    if not MIN_OPSET <= opset <= top:
        raise UsageError(
            f"{arg('opset', opset)} is outside {MIN_OPSET}..{top}: PyTorch's exporter writes "
            f"opset {MIN_OPSET} and newer, up to the newest the installed onnx knows; another "
            f"would be left at {MIN_OPSET} in the file. Fix: {arg('opset')} {MIN_OPSET}..{top} "
            f"(default {DEFAULT_OPSET})."
        )
    for name, value in (("atol", tolerance.atol), ("rtol", tolerance.rtol)):
        if not value >= 0:  # `not ≥` also refuses NaN
            raise UsageError(
                f"{arg(name)} must be ≥ 0 (a tolerance on |Δ logits|), got {value}. Fix: e.g. "
                f"{arg(name, 1e-4)} (the default), or {skip_check()} to skip the check."
            )
    if not 0 <= tolerance.argmax <= 1:
        raise UsageError(f"the argmax agreement must lie in 0..1, got {tolerance.argmax}.")


def skip_check() -> str:
    """How the caller turns the parity check off: ``check=False`` from Python, the flag that
    does it on the command line."""
    flag = arg("check")
    return flag if flag.startswith("-") else "check=False"


def file_opset(proto: Any) -> int:
    """The default-domain (``ai.onnx``) opset a model proto imports: what runtimes see."""
    return next(int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx"))


#: Checked besides the export size: odd, non-square, one below and one above typical crops.
ODD_SIZES: tuple[tuple[int, int], ...] = ((97, 65), (333, 501))


class _Logits(nn.Module):
    """The model's ``{"out": logits}`` as a plain tensor: ONNX graphs return tensors."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image)["out"]


def build_metadata(
    model: SegmentationModel,
    metadata: Mapping[str, Any],
    protocol: EvalProtocol,
    opset: int = DEFAULT_OPSET,
    **extra: Any,
) -> dict[str, Any]:
    """What the file says about itself (:data:`~sanet.inference.onnx_backend.METADATA_KEYS`).

    Args:
        model: a sanet model (its ``name`` and ``config`` are recorded).
        metadata: the checkpoint's metadata (``class_names``, ``palette``).
        protocol: the inference protocol the export is made for.
        extra: more keys, e.g. ``run_config`` and ``validation`` from a run directory.
    """
    num_classes = int(model.config["num_classes"])
    names = metadata.get("class_names") or [f"class {i}" for i in range(num_classes)]
    palette = metadata.get("palette")
    if palette is None:
        from sanet.data.classes import voc_palette

        palette = voc_palette(num_classes)
    return {
        "sanet_format": 1,
        "class_names": list(names),
        "palette": [list(map(int, c[:3])) for c in palette[:num_classes]],
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "min_size": MIN_SIZE,
        "model": {"name": model.name, **model.config},
        "protocol": protocol.to_dict(),
        # `sanet calibrate`'s temperature and risk threshold travel with the weights
        **({CALIBRATION_KEY: metadata[CALIBRATION_KEY]} if metadata.get(CALIBRATION_KEY) else {}),
        "sanet_version": __version__,
        "torch_version": torch.__version__,
        "opset": opset,
        **extra,
    }


def to_onnx_proto(model: nn.Module, example_size: tuple[int, int], opset: int) -> Any:
    """The ``onnx.ModelProto`` of ``model`` with dynamic N, H, W (H, W ≥ 32).

    Shape: graph input ``image (N, 3, H, W)`` float32 → output ``logits (N, K, H, W)``.
    """
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it; fail with the fix)
    except ImportError as err:
        raise ImportError(
            "sanet export needs onnx, onnxscript and onnxruntime: pip install 'sanet[export]'."
        ) from err
    dims = {
        0: torch.export.Dim("batch", min=1),
        2: torch.export.Dim("height", min=MIN_SIZE),
        3: torch.export.Dim("width", min=MIN_SIZE),
    }
    wrapper = _Logits(model).eval()
    # batch 2: an example of 1 lets broadcasting (a ViT's class token) pin the batch to 1
    example = torch.randn(2, 3, *example_size)
    with warnings.catch_warnings(), _quiet("onnx_ir", "onnxscript", "torch.onnx"):
        # the exporter warns and logs about its own internals (hundreds of INFO lines per
        # optimisation pass); what matters to the user is our summary and the parity check
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"image": dims},
            opset_version=opset,
            verbose=False,
        )
    return program.model_proto


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """Raise these loggers to WARNING for the duration (restored afterwards)."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(logging.WARNING, lg.level))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def check_parity(
    model: nn.Module,
    onnx_bytes: bytes,
    sizes: Sequence[tuple[int, int]],
    tolerance: ParityTolerance | None = None,
) -> dict[str, Any]:
    """Run onnxruntime and PyTorch on the same random inputs at each size; raise
    :class:`ExportCheckError` above ``tolerance``. The first size is checked with a batch of 2
    (the batch axis is dynamic too).

    Returns:
        ``{"sizes": [{"size", "max_abs_diff", "argmax_agreement"}, ...], "tolerance": ...}``.
    """
    import onnxruntime as ort

    tolerance = tolerance or ParityTolerance()
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    rows, failures = [], []
    for i, (h, w) in enumerate(sizes):
        x = torch.randn(2 if i == 0 else 1, 3, h, w, generator=generator)
        with torch.no_grad():
            ref = model(x)["out"].float().numpy()
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        diff = float(np.abs(got - ref).max()) if got.shape == ref.shape else float("inf")
        agree = float((got.argmax(1) == ref.argmax(1)).mean()) if np.isfinite(diff) else 0.0
        rows.append({"size": [h, w], "max_abs_diff": diff, "argmax_agreement": agree})
        bound = tolerance.atol + tolerance.rtol * float(np.abs(ref).max())
        if not diff <= bound or agree < tolerance.argmax:  # `not ≤` also catches NaN
            failures.append(
                f"{h}×{w}: max |Δ logits| {diff:.3g} (allowed {bound:.3g}), argmax agreement "
                f"{agree:.4%} (required {tolerance.argmax:.1%})"
            )
    report = {"sizes": rows, "tolerance": asdict(tolerance), "onnxruntime": ort.__version__}
    if failures:
        raise ExportCheckError(
            "onnxruntime disagrees with PyTorch: " + "; ".join(failures) + ". Expected equal "
            f"outputs; try another {arg('opset')}, or export with {skip_check()} to inspect the "
            "file."
        )
    return report


def export_onnx(
    model: nn.Module,
    out: str | Path,
    metadata: Mapping[str, Any],
    example_size: tuple[int, int] = (480, 480),
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    tolerance: ParityTolerance | None = None,
    outputs: Sequence[str] = (OUTPUT_NAME,),
    temperature: float | None = None,
) -> dict[str, Any]:
    """Export ``model`` to ``out`` (one ``.onnx`` file, no external data), with ``metadata``
    embedded and, when ``check``, the parity report added as ``metadata["parity"]``.

    ``outputs`` adds ``mask`` and ``confidence`` (calibration ``temperature``) after the logits
    (:mod:`sanet.exporting.outputs`); the check then covers them too.

    When the check fails nothing is written at ``out``: the unchecked graph goes to
    ``<out stem>.unchecked.onnx`` for inspection and :class:`ExportCheckError` is raised.

    Returns:
        the metadata written (with ``parity``).
    """
    out = Path(out)
    tolerance = tolerance or ParityTolerance()
    check_export_options(out, min(example_size), opset, tolerance)
    model = model.eval()
    proto = to_onnx_proto(model, example_size, opset)
    written = file_opset(proto)
    if written != opset:  # the exporter's version conversion failed and kept its own opset
        raise UsageError(
            f"The exporter wrote opset {written}, not the {opset} asked for; nothing was "
            f"written. Fix: {arg('opset', written)}."
        )
    meta = {**metadata, "opset": written, "outputs": list(outputs), "parity": None}
    if check:
        sizes = [example_size, *(s for s in ODD_SIZES if s != example_size)]
        try:
            meta["parity"] = check_parity(model, proto.SerializeToString(), sizes, tolerance)
        except ExportCheckError:
            unchecked = out.with_name(f"{out.stem}.unchecked.onnx")
            _write(proto, meta, unchecked)
            logger.error("The unchecked export is at %s", unchecked)
            raise
        worst = max(r["max_abs_diff"] for r in meta["parity"]["sizes"])
        logger.debug("onnxruntime matches PyTorch at %s (max |Δ logits| %.2g)", sizes, worst)
    if list(outputs) != [OUTPUT_NAME]:
        proto = add_outputs(proto, outputs, temperature)
        if check:
            rows = check_outputs(
                proto.SerializeToString(), _torch_logits(model), sizes, outputs, temperature
            )
            meta["parity"] = {**meta["parity"], "outputs": rows, "outputs_reference": "PyTorch"}
    _write(proto, meta, out)
    return meta


def _torch_logits(model: nn.Module) -> Any:
    def logits(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x))["out"].float().numpy()

    return logits


#: what the file's doc_string says about each output it has (``outputs`` chooses them)
OUTPUT_DOCS = {
    "logits": "'logits' float32 (N, K, H, W), softmax over K gives class probabilities",
    "mask": "'mask' uint8 (N, H, W), the arg-max class ids",
    "confidence": "'confidence' uint8 (N, H, W), round(255 x the largest calibrated probability)",
}


def _write(proto: Any, metadata: Mapping[str, Any], path: Path) -> None:
    import onnx

    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {k: json.dumps(v) for k, v in metadata.items()})
    described = [OUTPUT_DOCS.get(o.name, f"'{o.name}'") for o in proto.graph.output]
    proto.doc_string = (
        "sanet segmentation model. Input 'image': float32 (N, 3, H, W) RGB, "
        "(pixel / 255 - mean) / std, H and W >= min_size. Outputs: "
        + "; ".join(described)
        + ". See metadata_props."
    )
    data = proto.SerializeToString()
    atomic_save_bytes(path, data)
    logger.debug("Wrote %s (%.1f MB)", path, os.path.getsize(path) / 1e6)


def write_onnx(proto: Any, metadata: Mapping[str, Any], path: str | Path) -> None:
    """Write ``proto`` with ``metadata`` (JSON strings in ``metadata_props``) atomically."""
    _write(proto, metadata, Path(path))
