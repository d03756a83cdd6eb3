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

logger = logging.getLogger(__name__)

#: Backbones the paper used (Table 2). ``resnet*s`` are timm's deep-stem ResNets (gluon "v1s"),
#: the layout of the paper's code base (PyTorch-Encoding).
PRESETS: tuple[str, ...] = ("resnet50s", "resnet101s", "tf_efficientnet_b7")

# Keys a classification checkpoint carries that a features-only backbone does not need.
_CLASSIFIER_PREFIXES = ("fc.", "classifier.", "head.", "conv_head.", "bn2.", "global_pool.")
# Prefixes training frameworks wrap around a backbone's keys.
_WRAPPER_PREFIXES = ("module.", "backbone.", "model.", "encoder.")


class Backbone(nn.Module):
    """A timm CNN created with ``features_only=True`` that returns its four stages.

    Args:
        name: any timm model that supports ``features_only`` and ``output_stride``.
        output_stride: 8 (the paper) or 16 (cheaper).
        pretrained: ``False``; ``True`` for timm's own download; or a path to a local
            ``.safetensors`` / ``.pth`` state dict (loads with no network access).

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
                f" The paper's presets are {', '.join(PRESETS)}."
            )
        self.name, self.output_stride = name, output_stride
        try:
            self.body = timm.create_model(
                name,
                features_only=True,
                out_indices=4,  # an int means "the last four levels": the four stages
                output_stride=output_stride,
                pretrained=pretrained is True,
            )
        except (TypeError, RuntimeError, AssertionError) as err:
            raise UsageError(
                f"Backbone {name!r} cannot be built with features_only=True and "
                f"output_stride={output_stride} ({err}). Pick a timm CNN that supports both, "
                f"e.g. one of {', '.join(PRESETS)} or resnet18d."
            ) from err
        self.channels: list[int] = list(self.body.feature_info.channels())
        if len(self.channels) != 4:
            raise UsageError(
                f"Backbone {name!r} exposes {len(self.channels)} stages; SANet needs 4."
            )
        self.reductions: list[int] = list(self.body.feature_info.reduction())
        if isinstance(pretrained, (str, Path)):
            load_backbone_weights(self.body, pretrained)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.body(x)


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


def load_backbone_weights(body: nn.Module, path: str | Path) -> None:
    """Load a local weights file into a features-only timm model.

    Classifier keys (``fc.*`` ...) are dropped silently; wrapper prefixes (``module.``,
    ``backbone.``) are stripped. Missing backbone keys are an error: the file is for another
    architecture. Other unexpected keys are logged.
    """
    state = read_state_dict(path)
    own = body.state_dict()
    for prefix in _WRAPPER_PREFIXES:
        if state and own and not (state.keys() & own.keys()):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith(_CLASSIFIER_PREFIXES) or k in own}
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    if missing:
        raise UsageError(
            f"Backbone weights {str(path)!r} lack {len(missing)} of the model's "
            f"{len(own)} tensors (first: {missing[:5]}). Is the file for another architecture? "
            f"Unexpected keys in the file: {unexpected[:5]}."
        )
    shapes = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if shapes:
        k = shapes[0]
        raise UsageError(
            f"Backbone weights {str(path)!r} have {len(shapes)} tensors of the wrong shape, "
            f"e.g. {k!r}: file {tuple(state[k].shape)}, model {tuple(own[k].shape)}."
        )
    if unexpected:
        logger.warning(
            "Ignoring %d unexpected keys in %s: %s", len(unexpected), path, unexpected[:5]
        )
    body.load_state_dict({k: state[k] for k in own}, strict=True)
    logger.info("Loaded backbone weights from %s (%d tensors)", path, len(own))
