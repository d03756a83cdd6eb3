"""timm backbone wrapper and the stage contract the heads rely on.

Stage contract: ``Backbone(x)`` returns a list of four feature maps, one per stage, from shallow
to deep. For ResNets at ``output_stride=8`` their strides are ``[4, 8, 8, 8]`` (stages 3 and 4
are dilated, as in the paper's dilated FCN/SANet); at ``output_stride=16`` ``[4, 8, 16, 16]``.
``Backbone.channels`` and ``Backbone.reductions`` give the channels and strides of each stage.
"""

from __future__ import annotations

import logging
from pathlib import Path

import timm
import torch
from torch import nn

from sanet._files import safe_safetensors_load, safe_torch_load
from sanet.errors import NotFoundError, UsageError, suggest
from sanet.models.vit import (
    VIT_EXAMPLES,
    SimpleFeaturePyramid,
    create_vit,
    is_vit,
    layer_groups,
    vit_blocks,
)

logger = logging.getLogger(__name__)

#: Backbones the paper used (Table 2). ``resnet*s`` are timm's deep-stem ResNets (gluon "v1s"),
#: the layout of the paper's code base (PyTorch-Encoding).
PRESETS: tuple[str, ...] = ("resnet50s", "resnet101s", "tf_efficientnet_b7")

# Keys a classification checkpoint carries that a features-only backbone does not need.
# (a ViT's: its head and what follows its last block, final norms and attention pooling, and
# DINOv2's masked-image-modelling token; dropped only where the model has no such key).
_CLASSIFIER_PREFIXES = (
    *("fc.", "classifier.", "head.", "conv_head.", "bn2.", "global_pool."),
    *("norm.", "fc_norm.", "attn_pool.", "mask_token"),
)
# Prefixes training frameworks wrap around a backbone's keys.
_WRAPPER_PREFIXES = ("module.", "backbone.", "model.", "encoder.")


class Backbone(nn.Module):
    """A timm network that returns four stages: a CNN created with ``features_only=True``, or a
    ViT read at four blocks through a simple feature pyramid (:mod:`sanet.models.vit`).

    Args:
        name: a timm CNN that supports ``features_only`` and ``output_stride``, or a ViT of the
            families in :data:`~sanet.models.vit.VIT_MODULES` (DINOv2, DeiT III, EVA-02).
        output_stride: 8 (the paper) or 16 (cheaper); 32 gives a ViT ViTDet's own pyramid.
        pretrained: ``False``; ``True`` for timm's own download; or a path to a local
            ``.safetensors`` / ``.pth`` state dict (loads with no network access).

    Attributes:
        body: the pretrained timm network (what ``freeze`` freezes and the backbone LR trains).
        pyramid: a ViT's :class:`~sanet.models.vit.SimpleFeaturePyramid` (new layers, trained
            with the heads); ``None`` for a CNN.
        patch_size: a ViT's patch size; ``None`` for a CNN.

    Shape:
        - x: ``(N, 3, H, W)``
        - output: four tensors ``(N, channels[i], ⌈H/reductions[i]⌉, ⌈W/reductions[i]⌉)``.
    """

    def __init__(
        self, name: str, output_stride: int = 8, pretrained: bool | str | Path = False
    ) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise UsageError(
                f"output_stride must be 8, 16 or 32, got {output_stride}. "
                "The paper uses 8; 16 trades accuracy for speed."
            )
        if not timm.is_model(name):
            raise UsageError(
                f"Unknown backbone {name!r}: timm has no such model.{suggest(name, timm.list_models())}"
                f" The paper's presets are {', '.join(PRESETS)}; ViTs: {', '.join(VIT_EXAMPLES)}."
            )
        self.name, self.output_stride, self.frozen = name, output_stride, False
        self.pyramid: SimpleFeaturePyramid | None = None
        self.patch_size: int | None = None
        if is_vit(name):
            self.body = create_vit(name, pretrained is True)
            self.patch_size = int(self.body.patch_embed.patch_size[0])
            self.pyramid = SimpleFeaturePyramid(self.body.embed_dim, self.patch_size, output_stride)
            self.channels: list[int] = list(self.pyramid.channels)
            self.reductions: list[float] = list(self.pyramid.reductions)
        else:
            self.body = _create_cnn(name, output_stride, pretrained is True)
            self.channels = list(self.body.feature_info.channels())
            self.reductions = list(self.body.feature_info.reduction())
        if len(self.channels) != 4:
            raise UsageError(
                f"Backbone {name!r} exposes {len(self.channels)} stages; SANet needs 4."
            )
        if isinstance(pretrained, (str, Path)):
            load_backbone_weights(self.body, pretrained, name)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.pyramid is None:
            return self.body(x)
        return self.pyramid(vit_blocks(self.body, x), (x.shape[-2], x.shape[-1]))

    def freeze(self) -> Backbone:
        """Freeze :attr:`body`: no gradients, and kept in eval mode (BatchNorm statistics and
        dropout too) when the model trains; a ViT's pyramid still learns."""
        self.body.requires_grad_(False)
        self.frozen = True
        return self.train(self.training)

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        if self.frozen:
            self.body.eval()
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing in :attr:`body` (timm's: a ViT's blocks, a CNN's stages):
        activations are recomputed in the backward pass instead of kept."""
        self.body.set_grad_checkpointing(enable)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """:attr:`body`'s parameters from the input up, for layer-wise LR decay (a ViT's
        embeddings, blocks, rest: :func:`~sanet.models.vit.layer_groups`)."""
        if self.pyramid is None:
            raise UsageError(
                f"Layer-wise LR decay applies to ViT backbones (their blocks); {self.name!r} is "
                "a CNN. Fix: train.layer_decay=1 (off), or a ViT backbone."
            )
        return layer_groups(self.body)


def _create_cnn(name: str, output_stride: int, pretrained: bool) -> nn.Module:
    try:
        return timm.create_model(
            name,
            features_only=True,
            out_indices=4,  # an int means "the last four levels": the four stages
            output_stride=output_stride,
            pretrained=pretrained,
        )
    except (TypeError, RuntimeError, AssertionError) as err:
        raise UsageError(
            f"Backbone {name!r} is neither a timm CNN that builds with features_only=True and "
            f"output_stride={output_stride} ({err}) nor a ViT of the families sanet reads "
            f"through forward_intermediates (DINOv2, DeiT III, EVA-02). Fix: pick a CNN such as "
            f"{', '.join(PRESETS)} or resnet18d, or a ViT such as {', '.join(VIT_EXAMPLES)}."
        ) from err


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file, never unpickling objects."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(
            f"Backbone weights file {str(path)!r} does not exist. Pass an existing .safetensors "
            "or .pth state-dict file, True (download through timm), or False."
        )
    fix = "save it with safetensors.torch.save_file or torch.save(model.state_dict(), path)"
    if path.suffix == ".safetensors":
        return safe_safetensors_load(path, fix=fix)
    obj = safe_torch_load(path, fix=fix)
    for key in ("state_dict", "model", "model_state"):  # common checkpoint wrappers
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UsageError(f"{str(path)!r} does not hold a flat dict of tensors (a state dict).")
    return obj


def load_backbone_weights(body: nn.Module, path: str | Path, name: str = "") -> None:
    """Load a local weights file into a features-only timm model.

    Classifier keys (``fc.*`` ...) are dropped silently; wrapper prefixes (``module.``,
    ``backbone.``) are stripped. Missing backbone keys are an error: the file is for another
    architecture. Other unexpected keys are logged. ``name`` (the timm model) goes in the fix.
    """
    state = read_state_dict(path)
    own = body.state_dict()
    for prefix in _WRAPPER_PREFIXES:
        if state and own and not (state.keys() & own.keys()):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith(_CLASSIFIER_PREFIXES) or k in own}
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    model = repr(name) if name else "the backbone"
    fix = (
        f"Fix: pass the weights of {model} (timm's model.safetensors of that name), or set "
        "the backbone to the architecture the file was saved from."
    )
    if missing:
        raise UsageError(
            f"Backbone weights {str(path)!r} lack {len(missing)} of the model's "
            f"{len(own)} tensors (first: {missing[:5]}; unexpected keys in the file: "
            f"{unexpected[:5]}): the file is for another architecture than {model}. {fix}"
        )
    shapes = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if shapes:
        k = shapes[0]
        raise UsageError(
            f"Backbone weights {str(path)!r} have {len(shapes)} tensors of the wrong shape, "
            f"e.g. {k!r}: file {tuple(state[k].shape)}, model {tuple(own[k].shape)}: another "
            f"size of the architecture than {model}. {fix}"
        )
    if unexpected:
        logger.warning(
            "Ignoring %d unexpected keys in %s: %s", len(unexpected), path, unexpected[:5]
        )
    body.load_state_dict({k: state[k] for k in own}, strict=True)
    logger.info("Loaded backbone weights from %s (%d tensors)", path, len(own))
