"""SANet, its baselines and their building blocks; ``build_model`` picks one by name.

Floors inside this package (each imports only those before it; docs/architecture.md): ``options``
(ModelOptions), ``sa`` (SA and SE blocks), ``resize`` (exact bilinear resizing), ``vit``
(foundation ViTs through a simple feature pyramid) → ``backbone`` → ``heads`` →
``segmentation`` (model assembly, ``MODEL_KINDS``, save/load) → ``registry`` (``build_model``,
``load_model``).
"""

from __future__ import annotations

from sanet.models.backbone import PRESETS, Backbone
from sanet.models.heads import FCNHead, SANetHead
from sanet.models.options import ModelOptions
from sanet.models.registry import build_model, fcn, list_models, load_model, sanet, sanet_se
from sanet.models.sa import SqueezeAttention, SqueezeExcitation
from sanet.models.segmentation import FCN, MODEL_KINDS, SANet, SegmentationModel
from sanet.models.vit import SimpleFeaturePyramid, is_vit

__all__ = [
    "FCN",
    "MODEL_KINDS",
    "PRESETS",
    "Backbone",
    "FCNHead",
    "ModelOptions",
    "SANet",
    "SANetHead",
    "SegmentationModel",
    "SimpleFeaturePyramid",
    "SqueezeAttention",
    "SqueezeExcitation",
    "build_model",
    "fcn",
    "is_vit",
    "list_models",
    "load_model",
    "sanet",
    "sanet_se",
]
