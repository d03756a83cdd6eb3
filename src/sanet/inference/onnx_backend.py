"""The onnxruntime backend: an exported ``.onnx`` file behind the models' forward contract.

:class:`OnnxModel` is an ``nn.Module`` whose ``forward`` runs onnxruntime, so everything that
drives a model — the protocol in ``protocol.py`` (padding, sliding window, multi-scale + flip),
:class:`~sanet.inference.Predictor`, ``evaluate`` — drives an exported file with the *same*
pre- and post-processing code: there is one implementation, and the two backends differ only in
what maps a normalised ``(N, 3, h, w)`` batch to logits.

Torch still does that glue (resize, softmax, argmax) when serving an ``.onnx`` file: ``import
sanet`` imports torch (the public API is torch models), and a second numpy copy of the protocol
would be a second implementation to keep equal. Runtimes that must not have torch use the file
on its own (docs/deploy.md: Triton, KServe); its metadata says how to prepare the input.

The file's metadata (written by ``sanet export``, read here) is a flat map of JSON strings in the
ONNX ``metadata_props``; :data:`METADATA_KEYS` lists what sanet writes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sanet.errors import NotFoundError, UsageError, arg
from sanet.models.segmentation import MIN_SIZE, check_image_batch

logger = logging.getLogger(__name__)

INPUT_NAME, OUTPUT_NAME = "image", "logits"
#: Keys of the metadata ``sanet export`` embeds (each value a JSON string).
METADATA_KEYS = (
    "sanet_format",  # 1: the version of this layout
    "class_names",  # ["background", ...], K names
    "palette",  # [[r, g, b], ...], K colours
    "mean",  # ImageNet mean of RGB in 0..1: input = (pixel / 255 - mean) / std
    "std",
    "min_size",  # 32: H and W below it must be padded (the graph does not check)
    "model",  # {"name": "sanet", "backbone": ..., "num_classes": ..., ...} constructor args
    "protocol",  # the run's whole EvalProtocol (inference.runs.run_protocol), as a dict
    "run_config",  # the run's eval section and data.base_size: run_protocol reads it back
    "validation",  # the run's best validation (mIoU, pixAcc, protocol), when known
    "parity",  # onnxruntime vs PyTorch at the checked sizes (max |Δ| of logits, argmax agreement)
    "calibration",  # `sanet calibrate`'s record (temperature, risk threshold), when calibrated
    "sanet_version",
    "torch_version",
    "opset",
    "outputs",  # the graph's outputs: ["logits"] (default), plus "mask" and "confidence" (uint8)
    "quantization",  # INT8 files: method, calibration, mIoU fp32/int8, speed-up, CPU
)


def decode_metadata(props: dict[str, str]) -> dict[str, Any]:
    """``metadata_props`` (JSON strings) → Python values; non-JSON values stay strings."""
    out: dict[str, Any] = {}
    for key, text in props.items():
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


def _session(
    path: Path, providers: list[str] | None, optimize: bool = True, threads: int | None = None
) -> Any:
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise ImportError(
            "Running an .onnx file needs onnxruntime: pip install 'sanet[export]' "
            "(or pip install onnxruntime)."
        ) from err
    if not path.is_file():
        raise NotFoundError(f"ONNX file {str(path)!r} does not exist.")
    options = ort.SessionOptions()
    if not optimize:  # only the metadata is wanted: skip graph optimisation
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads is not None:  # a fixed count (benchmarks); else onnxruntime's default
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(
            str(path), sess_options=options, providers=providers or ["CPUExecutionProvider"]
        )
    except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph types
        raise UsageError(
            f"onnxruntime cannot load {str(path)!r} ({type(err).__name__}: {err}). Expected an "
            "ONNX model written by `sanet export`; re-export it."
        ) from err


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata ``sanet export`` embedded, read through onnxruntime's
    ``custom_metadata_map`` (empty for a file from elsewhere)."""
    session = _session(Path(path), None, optimize=False)
    return decode_metadata(session.get_modelmeta().custom_metadata_map)


def providers_for(device: str | torch.device) -> list[str]:
    """onnxruntime execution providers for a torch-style device name."""
    if torch.device(device).type == "cuda":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxModel(nn.Module):
    """An exported model run by onnxruntime, with the forward contract of sanet's models.

    Args:
        path: an ``.onnx`` file written by ``sanet export``.
        providers: onnxruntime execution providers (default: CPU).
        threads: onnxruntime's intra-op threads (default: its own choice, one per core).

    Attributes:
        metadata: the embedded metadata (:data:`METADATA_KEYS`), decoded.
        path: the file.
    """

    def __init__(
        self, path: str | Path, providers: list[str] | None = None, threads: int | None = None
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.session = _session(self.path, providers, threads=threads)
        self.output_name = _logits_output(self.session, self.path)
        check_segmentation_graph(self.session, self.output_name, self.path)  # before any warning
        self.metadata = decode_metadata(self.session.get_modelmeta().custom_metadata_map)
        if "sanet_format" not in self.metadata:
            logger.warning(
                "%s carries no sanet metadata (not written by `sanet export`): class names and "
                "palette are unknown; the input is assumed to be ImageNet-normalised RGB.",
                self.path,
            )
        self.input_name = self.session.get_inputs()[0].name
        self.min_size = int(self.metadata.get("min_size", MIN_SIZE))

    @property
    def num_classes(self) -> int:
        """K, from the metadata (else the graph's static output shape)."""
        model = self.metadata.get("model") or {}
        if "num_classes" in model:
            return int(model["num_classes"])
        outputs = {o.name: o for o in self.session.get_outputs()}
        return int(outputs[self.output_name].shape[1])

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits from onnxruntime, on ``x``'s device.

        Shape: x ``(N, 3, H, W)`` float, ``H, W ≥ min_size`` → ``{"out": (N, K, H, W)}``.
        """
        check_image_batch(tuple(x.shape), self.min_size)
        batch = x.detach().to("cpu", torch.float32).contiguous().numpy()
        logits = self.session.run([self.output_name], {self.input_name: batch})[0]
        if logits.ndim != 4 or logits.shape[0] != x.shape[0] or logits.shape[2:] != x.shape[2:]:
            raise UsageError(
                f"{self.path.name} returned logits of shape {tuple(logits.shape)} for a "
                f"{tuple(x.shape)} input; expected ({x.shape[0]}, K, {x.shape[2]}, "
                f"{x.shape[3]}): logits at the input's size. {SEGMENTATION_GRAPH}."
            )
        return {"out": torch.from_numpy(logits).to(x.device)}

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}, providers={self.session.get_providers()}"


def _logits_output(session: Any, path: Path) -> str:
    """The output holding the logits: ``logits`` (files from ``sanet export``, which may add
    ``mask`` and ``confidence``), else the only or first output (files from elsewhere)."""
    names = [o.name for o in session.get_outputs()]
    if OUTPUT_NAME in names:
        return OUTPUT_NAME
    if {"mask", "confidence"} & set(names):  # exported with extra outputs but without logits
        raise UsageError(
            f"{str(path)!r} has the outputs {names} but no {OUTPUT_NAME!r}: sanet's Predictor, "
            "predict, eval and serve average probabilities over windows, scales and flips and "
            f"need the logits. Re-export with {arg('outputs', 'logits,mask')} (the mask-only "
            "file is for servers that run the graph as it is)."
        )
    return names[0]


#: What every command that runs an ``.onnx`` file expects of it (the end of its refusals).
SEGMENTATION_GRAPH = (
    "sanet runs segmentation models that take (N, 3, H, W) images of any size and return "
    "(N, K, H, W) logits: a run directory, a model/ folder, or an .onnx file from `sanet export`"
)


def check_segmentation_graph(session: Any, output_name: str, path: Path) -> None:
    """Refuse a graph whose declared shapes cannot be a segmentation model: not one input of
    shape ``(N, 3, H, W)``, an input fixed to one size, or logits of another rank than
    ``(N, K, H, W)`` (a classifier, a pooled output); :meth:`OnnxModel.forward` refuses logits
    at another size than the input's. The one check of ``predict``, ``eval``, ``serve`` and ``bench``: it runs
    when :class:`OnnxModel` loads, so each refuses such a file in one line. A shape the graph
    does not declare (``[]``) is not judged here (``sanet serve`` still runs the model once).

    Raises:
        UsageError: what the graph declares, and what sanet expects.
    """
    inputs = session.get_inputs()
    outputs = {o.name: o for o in session.get_outputs()}
    why = None
    if len(inputs) != 1:
        why = f"takes {len(inputs)} inputs {[i.name for i in inputs]}; expected one image batch"
    else:
        shape_in, shape_out = list(inputs[0].shape), list(outputs[output_name].shape)
        channels = shape_in[1] if len(shape_in) == 4 else None
        if shape_in and (len(shape_in) != 4 or (isinstance(channels, int) and channels != 3)):
            why = f"'s input {inputs[0].name!r} has shape {shape_in}; expected (N, 3, H, W)"
        elif any(isinstance(d, int) for d in shape_in[2:]):
            why = (
                f"'s input {inputs[0].name!r} is fixed to one size {shape_in}; expected any H "
                "and W (dynamic axes)"
            )
        elif shape_out and len(shape_out) != 4:
            why = (
                f"'s output {output_name!r} has shape {shape_out} (rank {len(shape_out)}); "
                "expected per-pixel logits (N, K, H, W)"
            )
    if why is not None:
        sep = "" if why.startswith("'") else " "
        raise UsageError(f"{path.name}{sep}{why}. {SEGMENTATION_GRAPH}.")
