"""A tiny DINOv2-shaped ViT registered in timm, for tests that do not need the real sizes.

``TINY_VIT`` is built by timm's own ``VisionTransformer`` (patch 14, class token, LayerScale,
64 channels, 4 blocks, 2 heads, 56 px native grid of 4×4): the ViT path of
``sanet.models.vit`` sees it as one of the ``vision_transformer`` family, by name, as it sees
``vit_small_patch14_dinov2``. ``TINY_VIT_REG`` adds two register tokens.
"""

from __future__ import annotations

from typing import Any

from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer

TINY_VIT = "vit_sanet_test_tiny_patch14"
TINY_VIT_REG = "vit_sanet_test_tiny_patch14_reg2"
_ARGS: dict[str, Any] = dict(
    img_size=56, patch_size=14, embed_dim=64, depth=4, num_heads=2, init_values=1e-5
)


def _build(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    assert not pretrained, "the tiny test ViT has no weights to download"
    kwargs = {k: v for k, v in kwargs.items() if not k.startswith(("pretrained_cfg", "cache"))}
    return VisionTransformer(**{**_ARGS, **kwargs})


def vit_sanet_test_tiny_patch14(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    return _build(pretrained, **kwargs)


def vit_sanet_test_tiny_patch14_reg2(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    return _build(pretrained, **{"reg_tokens": 2, "no_embed_class": True, **kwargs})


# registered as members of timm's vision_transformer module: the family sanet reads as a ViT
for _fn in (vit_sanet_test_tiny_patch14, vit_sanet_test_tiny_patch14_reg2):
    _fn.__module__ = "timm.models.vision_transformer"
    register_model(_fn)
