"""SANet, its baselines and their building blocks; ``build_model`` picks one by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sanet._errors import suggest
from sanet.models.backbone import PRESETS, Backbone
from sanet.models.heads import FCNHead, SANetHead
from sanet.models.sa import SqueezeAttention, SqueezeExcitation
from sanet.models.sanet import FCN, SANet, SegmentationModel


def sanet(num_classes: int, backbone: str = "resnet50s", **kwargs: Any) -> SANet:
    """SANet with Squeeze-and-Attention heads (Fig. 3)."""
    return SANet(num_classes, backbone, block="sa", **kwargs)


def sanet_se(num_classes: int, backbone: str = "resnet50s", **kwargs: Any) -> SANet:
    """SANet with SE blocks in place of SA: the Table 3 ablation."""
    return SANet(num_classes, backbone, block="se", **kwargs)


def fcn(num_classes: int, backbone: str = "resnet50s", **kwargs: Any) -> FCN:
    """Dilated FCN baseline on the same backbone (Fig. 5)."""
    return FCN(num_classes, backbone, **kwargs)


_BUILDERS = {"sanet": sanet, "sanet_se": sanet_se, "fcn": fcn}


def list_models() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return sorted(_BUILDERS)


def build_model(
    name: str,
    backbone: str = "resnet50s",
    num_classes: int = 21,
    output_stride: int = 8,
    pretrained_backbone: bool | str | Path = False,
    **kwargs: Any,
) -> SegmentationModel:
    """Build a model by name: ``"sanet"``, ``"sanet_se"`` or ``"fcn"``.

    Args:
        backbone: any timm CNN with ``features_only``/``output_stride``; presets
            ``resnet50s``, ``resnet101s``, ``tf_efficientnet_b7``.
        pretrained_backbone: ``False``, ``True`` (timm download) or a local weights file.
        kwargs: model options (``gate``, ``attn_act``, ``upsample``, ``dropout`` ...).
    """
    if name not in _BUILDERS:
        raise ValueError(
            f"Unknown model {name!r}; choose one of {list_models()}.{suggest(name, _BUILDERS)}"
        )
    return _BUILDERS[name](
        num_classes,
        backbone,
        output_stride=output_stride,
        pretrained_backbone=pretrained_backbone,
        **kwargs,
    )


__all__ = [
    "FCN",
    "PRESETS",
    "Backbone",
    "FCNHead",
    "SANet",
    "SANetHead",
    "SegmentationModel",
    "SqueezeAttention",
    "SqueezeExcitation",
    "build_model",
    "fcn",
    "list_models",
    "sanet",
    "sanet_se",
]  # fmt: skip
