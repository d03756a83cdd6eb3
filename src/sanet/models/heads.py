"""SANet's multi-stage head (paper Fig. 3) and the FCN baseline head (Fig. 5).

Heads take the backbone's list of stage features and return logits at feature resolution; the
model upsamples them to the input size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx.experimental.symbolic_shapes import statically_known_true

from sanet.errors import UsageError
from sanet.models.options import Block, HeadInit, ModelOptions
from sanet.models.resize import resize_bilinear
from sanet.models.sa import SqueezeAttention, SqueezeExcitation, conv_bn_relu


def init_head(head: nn.Module, classifiers: list[nn.Module], scheme: HeadInit) -> None:
    """Initialise a head's layers (the backbone keeps timm's own initialisation).

    ``"default"`` keeps PyTorch's layer defaults (what the paper's code base did).
    ``"kaiming"``: convolutions ``kaiming_normal_(fan_out, relu)`` as in torchvision/timm
    ResNets, BN γ = 1 and β = 0, and the final classifiers ``N(0, 0.01)`` with zero bias so
    that every class starts equally likely.
    """
    if scheme not in ("default", "kaiming"):
        raise UsageError(f"head_init must be 'default' or 'kaiming', got {scheme!r}")
    if scheme == "default":
        return
    for m in head.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in classifiers:
        nn.init.normal_(m.weight, std=0.01)
        nn.init.zeros_(m.bias)


class SANetHead(nn.Module):
    """Four SA heads, multi-stage fusion, and the mask / categorical / dense outputs (Fig. 3).

    Args:
        in_channels: channels of the four backbone stages.
        num_classes: K.
        block: ``"sa"`` (SANet) or ``"se"`` (the SE ablation of Table 3).
        options: ``fuse_channels`` (F's channels), ``dropout`` (on F), ``gate`` (how the
            image-level class presence gates the mask: ``D = M + log σ(c)`` or ``M ⊙ σ(c)``),
            ``head_init`` (:func:`init_head`) and, for SA blocks, ``attn_act``, ``upsample``
            and ``attn_combine`` (:class:`SqueezeAttention`'s ``combine``).

    Shape:
        - feats: four tensors ``(N, C_i, H_i, W_i)``; the last has the smallest size ``(h, w)``.
        - output: ``{"mask": (N, K, h, w), "cat": (N, K), "dense": (N, K, h, w)}``.
    """

    def __init__(
        self,
        in_channels: list[int],
        num_classes: int,
        *,
        block: Block = "sa",
        options: ModelOptions | None = None,
    ) -> None:
        super().__init__()
        o = options or ModelOptions()
        if block == "sa":
            blocks = [
                SqueezeAttention(
                    c, c // 4, attn_act=o.attn_act, upsample=o.upsample, combine=o.attn_combine
                )
                for c in in_channels
            ]
        elif block == "se":
            blocks = [SqueezeExcitation(c, c // 4) for c in in_channels]
        else:
            raise UsageError(f"block must be 'sa' or 'se', got {block!r}")
        self.gate = o.gate
        self.heads = nn.ModuleList(blocks)  # one SA(C_i → C_i/4) per stage
        self.fuse = conv_bn_relu(sum(c // 4 for c in in_channels), o.fuse_channels)
        self.dropout = nn.Dropout2d(o.dropout)
        self.mask = nn.Conv2d(o.fuse_channels, num_classes, 1)  # "each channel is one class's mask"
        self.cat = nn.Linear(o.fuse_channels, num_classes)  # image-level class presence
        init_head(self, [self.mask, self.cat], o.head_init)

    def fused(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """The fused feature F before dropout: ``(N, fuse_channels, h, w)``."""
        size = feats[-1].shape[-2:]  # the deepest stage's resolution
        outs = [head(f) for head, f in zip(self.heads, feats, strict=True)]
        outs = [o if _same_size(o.shape[-2:], size) else _resize(o, size) for o in outs]
        return self.fuse(torch.cat(outs, dim=1))

    def forward(self, feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        f = self.dropout(self.fused(feats))  # F: (N, 512, h, w)
        mask = self.mask(f)  # M: (N, K, h, w)
        cat = self.cat(f.mean(dim=(2, 3)))  # c: (N, K)
        if self.gate == "logsigmoid":
            # softmax(M + log σ(c)) ∝ softmax(M) · σ(c): gates class probabilities, stable in fp16.
            dense = mask + F.logsigmoid(cat)[:, :, None, None]
        else:
            dense = mask * torch.sigmoid(cat)[:, :, None, None]
        return {"mask": mask, "cat": cat, "dense": dense}

    def parts(self, feats: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per stage head, its ``(attn, main)`` channel maps (for Fig. 6)."""
        return [head(f, return_parts=True)[1:] for head, f in zip(self.heads, feats, strict=True)]


class FCNHead(nn.Module):
    """The dilated-FCN baseline head on the last stage (Fig. 5; torchvision's ``FCNHead``).

    ``options``: ``dropout`` and ``head_init``; the others belong to SANet's head.

    Shape:
        - feats: four tensors; only the last ``(N, C_4, h, w)`` is used.
        - output: ``{"dense": (N, K, h, w)}``.
    """

    def __init__(
        self, in_channels: list[int], num_classes: int, *, options: ModelOptions | None = None
    ) -> None:
        super().__init__()
        o = options or ModelOptions()
        inter = in_channels[-1] // 4
        self.block = nn.Sequential(
            conv_bn_relu(in_channels[-1], inter),  # 3×3 conv-BN-ReLU, C_4 → C_4/4
            nn.Dropout2d(o.dropout),
            nn.Conv2d(inter, num_classes, 1),
        )
        init_head(self, [self.block[-1]], o.head_init)

    def forward(self, feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"dense": self.block(feats[-1])}


def _same_size(a: torch.Size, b: torch.Size) -> bool:
    """``a == b`` where that is known without a guard: for concrete sizes, always; in an export
    with symbolic H, W only for the same expression (a ViT's ``⌈2H/7⌉`` and ``⌈H/7⌉`` differ for
    every H ≥ 32, but the exporter cannot prove it: resizing to the same size is exact anyway)."""
    return all(statically_known_true(x == y) for x, y in zip(a, b, strict=True))


def _resize(x: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    # bilinear, align_corners=False: by matrix products where that is faster (models/resize.py)
    return resize_bilinear(x, size)
