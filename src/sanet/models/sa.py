"""Squeeze-and-Attention (paper Fig. 2c, Eq. 3–4) and the SE block it is compared with (Table 3).

Both blocks map ``(N, C_in, H, W) -> (N, C_out, H, W)`` so that the SANet head can swap one for
the other in the SE-vs-SA ablation.
"""

from __future__ import annotations

from typing import get_args

import torch
import torch.nn.functional as F
from torch import nn

from sanet.errors import UsageError
from sanet.models.options import AttnAct, Combine, UpMode


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Sequential:
    """``conv(k×k, no bias) → BN → ReLU``; the bias is off because BN's shift replaces it."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class HalfAvgPool(nn.Module):
    """APool of Eq. 3: 2×2 average pooling, stride 2, ceil mode (odd sizes keep their last
    row/column), written so that ``torch.compile`` differentiates it correctly.

    Ceil-mode pooling averages a window clipped at the border over its in-bounds pixels.
    Replicating the last row/column to an even size and taking plain 2×2 means gives exactly
    that (a clipped window ``[a, b]`` becomes ``[a, b, a, b]``, whose mean is ``(a + b) / 2``),
    and backward sends each replica's gradient back to its source. We do not call
    ``avg_pool2d(ceil_mode=True)`` itself: its compiled backward (torch 2.14, inductor) gives
    wrong gradients at odd sizes (issue 11; reproduced with the CPU backend, exact at even
    sizes), and a 520 crop reaches odd sizes at output stride 8 (65×65). The replication is an
    index gather rather than ``F.pad(mode="replicate")``, whose compiled backward fails a
    stride check on CPU. Even inputs skip the gather in eager mode; when compiling or tracing
    it is always applied (it is the identity at even sizes), so no graph depends on parity.

    Shape: ``(N, C, H, W)`` → ``(N, C, ⌈H/2⌉, ⌈W/2⌉)``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if torch.compiler.is_compiling() or torch.jit.is_tracing() or h % 2 or w % 2:
            # rows 0..h-1 then row h-1 again when h is odd (likewise columns)
            rows = torch.arange(h + h % 2, device=x.device).clamp(max=h - 1)
            cols = torch.arange(w + w % 2, device=x.device).clamp(max=w - 1)
            x = x.index_select(-2, rows).index_select(-1, cols)  # (N, C, 2⌈H/2⌉, 2⌈W/2⌉)
        return F.avg_pool2d(x, kernel_size=2, stride=2)


def _two_convs(in_channels: int, out_channels: int) -> nn.Sequential:
    # F_main and F_attn: in→out then out→out (docs/paper-fidelity.md, "SA branches").
    return nn.Sequential(
        conv_bn_relu(in_channels, out_channels), conv_bn_relu(out_channels, out_channels)
    )


class SqueezeAttention(nn.Module):
    """The SA module: ``X_out = X_attn ⊙ X_res + X_attn`` (Eq. 4).

    ``X_res = F_main(X_in)`` is the ordinary conv branch; ``X_attn = Up(σ(F_attn(APool(X_in))))``
    is the "not fully squeezed" attention branch computed at half resolution.

    Args:
        in_channels: channels of ``X_in``.
        out_channels: channels of ``X_out`` (SANet uses ``in_channels // 4``).
        attn_act: σ. ``"relu"`` (default) keeps the last ReLU of ``F_attn`` as σ, as the
            paper's code did; ``"sigmoid"`` replaces it with a sigmoid gate in (0, 1).
        upsample: ``"nearest"`` (default) or ``"bilinear"``; always to ``X_res``'s exact size.
        combine: ``"eq4"`` (default) is the paper's ``X_attn ⊙ X_res + X_attn``; ``"residual"``
            is ``(1 + X_attn) ⊙ X_res``, which passes ``X_res`` (and its gradient) through where
            the ReLU attention is 0 — a documented deviation (docs/paper-fidelity.md).

    Shape:
        - x: ``(N, in_channels, H, W)``, any ``H, W ≥ 1`` (odd sizes work: the pool uses ceil mode).
        - output: ``(N, out_channels, H, W)``; with ``return_parts=True`` a tuple
          ``(out, attn, main)`` of three such tensors.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        attn_act: AttnAct = "relu",
        upsample: UpMode = "nearest",
        combine: Combine = "eq4",
    ) -> None:
        super().__init__()
        for name, value, choices in (
            ("attn_act", attn_act, AttnAct),
            ("upsample", upsample, UpMode),
            ("combine", combine, Combine),
        ):
            if value not in get_args(choices):
                raise UsageError(f"{name} must be one of {list(get_args(choices))}, got {value!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.attn_act, self.upsample, self.combine = attn_act, upsample, combine
        self.main = _two_convs(in_channels, out_channels)
        self.attn = _two_convs(in_channels, out_channels)
        if attn_act == "sigmoid":
            self.attn[-1][-1] = nn.Sigmoid()  # σ replaces the last ReLU of F_attn
        # APool: kernel 2, stride 2, ceil mode so that odd sizes keep their last row/column.
        self.pool = HalfAvgPool()

    def forward(
        self, x: torch.Tensor, return_parts: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        main = self.main(x)  # X_res: (N, C_out, H, W)
        attn = self.attn(self.pool(x))  # σ(F_attn(APool(X_in))): (N, C_out, ⌈H/2⌉, ⌈W/2⌉)
        # Up to X_res's exact size, never a fixed ×2 (⌈H/2⌉·2 ≠ H for odd H).
        if self.upsample == "nearest":
            attn = F.interpolate(attn, size=main.shape[-2:], mode="nearest")
        else:
            attn = F.interpolate(attn, size=main.shape[-2:], mode="bilinear", align_corners=False)
        # Eq. 4: X_attn ⊙ X_res + X_attn; "residual": (1 + X_attn) ⊙ X_res (X_res passes where
        # X_attn = 0, so F_main keeps its gradient there)
        out = attn * main + attn if self.combine == "eq4" else main + attn * main
        if return_parts:
            return out, attn, main
        return out

    def extra_repr(self) -> str:
        return f"attn_act={self.attn_act!r}, upsample={self.upsample!r}, combine={self.combine!r}"


class SqueezeExcitation(nn.Module):
    """SE counterpart of :class:`SqueezeAttention` for the SE-vs-SA ablation (Fig. 2b, Table 3).

    ``X_res = F_main(X_in)`` as in SA; the squeeze is *full* (global average pool) and the
    excitation ``s = sigmoid(W2 · ReLU(W1 · GAP(X_res)))`` rescales the channels:
    ``X_out = s ⊙ X_res``. The reduction ``r`` of ``W1`` is 16 as in SE-Net.

    Shape:
        - x: ``(N, in_channels, H, W)``
        - output: ``(N, out_channels, H, W)``; with ``return_parts=True``, ``(out, attn, main)``
          where ``attn`` is the channel gate broadcast to ``(N, out_channels, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        hidden = max(out_channels // reduction, 4)
        self.main = _two_convs(in_channels, out_channels)
        self.fc = nn.Sequential(
            nn.Conv2d(out_channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_channels, 1),
            nn.Sigmoid(),
        )

    def forward(
        self, x: torch.Tensor, return_parts: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        main = self.main(x)  # (N, C_out, H, W)
        gate = self.fc(main.mean(dim=(2, 3), keepdim=True))  # (N, C_out, 1, 1)
        out = main * gate
        if return_parts:
            return out, gate.expand_as(main), main
        return out
