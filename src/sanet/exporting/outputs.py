"""Outputs a server can use: a uint8 ``mask`` and a uint8 ``confidence`` added to the graph.

An exported file returns float ``logits (N, K, H, W)``: a server that only wants the mask ships
``4·K`` bytes per pixel and computes the arg-max itself (Triton has no segmentation arg-max).
:func:`add_outputs` appends ONNX nodes after the logits:

- ``mask (N, H, W)`` uint8: ``ArgMax`` over K (the first of tied classes, as numpy and torch);
- ``confidence (N, H, W)`` uint8: ``round(255 · max_k softmax(logits / T)_k)`` with the
  temperature ``T`` of ``sanet calibrate`` — only for a calibrated model: an uncalibrated
  softmax is not a probability anyone should act on.

``logits`` stays the first output when asked for (``sanet``'s own backend reads it); without it
the file is for other runtimes only. :func:`check_outputs` compares every added output with a
reference computed in numpy from reference logits (PyTorch's, or the file's own).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from sanet.errors import OutputCheckError, UsageError, arg
from sanet.inference.onnx_backend import OUTPUT_NAME

MASK_NAME, CONFIDENCE_NAME = "mask", "confidence"
OUTPUTS = (OUTPUT_NAME, MASK_NAME, CONFIDENCE_NAME)
MAX_MASK_CLASSES = 256  # class ids 0..255 fit a uint8


def parse_outputs(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"logits,mask"`` (or ``["logits", "mask"]``) → ``("logits", "mask")`` in the file's
    order (logits, mask, confidence); a clear error for an unknown, repeated or empty list."""
    given = text.split(",") if isinstance(text, str) else list(text)
    names = [str(n).strip() for n in given if str(n).strip()]
    unknown = [n for n in names if n not in OUTPUTS]
    if not names or unknown or len(set(names)) != len(names):
        raise UsageError(
            f"{arg('outputs')} {text!r}: expected a comma-separated subset of "
            f"{', '.join(OUTPUTS)} without repeats, e.g. {arg('outputs', 'logits,mask')}."
        )
    return tuple(n for n in OUTPUTS if n in names)


def check_request(outputs: Sequence[str], num_classes: int, temperature: float | None) -> None:
    """Refuse outputs the model cannot give, before any export work."""
    if MASK_NAME in outputs and num_classes > MAX_MASK_CLASSES:
        raise UsageError(
            f"The mask output ({arg('outputs')}) stores class ids as uint8, but the model has "
            f"{num_classes} classes (at most {MAX_MASK_CLASSES}). Export the logits and take the "
            "arg-max yourself."
        )
    if CONFIDENCE_NAME in outputs and temperature is None:
        raise UsageError(
            f"The confidence output ({arg('outputs')}) needs a calibrated model (a temperature "
            "in its config.json metadata['calibration']): an uncalibrated softmax is not a "
            "probability. Run `sanet calibrate` on the model first, or drop confidence from "
            f"{arg('outputs')}."
        )
    if temperature is not None and not temperature > 0:
        raise UsageError(f"The model's calibration temperature must be > 0, got {temperature}.")


def add_outputs(proto: Any, outputs: Sequence[str], temperature: float | None = None) -> Any:
    """``proto`` (one ``logits`` output) with ``outputs`` as its graph outputs, in place.

    Shape: logits ``(N, K, H, W)`` float32 → mask, confidence ``(N, H, W)`` uint8.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    if [o.name for o in graph.output] != [OUTPUT_NAME]:
        raise UsageError(f"Expected a graph with one {OUTPUT_NAME!r} output, got {graph.output}.")
    logits = graph.output[0]
    dims = [d.dim_param or d.dim_value for d in logits.type.tensor_type.shape.dim]
    pixel = [dims[0], *dims[2:]] if len(dims) == 4 else ["N", "H", "W"]
    new_outputs = [logits] if OUTPUT_NAME in outputs else []
    if MASK_NAME in outputs:
        graph.node.extend(
            [
                helper.make_node("ArgMax", [OUTPUT_NAME], ["sanet_argmax"], axis=1, keepdims=0),
                helper.make_node("Cast", ["sanet_argmax"], [MASK_NAME], to=TensorProto.UINT8),
            ]
        )
        new_outputs.append(helper.make_tensor_value_info(MASK_NAME, TensorProto.UINT8, pixel))
    if CONFIDENCE_NAME in outputs:
        if temperature is None:
            raise UsageError("The confidence output needs the calibration temperature.")
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.array(temperature, np.float32), "sanet_temperature"),
                numpy_helper.from_array(np.array(255.0, np.float32), "sanet_255"),
                numpy_helper.from_array(np.array([1], np.int64), "sanet_axis_k"),
            ]
        )
        graph.node.extend(
            [
                helper.make_node("Div", [OUTPUT_NAME, "sanet_temperature"], ["sanet_scaled"]),
                helper.make_node("Softmax", ["sanet_scaled"], ["sanet_probs"], axis=1),
                _reduce_max("sanet_probs", "sanet_top", _opset(proto)),
                helper.make_node("Mul", ["sanet_top", "sanet_255"], ["sanet_top255"]),
                helper.make_node("Round", ["sanet_top255"], ["sanet_rounded"]),  # half to even
                helper.make_node(
                    "Cast", ["sanet_rounded"], [CONFIDENCE_NAME], to=TensorProto.UINT8
                ),
            ]
        )
        new_outputs.append(helper.make_tensor_value_info(CONFIDENCE_NAME, TensorProto.UINT8, pixel))
    del graph.output[:]
    graph.output.extend(new_outputs)
    return proto


def _opset(proto: Any) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _reduce_max(source: str, target: str, opset: int) -> Any:
    from onnx import helper

    if opset >= 18:  # the axes became an input in opset 18
        return helper.make_node("ReduceMax", [source, "sanet_axis_k"], [target], keepdims=0)
    return helper.make_node("ReduceMax", [source], [target], axes=[1], keepdims=0)


def reference_outputs(logits: np.ndarray, temperature: float | None) -> dict[str, np.ndarray]:
    """What ``mask`` and ``confidence`` should be for ``logits``, in float64 numpy."""
    ref = {MASK_NAME: logits.argmax(1).astype(np.uint8)}
    if temperature is not None:
        z = logits.astype(np.float64) / temperature
        z -= z.max(1, keepdims=True)
        top = 1.0 / np.exp(z).sum(1)  # the largest softmax probability: exp(0) / Σ exp
        ref[CONFIDENCE_NAME] = np.round(255.0 * top).astype(np.uint8)
    return ref


def check_outputs(
    onnx_bytes: bytes,
    reference: Callable[[np.ndarray], np.ndarray],
    sizes: Sequence[tuple[int, int]],
    outputs: Sequence[str],
    temperature: float | None,
    argmax: float = 0.999,
) -> list[dict[str, Any]]:
    """Run the file at each size on a random input and compare its ``mask`` and
    ``confidence`` outputs with :func:`reference_outputs` of ``reference(x)`` (logits).

    The mask must agree on at least ``argmax`` of the pixels (the reference logits may come
    from another runtime, whose rounding can flip a near-tie); confidence within 1 of 255.

    Returns:
        one row per size: ``{"size", "mask_agreement", "confidence_max_diff"}``.

    Raises:
        OutputCheckError: naming the size, the output and what was found.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    if names != list(outputs):
        raise OutputCheckError(f"The file's outputs are {names}, expected {list(outputs)}.")
    rng = np.random.default_rng(0)
    rows, failures = [], []
    for h, w in sizes:
        x = rng.standard_normal((1, 3, h, w)).astype(np.float32)
        got = dict(zip(names, session.run(None, {session.get_inputs()[0].name: x}), strict=True))
        ref = reference_outputs(reference(x), temperature)
        row: dict[str, Any] = {"size": [h, w]}
        if MASK_NAME in got:
            mask = got[MASK_NAME]
            ok = mask.dtype == np.uint8 and mask.shape == ref[MASK_NAME].shape
            row["mask_agreement"] = float((mask == ref[MASK_NAME]).mean()) if ok else 0.0
            if row["mask_agreement"] < argmax:
                failures.append(f"{h}×{w} mask agrees on {row['mask_agreement']:.4%}")
        if CONFIDENCE_NAME in got:
            conf, want = got[CONFIDENCE_NAME], ref[CONFIDENCE_NAME]
            ok = conf.dtype == np.uint8 and conf.shape == want.shape
            diff = int(np.abs(conf.astype(int) - want).max()) if ok else 255
            row["confidence_max_diff"] = diff
            if diff > 1:
                failures.append(f"{h}×{w} confidence differs by up to {diff}/255")
        rows.append(row)
    if failures:
        raise OutputCheckError(
            "The added outputs disagree with the logits: " + "; ".join(failures) + ". Expected "
            f"the mask to agree on {argmax:.1%} of pixels and confidence within 1/255."
        )
    return rows
