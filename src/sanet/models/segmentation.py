"""Model assembly: backbone → head → upsampled logits, plus save/load (safetensors + config).

Building a model by name (``build_model``) and loading one from a run directory or checkpoint
(``load_model``) are in ``registry.py``, which imports this module (never the reverse).

Forward contract (all models): ``model(x)`` returns a dict. In eval mode ``{"out": (N, K, H, W)}``;
SANet in train mode adds ``"mask": (N, K, H, W)`` and ``"cat": (N, K)`` for the loss (Sec. 3).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sanet._files import atomic_save_bytes, atomic_write_text, safe_safetensors_load
from sanet.errors import NotFoundError, UsageError
from sanet.models.backbone import Backbone
from sanet.models.card import write_model_card
from sanet.models.heads import FCNHead, SANetHead
from sanet.models.options import Block, ModelOptions
from sanet.models.pretrained import RECORD_KEY, BackboneWeights, make_backbone, weights_config
from sanet.models.resize import resize_bilinear

MIN_SIZE = 32  # the deepest stage is H/8 at output stride 8: below 32 px it has < 4 positions
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


class SegmentationModel(nn.Module):
    """Backbone + head with the shared forward contract and ``save_pretrained``/``from_pretrained``.

    Subclasses set ``self.backbone``, ``self.head`` and ``self.config`` (their constructor
    arguments, JSON-serialisable), so that a saved folder rebuilds the same model.
    """

    name: str = ""
    backbone: Backbone
    head: nn.Module
    config: dict[str, Any]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Shape: x ``(N, 3, H, W)`` with ``H, W ≥ 32`` → ``{"out": (N, K, H, W), ...}``."""
        check_image_batch(tuple(x.shape))
        _check_dtype_and_device(x, next(self.parameters()))
        size = x.shape[-2:]
        logits = self.head(self.backbone(x))  # at the deepest stage's resolution (H/8, W/8)
        out = {"out": _upsample(logits["dense"], size)}  # (N, K, H, W)
        if self.training and "mask" in logits:
            out["mask"] = _upsample(logits["mask"], size)  # (N, K, H, W)
            out["cat"] = logits["cat"]  # (N, K)
        return out

    @property
    def num_classes(self) -> int:
        return int(self.config["num_classes"])

    def save_pretrained(
        self, directory: str | Path, metadata: dict[str, Any] | None = None
    ) -> Path:
        """Write ``model.safetensors``, ``config.json`` (constructor arguments) and the model
        card ``README.md`` (:mod:`sanet.models.card`) atomically.

        ``metadata`` (e.g. ``{"class_names": [...]}``, and the card's records such as
        ``validation``) is stored in ``config.json`` as well.
        """
        from safetensors.torch import save

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        atomic_save_bytes(directory / WEIGHTS_NAME, save(state))
        config = {"name": self.name, **self.config, "metadata": metadata or {}}
        atomic_write_text(directory / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
        write_model_card(directory, config)
        return directory

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SegmentationModel:
        """An untrained model from stored constructor arguments (``{"name": ..., **config}``,
        as in ``config.json``); ``metadata`` is ignored and no backbone weights are downloaded.
        """
        name = config.get("name")
        if name not in MODEL_KINDS:
            raise UsageError(
                f"Stored model name {name!r} is not one of {sorted(MODEL_KINDS)}: the config "
                "was not written by sanet's save_pretrained or training checkpoints."
            )
        kind = MODEL_KINDS[name]
        if not issubclass(kind.cls, cls):
            raise TypeError(
                f"The stored config holds a {name!r} model, not a {cls.__name__}. "
                "Load it with sanet.load_model or sanet.SegmentationModel.from_pretrained."
            )
        stored = {k: v for k, v in config.items() if k in ModelOptions.names()}
        return kind.build(
            int(config["num_classes"]),
            config["backbone"],
            output_stride=int(config.get("output_stride", 8)),
            pretrained_backbone=config.get(RECORD_KEY) or False,  # its normalisation, no weights
            options=ModelOptions.from_mapping(stored, kind.options, name),
        )

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str = "cpu") -> SegmentationModel:
        """Rebuild a model saved by :meth:`save_pretrained`; outputs are bit-identical."""
        model = cls.from_config(read_pretrained_config(directory))
        state = safe_safetensors_load(Path(directory) / WEIGHTS_NAME, map_location)
        model.load_state_dict(state, strict=True)
        return model.eval()


class SANet(SegmentationModel):
    """Squeeze-and-Attention Network (Fig. 3): dilated backbone, four SA heads, fused F, and the
    mask (M), categorical (c) and dense (D) outputs. ``block="se"`` gives the SE ablation.

    ``options`` (:class:`~sanet.models.options.ModelOptions`) configure the head and its SA
    blocks; the fields the model kind uses are stored in ``config``."""

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50s",
        *,
        output_stride: int = 8,
        pretrained_backbone: BackboneWeights = False,
        block: Block = "sa",
        options: ModelOptions | None = None,
    ) -> None:
        super().__init__()
        _check_num_classes(num_classes)
        options = options or ModelOptions()
        self.name = "sanet" if block == "sa" else "sanet_se"
        self.backbone = make_backbone(backbone, output_stride, pretrained_backbone)
        self.head = SANetHead(self.backbone.channels, num_classes, block=block, options=options)
        self.config = _config(num_classes, backbone, output_stride, options, self.name)
        self.config |= weights_config(self.backbone)  # models/pretrained.py: source, norm

    @torch.no_grad()
    def attention_parts(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(attn, main)`` of each stage's SA head for an input batch (Fig. 6).

        Shape: x ``(N, 3, H, W)`` → four pairs of ``(N, C_i/4, H_i, W_i)`` tensors.
        """
        return self.head.parts(self.backbone(x))


class FCN(SegmentationModel):
    """The paper's baseline (Fig. 5): the same dilated backbone with an FCN head on stage 4."""

    name = "fcn"

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50s",
        *,
        output_stride: int = 8,
        pretrained_backbone: BackboneWeights = False,
        options: ModelOptions | None = None,
    ) -> None:
        super().__init__()
        _check_num_classes(num_classes)
        options = options or ModelOptions()
        self.backbone = make_backbone(backbone, output_stride, pretrained_backbone)
        self.head = FCNHead(self.backbone.channels, num_classes, options=options)
        self.config = _config(num_classes, backbone, output_stride, options, self.name)
        self.config |= weights_config(self.backbone)  # models/pretrained.py: source, norm


@dataclass(frozen=True)
class ModelKind:
    """One row of the table of models: what ``build_model(name)`` builds.

    Attributes:
        cls: the model class.
        block: SANet's head blocks (``"sa"`` or ``"se"``); ``None`` for models without.
        options: the :class:`ModelOptions` fields the model uses (stored in its config).
        summary: one line for ``list_models`` and docs.
    """

    cls: type[SegmentationModel]
    block: Block | None
    options: tuple[str, ...]
    summary: str

    def build(
        self,
        num_classes: int,
        backbone: str,
        *,
        output_stride: int = 8,
        pretrained_backbone: BackboneWeights = False,
        options: ModelOptions | None = None,
    ) -> SegmentationModel:
        block = {"block": self.block} if self.block else {}
        return self.cls(
            num_classes,
            backbone,
            output_stride=output_stride,
            pretrained_backbone=pretrained_backbone,
            options=options,
            **block,
        )


_SA = ("attn_act", "upsample", "attn_combine")
_SANET = ("gate", "fuse_channels", "dropout", "head_init")
#: Every model sanet builds, by name: the one table ``build_model``, ``list_models``,
#: ``from_config`` and the recipes' ``model.name`` read.
MODEL_KINDS: dict[str, ModelKind] = {
    "sanet": ModelKind(SANet, "sa", (*_SA, *_SANET), "SANet: four SA heads (Fig. 3)"),
    "sanet_se": ModelKind(SANet, "se", _SANET, "SANet with SE blocks for SA (Table 3)"),
    "fcn": ModelKind(FCN, None, ("dropout", "head_init"), "dilated FCN baseline (Fig. 5)"),
}


def _config(
    num_classes: int, backbone: str, output_stride: int, options: ModelOptions, name: str
) -> dict[str, Any]:
    """The constructor arguments a saved model is rebuilt from (``config.json``)."""
    used = MODEL_KINDS[name].options
    return {
        "num_classes": num_classes,
        "backbone": backbone,
        "output_stride": output_stride,
        **options.subset(used),
    }


def check_image_batch(shape: tuple[int, ...], min_size: int = MIN_SIZE) -> None:
    """Refuse what no model accepts, with the fix (also used by the ONNX backend, whose graph
    does not enforce the minimum size).

    Shape: ``(N, 3, H, W)`` with ``H, W ≥ min_size``.
    """
    if len(shape) != 4 or shape[1] != 3:
        raise UsageError(f"Expected a (N, 3, H, W) image batch, got shape {shape}.")
    if shape[-1] < min_size or shape[-2] < min_size:
        raise UsageError(
            f"Input {shape[-2:]} is too small: H and W must be ≥ {min_size}. "
            "Resize or pad the image (e.g. with sanet.data transforms) before the model."
        )


def read_pretrained_config(directory: str | Path) -> dict[str, Any]:
    """Read ``config.json`` of a ``save_pretrained`` folder, with a clear error if it is not one."""
    directory = Path(directory)
    cfg, weights = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not cfg.is_file() or not weights.is_file():
        raise NotFoundError(
            f"{str(directory)!r} is not a save_pretrained folder: expected {CONFIG_NAME} and "
            f"{WEIGHTS_NAME} in it. Pass the folder written by model.save_pretrained(dir) "
            "(in a training run: RUN_DIR/model)."
        )
    try:
        return json.loads(cfg.read_text())
    except json.JSONDecodeError as err:
        raise UsageError(f"{str(cfg)!r} is not valid JSON ({err}).") from err


def _check_dtype_and_device(x: torch.Tensor, weight: torch.Tensor) -> None:
    """One clear line instead of torch's internal text for an input the weights cannot take."""
    if not x.is_floating_point():
        raise UsageError(
            f"Expected a float image batch, normalised with the ImageNet mean and std, got "
            f"{x.dtype}. Convert uint8 images with sanet.inference.normalize(image)."
        )
    if x.device != weight.device:
        raise UsageError(
            f"The input is on {x.device} but the model is on {weight.device}. Move one to the "
            f"other, e.g. x.to({str(weight.device)!r})."
        )
    if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
        raise UsageError(
            f"The input is {x.dtype} but the model's weights are {weight.dtype}. Cast the input "
            f"(x.to({weight.dtype})) or run under torch.autocast."
        )


def _check_num_classes(num_classes: int) -> None:
    if not isinstance(num_classes, int) or num_classes < 1:
        raise UsageError(f"num_classes must be a positive int, got {num_classes!r}.")


def _upsample(x: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    # bilinear, align_corners=False: by matrix products where that is faster (models/resize.py)
    return resize_bilinear(x, size)
