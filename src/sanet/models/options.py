"""The options of a model's head, in one object passed whole from a recipe to the layers.

``ModelOptions`` holds every head option of every model; each model kind uses the fields its
entry in ``segmentation.MODEL_KINDS`` lists (so one recipe serves SANet, its SE ablation and the
FCN baseline in ``sanet compare``) and stores exactly those in its ``config.json``. The field
names are the recipe keys (``model.attn_act`` ...) and the ``config.json`` keys.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, get_args

from sanet.errors import UsageError, suggest

Gate = Literal["logsigmoid", "sigmoid"]
Block = Literal["sa", "se"]
HeadInit = Literal["default", "kaiming"]
AttnAct = Literal["relu", "sigmoid"]
UpMode = Literal["nearest", "bilinear"]
Combine = Literal["eq4", "residual"]

_CHOICES: dict[str, Any] = {
    "gate": Gate,
    "attn_act": AttnAct,
    "upsample": UpMode,
    "attn_combine": Combine,
    "head_init": HeadInit,
}


@dataclass(frozen=True)
class ModelOptions:
    """Head options (docs/paper-fidelity.md gives the reason for each default).

    Attributes:
        gate: how the image-level class presence gates the mask (Fig. 3): ``"logsigmoid"``
            ``D = M + log σ(c)`` or ``"sigmoid"`` ``D = M ⊙ σ(c)``. SANet only.
        attn_act: σ of the SA attention branch (Eq. 3): ``"relu"`` (the last ReLU of
            ``F_attn``, as the paper's code) or ``"sigmoid"``. SA heads only.
        upsample: ``Up`` of Eq. 3, to ``X_res``'s exact size: ``"nearest"`` or ``"bilinear"``.
            SA heads only.
        attn_combine: ``"eq4"`` ``X_attn ⊙ X_res + X_attn`` or ``"residual"``
            ``(1 + X_attn) ⊙ X_res``. SA heads only.
        fuse_channels: channels of the fused feature F (512, Fig. 3). SANet only.
        dropout: dropout before the classifier (0.1). All models.
        head_init: ``"default"`` (PyTorch's layer defaults) or ``"kaiming"``. All models.
    """

    gate: Gate = "logsigmoid"
    attn_act: AttnAct = "relu"
    upsample: UpMode = "nearest"
    attn_combine: Combine = "eq4"
    fuse_channels: int = 512
    dropout: float = 0.1
    head_init: HeadInit = "default"

    def __post_init__(self) -> None:
        for name, choices in _CHOICES.items():
            value = getattr(self, name)
            if value not in get_args(choices):
                raise UsageError(
                    f"model option {name} must be one of {list(get_args(choices))}, got {value!r}."
                )
        if not isinstance(self.fuse_channels, int) or self.fuse_channels < 1:
            raise UsageError(f"fuse_channels must be a positive int, got {self.fuse_channels!r}.")
        if not 0 <= self.dropout < 1:
            raise UsageError(f"dropout must be in [0, 1), got {self.dropout!r}.")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_mapping(
        cls, values: dict[str, Any], allowed: tuple[str, ...] | None = None, model: str = ""
    ) -> ModelOptions:
        """Options from ``values``; a key outside ``allowed`` (the fields model ``model`` uses;
        default: every field) is refused, naming the closest one."""
        allowed = cls.names() if allowed is None else allowed
        for key in values:
            if key not in allowed:
                raise UsageError(
                    f"Model {model or 'options'!r} has no option {key!r}; it takes "
                    f"{', '.join(allowed)}.{suggest(key, allowed)}"
                )
        return cls(**values)

    def subset(self, names: tuple[str, ...]) -> dict[str, Any]:
        """``{name: value}`` of the fields ``names`` (what a model kind stores)."""
        return {name: getattr(self, name) for name in names}
