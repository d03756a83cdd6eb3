"""``sanet.export``: one self-describing ONNX file of a checkpoint, checked against PyTorch, and
optionally INT8 quantized and gated on the mIoU it loses (``sanet export``; docs/deploy.md).

The file embeds the run's whole protocol (:func:`~sanet.inference.runs.run_protocol`) and the
part of its config that protocol is read from, so ``Predictor("model.onnx")`` predicts as
``Predictor(run)`` does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sanet._files import ensure_new_file
from sanet.api.common import check_classes, open_dataset, run_data_options
from sanet.errors import UsageError, arg
from sanet.inference.confidence import CALIBRATION_KEY
from sanet.inference.protocol import EvalProtocol
from sanet.inference.runs import embedded_run_config, run_config, run_protocol
from sanet.rundir import RunDir

logger = logging.getLogger(__name__)

DEFAULT_SIZE = 480  # the export size without a run's data.crop_size
DEFAULT_CALIB_IMAGES, DEFAULT_EVAL_IMAGES = 32, 100
_INT8_ONLY = ("calib_data", "eval_data", "calib_images", "eval_images", "max_miou_drop")


@dataclass
class ExportResult:
    """What :func:`export` wrote.

    Attributes:
        path: the ``.onnx`` file.
        size_bytes: its size.
        opset: the ONNX opset the graph imports.
        class_names: the classes the file predicts.
        outputs: the graph's outputs (``("logits",)``, with ``"mask"``, ``"confidence"``).
        protocol: the protocol embedded in the file (the run's own).
        parity: onnxruntime against PyTorch per checked size (``size``, ``max_abs_diff``,
            ``argmax_agreement``); empty when the check was off.
        quantization: the INT8 record (method, scheme, calibration, mIoU fp32/int8 and drop,
            speed-up, CPU); ``None`` for an fp32 file.
        metadata: everything the file's ``metadata_props`` hold.
    """

    path: Path
    size_bytes: int
    opset: int
    class_names: list[str]
    outputs: tuple[str, ...]
    protocol: EvalProtocol
    parity: list[dict[str, Any]] = field(default_factory=list)
    quantization: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Int8Request:
    """The INT8 arguments of :func:`export`, checked."""

    calib_data: str
    calib_split: str
    eval_data: str
    eval_split: str
    calib_images: int
    eval_images: int
    max_drop: float


@dataclass(frozen=True)
class _Plan:
    """The arguments of :func:`export`, checked; ``datasets``: the INT8 images (calibration,
    evaluation)."""

    checkpoint: str | Path
    out: Path
    size: int
    opset: int
    check: bool
    tolerance: Any
    outputs: tuple[str, ...]
    int8: _Int8Request | None = None
    datasets: tuple[Any, Any] | None = None


def export(
    checkpoint: str | Path,
    out: str | Path,
    *,
    size: int | None = None,
    opset: int | None = None,
    check: bool = True,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    outputs: str | Sequence[str] = ("logits",),
    int8: bool = False,
    calib_data: str | None = None,
    calib_split: str = "train",
    calib_images: int | None = None,
    eval_data: str | None = None,
    eval_split: str = "val",
    eval_images: int | None = None,
    max_miou_drop: float | None = None,
    overwrite: bool = False,
) -> ExportResult:
    """Export ``checkpoint`` to one ``.onnx`` file with dynamic batch, height and width.

    Every argument and ``out`` are checked before the model loads. The file embeds the class
    names, palette, normalisation, the run's whole protocol and its ``eval`` config (docs/
    deploy.md lists the metadata). With ``check``, onnxruntime runs the graph against PyTorch
    at the export size and two odd sizes, and nothing is written when they disagree.

    Args:
        checkpoint: a run directory, a ``save_pretrained`` folder or a ``.pt`` checkpoint.
        out: the ``.onnx`` file to write (refused when it exists, unless ``overwrite``).
        size: the square size the graph is traced and checked at (default: the run's
            ``data.crop_size``, else 480; at least 32).
        opset: the ONNX opset (default 20; 18 up to the newest the installed onnx knows).
        check: compare onnxruntime with PyTorch (``max|Δ logits| ≤ atol + rtol·max|logits|``
            and 99.9 % of arg-max classes equal).
        outputs: graph outputs, among ``logits``, ``mask`` (uint8 arg-max) and ``confidence``
            (uint8, 255 × calibrated top probability: needs a calibrated model).
        int8: write a QDQ INT8 file, calibrated on ``calib_images`` (32) images of
            ``calib_split`` of ``calib_data`` (``"KIND:ROOT"``) and written only when its mIoU
            on ``eval_images`` (100) images of ``eval_split`` of ``eval_data`` (default
            ``calib_data``) is within ``max_miou_drop`` (0.01) of the fp32 graph's. When a
            data kind is the run's own dataset, the run's ``data.options`` apply.

    Returns:
        an :class:`ExportResult`.

    Raises:
        sanet.errors.ExportCheckError: onnxruntime disagrees with PyTorch (nothing written;
            the graph is kept as ``<out stem>.unchecked.onnx``).
        sanet.errors.Int8Refused: the INT8 graph lost more than ``max_miou_drop``.
    """
    return _export(_plan(dict(locals())))


def _plan(given: dict[str, Any]) -> _Plan:
    """Check every argument of :func:`export` (``given`` by name) and ``out``, and open the INT8
    datasets: a mistake fails before the model loads."""
    from sanet.exporting.export import DEFAULT_OPSET, ParityTolerance, check_export_options
    from sanet.exporting.outputs import parse_outputs

    checkpoint, out, size = given["checkpoint"], Path(given["out"]), given["size"]
    if str(checkpoint).lower().endswith(".onnx"):
        raise UsageError(
            f"{str(checkpoint)!r} is already an ONNX file; export a run or its model/ folder."
        )
    if size is None:
        size = int((run_config(checkpoint).get("data") or {}).get("crop_size") or DEFAULT_SIZE)
    opset = DEFAULT_OPSET if given["opset"] is None else given["opset"]
    tolerance = ParityTolerance(atol=given["atol"], rtol=given["rtol"])
    check_export_options(out, size, opset, tolerance)
    outputs = parse_outputs(given["outputs"])
    request = _check_int8(given["int8"], given)
    ensure_new_file(out, arg("out"), given["overwrite"], "model.onnx")
    datasets = _open_int8_data(request, checkpoint) if request else None
    return _Plan(
        checkpoint, out, size, opset, given["check"], tolerance, outputs, request, datasets
    )


def _export(plan: _Plan) -> ExportResult:
    """Load the model, build the metadata and write the (fp32 or INT8) file."""
    from sanet.exporting.export import build_metadata, export_onnx
    from sanet.exporting.outputs import check_request
    from sanet.models import registry

    model, meta = registry.load_model(plan.checkpoint, map_location="cpu")
    temperature = (meta.get(CALIBRATION_KEY) or {}).get("temperature")  # `sanet calibrate`'s
    check_request(plan.outputs, model.num_classes, temperature)
    # one meaning of a run: the file carries the run's whole protocol and the config it is read
    # from, so Predictor(file) decides the same protocol as Predictor(run) (inference/runs.py)
    protocol = run_protocol(plan.checkpoint)
    extras = _run_extras(plan.checkpoint)
    metadata = build_metadata(model, meta, protocol, plan.opset, **extras)
    if plan.int8 is not None:
        written = _export_int8(model, plan, metadata, protocol, temperature)
    else:
        written = export_onnx(
            model,
            plan.out,
            metadata,
            example_size=(plan.size, plan.size),
            opset=plan.opset,
            check=plan.check,
            tolerance=plan.tolerance,
            outputs=plan.outputs,
            temperature=temperature,
        )
    parity = written.get("parity") or {}
    return ExportResult(
        path=plan.out,
        size_bytes=plan.out.stat().st_size,
        opset=int(written["opset"]),
        class_names=list(written["class_names"]),
        outputs=tuple(written["outputs"]),
        protocol=protocol,
        parity=list(parity.get("sizes") or []),
        quantization=written.get("quantization"),
        metadata=written,
    )


def _run_extras(checkpoint: str | Path) -> dict[str, Any]:
    """What a run adds to the metadata: the config its protocol is read from
    (:func:`~sanet.inference.runs.embedded_run_config`) and its best validation."""
    extras: dict[str, Any] = {}
    embedded = embedded_run_config(checkpoint)
    if embedded:
        extras["run_config"] = embedded
    run = RunDir.containing(checkpoint)
    if run is not None and run.summary.is_file():
        s = json.loads(run.summary.read_text())
        extras["validation"] = {k: s.get(k) for k in ("val_mIoU", "val_pixAcc", "protocol")}
    return extras


# ---------------------------------------------------------------------------------------------
# INT8
# ---------------------------------------------------------------------------------------------


def _check_int8(int8: bool, given: dict[str, Any]) -> _Int8Request | None:
    """Refuse contradictory or impossible INT8 arguments (``given``: the INT8 parameters of
    :func:`export` by name) before any work."""
    from sanet.exporting.quantize import DEFAULT_MAX_DROP

    if not int8:
        named = [arg(n) for n in _INT8_ONLY if given[n] is not None]
        if named:
            switch = arg("int8", True)
            raise UsageError(f"{', '.join(named)} only apply with {switch}; add {switch}.")
        return None
    calib_data, drop = given["calib_data"], given["max_miou_drop"]
    if not calib_data:
        raise UsageError(
            f"{arg('int8', True)} needs {arg('calib_data')} KIND:ROOT: images to calibrate on, "
            f"prepared as inference prepares them (e.g. {arg('calib_data', 'voc:data/VOC2012')})."
        )
    for name in ("calib_images", "eval_images"):
        if given[name] is not None and given[name] < 1:
            raise UsageError(f"{arg(name)} must be at least 1, got {given[name]}.")
    if drop is not None and not -1.0 <= drop <= 1.0:  # `not` also refuses NaN
        raise UsageError(
            f"{arg('max_miou_drop')} must be an mIoU difference between -1 and 1, got {drop} "
            f"(e.g. {arg('max_miou_drop', 0.01)}: one point)."
        )
    eval_data = given["eval_data"] or calib_data
    if (eval_data, given["eval_split"]) == (calib_data, given["calib_split"]):
        raise UsageError(
            f"The gate would evaluate on the calibration images ({calib_data} split "
            f"{given['calib_split']!r}); expected unseen images. Choose another "
            f"{arg('eval_split')} or {arg('calib_split')}."
        )
    return _Int8Request(
        calib_data=calib_data,
        calib_split=given["calib_split"],
        eval_data=eval_data,
        eval_split=given["eval_split"],
        calib_images=given["calib_images"] or DEFAULT_CALIB_IMAGES,
        eval_images=given["eval_images"] or DEFAULT_EVAL_IMAGES,
        max_drop=DEFAULT_MAX_DROP if drop is None else drop,
    )


def _open_int8_data(request: _Int8Request, checkpoint: str | Path) -> tuple[Any, Any]:
    """The calibration and evaluation datasets (before the model loads: a bad spec fails now)."""
    calib = _open_split(request.calib_data, request.calib_split, "calib_data", checkpoint)
    evals = _open_split(request.eval_data, request.eval_split, "eval_data", checkpoint)
    return calib, evals


def _open_split(spec: str, split: str, name: str, checkpoint: str | Path) -> Any:
    """The dataset of ``spec`` and ``split``; a run's ``data.options`` apply when ``spec`` is
    the run's dataset kind (the demo's synthetic scenes at their size and seed)."""
    from sanet.data import parse_data_spec

    parse_data_spec(spec, name)  # a bad spec is refused naming `name`
    options = run_data_options(spec, checkpoint)
    if options:
        logger.info("%s: the run's data.options %s", arg(name), options)
    dataset = open_dataset(spec, split, options)
    if len(dataset) == 0:
        raise UsageError(f"{arg(name)} {spec} split {split!r} has no images.")
    return dataset


def _spread(total: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``range(total)`` (all of them when fewer)."""
    if count >= total:
        return list(range(total))
    return sorted({round(i * (total - 1) / max(count - 1, 1)) for i in range(count)})


def _export_int8(
    model: Any,
    plan: _Plan,
    metadata: dict[str, Any],
    protocol: EvalProtocol,
    temperature: float | None,
) -> dict[str, Any]:
    """Take the calibration and evaluation images and run :func:`~sanet.exporting.quantize.
    export_int8`."""
    from sanet.exporting.export import ODD_SIZES
    from sanet.exporting.quantize import Int8Data, export_int8

    request, datasets = plan.int8, plan.datasets
    assert request is not None and datasets is not None  # _plan opened them with the request
    calib, evals = datasets
    for dataset in (calib, evals):
        check_classes(model, dataset, plan.checkpoint)
    data = Int8Data(
        calibration=[calib[i][0] for i in _spread(len(calib), request.calib_images)],
        evaluation=[evals[i] for i in _spread(len(evals), request.eval_images)],
        calibration_source={"data": request.calib_data, "split": request.calib_split},
        evaluation_source={"data": request.eval_data, "split": request.eval_split},
        max_drop=request.max_drop,
    )
    # The gate compares the int8 graph with the fp32 graph it came from, not the run with its
    # paper numbers: single scale at the run's window shows what quantization costs on the
    # windows the network sees, at 1/(scales × flips) of the forward passes of the run's
    # protocol (both graphs, on a CPU). The file still embeds the run's whole protocol.
    gate = EvalProtocol(crop_size=protocol.crop_size, stride=protocol.stride)
    example = (plan.size, plan.size)
    return export_int8(
        model,
        plan.out,
        metadata,
        data,
        gate,
        example_size=example,
        opset=plan.opset,
        parity_sizes=[example, *(s for s in ODD_SIZES if s != example)],
        check=plan.check,
        outputs=plan.outputs,
        temperature=temperature,
    )
