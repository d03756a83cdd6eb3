"""Foundation ViTs (DINOv2, DeiT III, EVA-02 through timm) as SANet backbones.

A plain ViT has one scale: tokens on the patch grid (stride ``p``, 14 or 16). SANet's heads
take four stages (:mod:`sanet.models.backbone`'s contract), so the ViT path reads four evenly
spaced blocks (``forward_intermediates``; blocks 3, 6, 9, 12 of a 12-block ViT, as DPT, Ranftl
et al. 2021) and turns them into four maps with the *simple feature pyramid* of ViTDet (Li et
al., "Exploring Plain Vision Transformer Backbones for Object Detection", ECCV 2022): two
stride-2 deconvolutions (×4), one (×2), none (×1) or a stride-2 max-pool (×½) of the patch grid,
with ``C/4``, ``C/2``, ``C``, ``C`` channels. Which scale each stage takes follows the output
stride (:data:`SCALES`): at 32 it is ViTDet's own pyramid (strides 4, 8, 16, 32 for ``p = 16``);
at 8 (the paper's) the last three stages share the stride-``p/2`` grid where SANet fuses them,
as a dilated ResNet's do at stride 8 (docs/paper-fidelity.md, "ViT backbones").

Any input size: the image is padded (bottom and right, zeros) to a multiple of ``p``, the
position embeddings are resized to the padded grid (timm's ``dynamic_img_size``), and every map
is cropped back to ``⌈H/r_i⌉ × ⌈W/r_i⌉`` (the padding's positions dropped), as a CNN stage
of reduction ``r_i`` covers the image.
"""

from __future__ import annotations

from fractions import Fraction

import timm
import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn

from sanet.errors import UsageError

#: timm's modules of the ViT families read through ``forward_intermediates`` with dynamic image
#: sizes: ``vision_transformer`` (DINOv2 with and without registers, AugReg, CLIP ...),
#: ``deit`` (DeiT III) and ``eva`` (EVA-02).
VIT_MODULES: tuple[str, ...] = (
    "timm.models.vision_transformer",
    "timm.models.deit",
    "timm.models.eva",
)
#: Each stage's scale of the patch grid, by output stride (ViTDet's ×4, ×2, ×1, ×½ at 32).
SCALES: dict[int, tuple[Fraction, ...]] = {
    8: (Fraction(4), Fraction(2), Fraction(2), Fraction(2)),
    16: (Fraction(4), Fraction(2), Fraction(1), Fraction(1)),
    32: (Fraction(4), Fraction(2), Fraction(1), Fraction(1, 2)),
}
#: Example ViT names for messages.
VIT_EXAMPLES: tuple[str, ...] = (
    "vit_small_patch14_dinov2",
    "vit_base_patch14_reg4_dinov2",
    "deit3_base_patch16_224",
    "eva02_base_patch14_224",
)


def is_vit(name: str) -> bool:
    """Whether timm model ``name`` belongs to one of :data:`VIT_MODULES` (no model is built)."""
    try:
        module = timm.models.model_entrypoint(name).__module__
    except (RuntimeError, KeyError):
        return False
    return module in VIT_MODULES


def vit_patch_size(name: str) -> int | None:
    """The patch size of ViT ``name`` (``None`` for any other model), from a weightless build."""
    if not is_vit(name):
        return None
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    return int(model.patch_embed.patch_size[0])


def block_indices(depth: int) -> list[int]:
    """Four evenly spaced blocks ending at the last: ``[2, 5, 8, 11]`` of 12, ``[5, 11, 17, 23]``
    of 24 (DPT's choice, Ranftl et al. 2021)."""
    if depth < 4:
        raise UsageError(f"A ViT backbone needs at least 4 blocks (one per stage), got {depth}.")
    return [round(depth * (i + 1) / 4) - 1 for i in range(4)]


def create_vit(name: str, pretrained: bool = False, **kwargs: object) -> nn.Module:
    """timm's ViT ``name`` with dynamic image sizes, cut after its last block: no final norm
    and no classifier (their weights in a file are ignored when it loads)."""
    try:
        model = timm.create_model(name, pretrained=pretrained, dynamic_img_size=True, **kwargs)
    except TypeError as err:
        raise UsageError(
            f"timm's {name!r} cannot resize its position embeddings to the input "
            f"(dynamic_img_size: {err}). Pick another ViT, e.g. {VIT_EXAMPLES[0]}."
        ) from err
    patch = tuple(model.patch_embed.patch_size)
    if patch[0] != patch[1]:
        raise UsageError(f"ViT {name!r} has non-square patches {patch}; sanet needs square ones.")
    model.prune_intermediate_layers(block_indices(len(model.blocks)), prune_norm=True)
    return model


class SimpleFeaturePyramid(nn.Module):
    """Four ViT block outputs on the patch grid → four maps at the scales of :data:`SCALES`.

    Each stage: a LayerNorm over channels (the pruned ViT's final norm is not used), then a
    resampling of ViTDet's pyramid (Li et al. 2022, Sec. 3, Fig. 2c): ×4 = deconv 2×2/2 →
    LayerNorm → GELU → deconv 2×2/2 (``C → C/2 → C/4``), ×2 = deconv 2×2/2 (``C → C/2``), ×1 =
    identity, ×½ = max-pool 2×2/2 (ceil mode: odd grids keep their last row).

    Args:
        dim: the ViT's channels ``C`` (its ``embed_dim``).
        patch: the patch size ``p``.
        output_stride: 8, 16 or 32 (:data:`SCALES`).

    Attributes:
        channels: of each stage; ``reductions``: each stage's stride in pixels, ``p / scale``
        (``[3.5, 7, 7, 7]`` for ``p = 14`` at output stride 8).
    """

    def __init__(self, dim: int, patch: int, output_stride: int = 8) -> None:
        super().__init__()
        if dim % 4:
            raise UsageError(f"The ViT's embed_dim {dim} must be a multiple of 4 (C/4 channels).")
        self.patch, self.scales = patch, SCALES[output_stride]
        self.levels = nn.ModuleList(
            nn.Sequential(LayerNorm2d(dim), _resampler(dim, s)) for s in self.scales
        )
        self.channels: list[int] = [dim // int(s) if s >= 1 else dim for s in self.scales]
        self.reductions: list[float] = [float(patch / s) for s in self.scales]

    def forward(self, feats: list[torch.Tensor], size: tuple[int, int]) -> list[torch.Tensor]:
        """Shape: four ``(N, C, ⌈H/p⌉, ⌈W/p⌉)`` maps of the padded image and the image's
        ``(H, W)`` → four ``(N, channels[i], ⌈H/r_i⌉, ⌈W/r_i⌉)`` maps."""
        h, w = size
        outs = []
        for level, scale, f in zip(self.levels, self.scales, feats, strict=True):
            # ⌈H·scale/p⌉ in integers of one sign (the ONNX exporter's floor division of a
            # negative number truncates instead, measured)
            num, den = scale.numerator, self.patch * scale.denominator
            rows, cols = (h * num + den - 1) // den, (w * num + den - 1) // den
            outs.append(_crop(level(f), rows, cols))
        return outs


def vit_blocks(body: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The kept blocks' token maps of a :func:`create_vit` model, the image padded to a multiple
    of the patch size: ``(N, 3, H, W)`` → four ``(N, C, ⌈H/p⌉, ⌈W/p⌉)``."""
    p = int(body.patch_embed.patch_size[0])
    x = F.pad(x, (0, (p - x.shape[-1] % p) % p, 0, (p - x.shape[-2] % p) % p))
    indices = block_indices(len(body.blocks))  # the body ends at its last block: the same four
    return body.forward_intermediates(x, indices=indices, intermediates_only=True)


def _crop(x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """``x[..., :rows, :cols]`` as a gather: an exported graph keeps H and W symbolic (a slice
    would make the exporter prove ``rows ≤ x.shape[-2]``, which it cannot for these ceilings)."""
    x = x.index_select(-2, torch.arange(rows, device=x.device))
    return x.index_select(-1, torch.arange(cols, device=x.device))


def _resampler(dim: int, scale: Fraction) -> nn.Module:
    if scale == 4:
        return nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 2, 2, stride=2),
            LayerNorm2d(dim // 2),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2),
        )
    if scale == 2:
        return nn.ConvTranspose2d(dim, dim // 2, 2, stride=2)
    if scale == 1:
        return nn.Identity()
    return nn.MaxPool2d(2, stride=2, ceil_mode=True)


def layer_groups(body: nn.Module) -> list[list[nn.Parameter]]:
    """A ViT body's parameters from the input up, for layer-wise LR decay (BEiT, Bao et al.
    2022): ``[embeddings (patch, class/register tokens, positions), block 0, ..., block d-1,
    the rest]``."""
    depth = len(body.blocks)
    groups: list[list[nn.Parameter]] = [[] for _ in range(depth + 2)]
    for name, param in body.named_parameters():
        if name.startswith("blocks."):
            groups[int(name.split(".")[1]) + 1].append(param)
        elif name.startswith(("patch_embed.", "cls_token", "reg_token", "pos_embed")):
            groups[0].append(param)
        else:
            groups[-1].append(param)
    return groups
