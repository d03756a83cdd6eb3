"""SANet's head (Fig. 3) against a forward written by hand from the same weights.

The SA blocks themselves are checked against plain tensor ops in ``test_sa.py``; here they are
black boxes and the test is about the wiring around them: each stage resized (bilinear) to the
deepest stage's size, concatenated in stage order, 3×3 conv-BN-ReLU to the fused width, no
dropout in eval, ``M = conv1×1(F)``, ``c = Linear(GAP(F))``, and the gate that makes D. The gates
are computed in float64 numpy from their formulas (``log σ(c) = −log(1 + e^(−c))``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sanet
from conftest import TINY_BACKBONE
from sanet.models.heads import SANetHead
from sanet.models.options import ModelOptions

K = 5
IN_CHANNELS = [8, 12, 16, 20]  # distinct C_i/4 (2, 3, 4, 5): a wrong concat order shows
SIZES = [(17, 25), (9, 13), (7, 10), (5, 7)]  # every stage but the last needs resizing


def _randomise_bn(module: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(11)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
            m.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(c, generator=g))
            m.bias.data.copy_(0.4 * torch.rand(c, generator=g) - 0.2)


def _bn_eval(y: torch.Tensor, bn: torch.nn.BatchNorm2d) -> torch.Tensor:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return (y - bn.running_mean[:, None, None]) * scale[:, None, None] + bn.bias[:, None, None]


def head_by_hand(head: SANetHead, feats: list[torch.Tensor]) -> dict[str, np.ndarray]:
    """Fig. 3 from the head's weights: returns M, c and both gated D's as float64 arrays."""
    h, w = feats[-1].shape[-2:]
    stages = []
    for block, f in zip(head.heads, feats, strict=True):
        out = block(f)  # SA(C_i → C_i/4), verified in test_sa.py
        stages.append(F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False))
    x = torch.cat(stages, dim=1)  # stage 1 first
    conv, bn = head.fuse[0], head.fuse[1]
    fused = _bn_eval(F.conv2d(x, conv.weight, padding=1), bn).clamp(min=0)  # (N, 512, h, w)
    mask = F.conv2d(fused, head.mask.weight, head.mask.bias)  # M: (N, K, h, w)
    gap = fused.mean(dim=(2, 3))  # (N, 512)
    cat = gap @ head.cat.weight.T + head.cat.bias  # c: (N, K)
    m, c = mask.double().numpy(), cat.double().numpy()
    log_sig = -np.log1p(np.exp(-c))[:, :, None, None]
    sig = (1 / (1 + np.exp(-c)))[:, :, None, None]
    return {"mask": m, "cat": c, "logsigmoid": m + log_sig, "sigmoid": m * sig}


@pytest.mark.parametrize("gate", ["logsigmoid", "sigmoid"])
def test_head_matches_the_hand_written_forward(gate: str) -> None:
    torch.manual_seed(0)
    head = SANetHead(IN_CHANNELS, K, options=ModelOptions(fuse_channels=24, dropout=0.5, gate=gate))
    _randomise_bn(head)
    head.eval()
    feats = [torch.randn(2, c, *s) for c, s in zip(IN_CHANNELS, SIZES, strict=True)]
    with torch.no_grad():
        out = head(feats)
        want = head_by_hand(head, feats)
    assert out["mask"].shape == (2, K, *SIZES[-1]) and out["cat"].shape == (2, K)
    np.testing.assert_allclose(out["mask"].numpy(), want["mask"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["cat"].numpy(), want["cat"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["dense"].numpy(), want[gate], rtol=1e-4, atol=1e-5)
    other = "sigmoid" if gate == "logsigmoid" else "logsigmoid"
    assert not np.allclose(out["dense"].numpy(), want[other], atol=1e-3)  # the gates differ


def test_fused_width_is_the_constructor_argument_and_512_by_default() -> None:
    head = SANetHead(IN_CHANNELS, K)
    assert head.fuse[0].in_channels == sum(c // 4 for c in IN_CHANNELS)
    assert head.fuse[0].out_channels == head.mask.in_channels == head.cat.in_features == 512
    assert head.fuse[0].kernel_size == (3, 3) and head.mask.kernel_size == (1, 1)


def test_model_upsamples_the_heads_logits_to_the_input() -> None:
    """``out`` is D and (train mode) ``mask`` is M, bilinearly resized to the input; ``cat`` is c."""
    model = sanet.build_model("sanet", backbone=TINY_BACKBONE, num_classes=K)
    x = torch.randn(2, 3, 65, 97)

    def up(t: torch.Tensor) -> torch.Tensor:
        return F.interpolate(t, size=(65, 97), mode="bilinear", align_corners=False)

    model.eval()
    with torch.no_grad():
        head = model.head(model.backbone(x))
        torch.testing.assert_close(model(x)["out"], up(head["dense"]))
    model.train()  # batch statistics and dropout: replay the same dropout draw for both passes
    with torch.no_grad():
        torch.manual_seed(3)
        out = model(x)
        torch.manual_seed(3)
        head = model.head(model.backbone(x))
    torch.testing.assert_close(out["out"], up(head["dense"]))
    torch.testing.assert_close(out["mask"], up(head["mask"]))
    torch.testing.assert_close(out["cat"], head["cat"])
    assert not torch.allclose(out["mask"], out["out"])  # M and D are different tensors


@pytest.mark.parametrize("size", [(5, 7), (9, 13)])
def test_fcn_head_matches_a_forward_by_hand(size: tuple[int, int]) -> None:
    """The baseline `sanet compare` measures SANet against (Fig. 5; torchvision's FCNHead):
    3×3 conv (no bias) → BN → ReLU to C_4/4 channels, dropout (off in eval), 1×1 conv to K."""
    from sanet.models.heads import FCNHead

    head = FCNHead(IN_CHANNELS, K, options=ModelOptions(dropout=0.5)).eval()
    _randomise_bn(head)
    feats = [torch.randn(2, c, *s) for c, s in zip(IN_CHANNELS, [*SIZES[:3], size], strict=True)]
    (conv, bn, _), classifier = head.block[0], head.block[2]
    assert conv.weight.shape == (IN_CHANNELS[-1] // 4, IN_CHANNELS[-1], 3, 3) and conv.bias is None
    with torch.no_grad():
        hidden = _bn_eval(F.conv2d(feats[-1], conv.weight, padding=1), bn).clamp(min=0)
    want = (
        np.einsum(
            "nchw,kc->nkhw",
            hidden.double().numpy(),
            classifier.weight[:, :, 0, 0].double().detach().numpy(),
        )
        + classifier.bias.double().detach().numpy()[:, None, None]
    )
    with torch.no_grad():
        got = head(feats)["dense"]
    assert got.shape == (2, K, *size)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5)
