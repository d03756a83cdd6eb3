"""SA and SE blocks against references built from plain tensor ops (Eq. 3–4, Fig. 2)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sanet.models import SqueezeAttention, SqueezeExcitation
from sanet.models.sa import HalfAvgPool


def _conv_bn_ref(x: torch.Tensor, seq: torch.nn.Sequential) -> torch.Tensor:
    conv, bn = seq[0], seq[1]
    y = F.conv2d(x, conv.weight, padding=1)
    # eval-mode BN by hand: (y − μ) / sqrt(σ² + ε) · γ + β
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return (y - bn.running_mean[:, None, None]) * scale[:, None, None] + bn.bias[:, None, None]


def _conv_bn_relu_ref(x: torch.Tensor, seq: torch.nn.Sequential) -> torch.Tensor:
    return _conv_bn_ref(x, seq).clamp(min=0)


def _bilinear_ref(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Bilinear resizing by hand with half-pixel centres (``align_corners=False``): output
    pixel i samples input position (i + 0.5)·in/out − 0.5, clamped at 0, between its two
    neighbours (the last one repeated at the border)."""

    def taps(out_size: int, in_size: int) -> tuple[list[int], list[int], torch.Tensor]:
        pos = [max(0.0, (i + 0.5) * in_size / out_size - 0.5) for i in range(out_size)]
        lo = [min(int(p), in_size - 1) for p in pos]
        hi = [min(i + 1, in_size - 1) for i in lo]
        frac = torch.tensor([p - i for p, i in zip(pos, lo, strict=True)], dtype=x.dtype)
        return lo, hi, frac

    r0, r1, fy = taps(h, x.shape[-2])
    c0, c1, fx = taps(w, x.shape[-1])
    rows = x[..., r0, :] * (1 - fy)[:, None] + x[..., r1, :] * fy[:, None]
    return rows[..., c0] * (1 - fx) + rows[..., c1] * fx


def _ceil_pool_reference(x: torch.Tensor) -> torch.Tensor:
    """APool with ceil mode by hand: zero-pad to even size, sum each 2×2 window, divide by the
    number of its pixels inside the image (2 × 2, or 1 in the last row/column of an odd size)."""
    h, w = x.shape[-2:]
    hp, wp = (h + 1) // 2, (w + 1) // 2
    padded = F.pad(x, (0, 2 * wp - w, 0, 2 * hp - h))
    sums = padded.unflatten(-2, (hp, 2)).unflatten(-1, (wp, 2)).sum(dim=(-3, -1))
    rows, cols = torch.full((hp,), 2.0), torch.full((wp,), 2.0)
    rows[-1], cols[-1] = 2 - h % 2, 2 - w % 2
    return sums / (rows[:, None] * cols[None, :]).to(x.dtype)


def _sa_reference(sa: SqueezeAttention, x: torch.Tensor) -> torch.Tensor:
    """Eq. 3–4 by hand: σ is the last ReLU of F_attn, or a sigmoid *in its place*; Up is
    nearest (index arithmetic) or bilinear (half-pixel centres) to X_res's exact size."""
    h, w = x.shape[-2:]
    main = _conv_bn_relu_ref(_conv_bn_relu_ref(x, sa.main[0]), sa.main[1])
    pooled = _ceil_pool_reference(x)
    hp, wp = pooled.shape[-2:]
    hidden = _conv_bn_relu_ref(pooled, sa.attn[0])
    last = _conv_bn_ref(hidden, sa.attn[1])
    attn = torch.sigmoid(last) if sa.attn_act == "sigmoid" else last.clamp(min=0)
    if sa.upsample == "bilinear":
        attn = _bilinear_ref(attn, h, w)
    else:  # nearest: output row i reads input row floor(i · hp / h)
        rows = torch.div(torch.arange(h) * hp, h, rounding_mode="floor")
        cols = torch.div(torch.arange(w) * wp, w, rounding_mode="floor")
        attn = attn[..., rows, :][..., cols]
    return attn * main + attn


def _randomise_bn(module: torch.nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)


@pytest.mark.parametrize("size", [(45, 45), (65, 97), (8, 8)])
def test_sa_matches_hand_built_reference(size: tuple[int, int]) -> None:
    sa = SqueezeAttention(6, 4).eval()
    _randomise_bn(sa)
    x = torch.randn(2, 6, *size)
    out, attn, main = sa(x, return_parts=True)
    assert out.shape == (2, 4, *size)
    torch.testing.assert_close(out, attn * (main + 1))  # Eq. 4 from the returned parts
    torch.testing.assert_close(out, _sa_reference(sa, x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(sa(x), out)


@pytest.mark.parametrize(
    ("attn_act", "upsample"),
    [("sigmoid", "nearest"), ("relu", "bilinear"), ("sigmoid", "bilinear")],
)
@pytest.mark.parametrize("size", [(33, 31), (45, 45)])
def test_sa_options_match_the_hand_built_reference(attn_act, upsample, size) -> None:
    """The demo's SA (sigmoid attention, issue 13) and bilinear Up, value by value."""
    sa = SqueezeAttention(6, 4, attn_act=attn_act, upsample=upsample).eval()
    _randomise_bn(sa)
    x = torch.randn(2, 6, *size)
    out, attn, _ = sa(x, return_parts=True)
    torch.testing.assert_close(out, _sa_reference(sa, x), rtol=1e-4, atol=1e-5)
    if attn_act == "sigmoid":  # a gate in (0, 1) that goes below 1/2: no ReLU before σ
        assert attn.min() > 0 and attn.max() < 1 and attn.min() < 0.5


def test_sa_options() -> None:
    x = torch.randn(1, 4, 33, 31)
    sig = SqueezeAttention(4, 8, attn_act="sigmoid", upsample="bilinear").eval()
    out, attn, main = sig(x, return_parts=True)
    assert out.shape == (1, 8, 33, 31)
    torch.testing.assert_close(out, attn * main + attn)
    with pytest.raises(ValueError, match="attn_act"):
        SqueezeAttention(4, 8, attn_act="tanh")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="upsample"):
        SqueezeAttention(4, 8, upsample="bicubic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="combine"):
        SqueezeAttention(4, 8, combine="sum")  # type: ignore[arg-type]


def test_sa_residual_combine_passes_the_main_branch() -> None:
    sa = SqueezeAttention(6, 4, combine="residual").eval()
    _randomise_bn(sa)
    x = torch.randn(2, 6, 45, 45)
    out, attn, main = sa(x, return_parts=True)
    torch.testing.assert_close(out, main * (1 + attn))  # (1 + X_attn) ⊙ X_res
    eq4 = SqueezeAttention(6, 4).eval()
    eq4.load_state_dict(sa.state_dict())
    torch.testing.assert_close(eq4(x), attn * (main + 1))  # same weights, Eq. 4
    dead = attn == 0  # where the ReLU attention is 0, Eq. 4 outputs 0 and "residual" X_res
    assert dead.any() and torch.equal(out[dead], main[dead])


def test_se_block_rescales_channels() -> None:
    se = SqueezeExcitation(8, 4).eval()
    x = torch.randn(2, 8, 9, 11)
    out, gate, main = se(x, return_parts=True)
    assert out.shape == gate.shape == main.shape == (2, 4, 9, 11)
    # gate = sigmoid(W2 ReLU(W1 GAP(main))) computed by hand from the weights
    w1, b1 = se.fc[0].weight.flatten(1), se.fc[0].bias
    w2, b2 = se.fc[2].weight.flatten(1), se.fc[2].bias
    g = torch.sigmoid((w1 @ main.mean(dim=(2, 3)).T + b1[:, None]).clamp(min=0).T @ w2.T + b2)
    torch.testing.assert_close(out, main * g[:, :, None, None])
    torch.testing.assert_close(gate[:, :, 0, 0], g)


@pytest.mark.parametrize("size", [(1, 1), (5, 5), (63, 63), (65, 97), (64, 64), (2, 7)])
def test_half_pool_is_ceil_mode_average_pooling(size: tuple[int, int]) -> None:
    # Replicate-pad + 2×2 mean against windows clipped by hand and against PyTorch's own ceil
    # mode (which divides a clipped window by its in-bounds count), values and gradients.
    x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
    pooled = HalfAvgPool()(x)
    assert pooled.shape == (2, 3, (size[0] + 1) // 2, (size[1] + 1) // 2)
    torch.testing.assert_close(pooled, _ceil_pool_reference(x))
    torch.testing.assert_close(pooled, F.avg_pool2d(x, 2, 2, ceil_mode=True))
    grad_out = torch.randn_like(pooled)
    (ours,) = torch.autograd.grad(pooled, x, grad_out)
    (ref,) = torch.autograd.grad(_ceil_pool_reference(x), x, grad_out)
    torch.testing.assert_close(ours, ref)
    if size == (5, 5):  # by hand: the corner pixel is alone in its window, gets all of its grad
        assert ours[0, 0, 4, 4] == grad_out[0, 0, 2, 2]
        assert ours[0, 0, 4, 0] == grad_out[0, 0, 2, 0] / 2  # a 1×2 window: half each


@pytest.mark.parametrize(
    "size",
    [
        (5, 5),
        pytest.param((63, 63), marks=pytest.mark.slow),
        pytest.param((65, 97), marks=pytest.mark.slow),
    ],
)
def test_compiled_sa_matches_eager_at_odd_sizes(size: tuple[int, int]) -> None:
    # The inductor backward of avg_pool2d(ceil_mode=True) is wrong at odd sizes (issue 11);
    # SA's pooling must give compiled forward and gradients equal to eager ones.
    torch.manual_seed(0)  # float64: what is left is the bug, not reduction-order rounding
    sa = SqueezeAttention(4, 3).train().double()
    x = torch.randn(2, 4, *size, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(2, 3, *size, dtype=torch.float64)

    def grads(module: torch.nn.Module) -> tuple[torch.Tensor, ...]:
        out = module(x)
        return (out, *torch.autograd.grad(out, [x, *sa.parameters()], grad_out))

    eager = grads(sa)
    compiled = grads(torch.compile(sa, dynamic=False))
    for a, b in zip(eager, compiled, strict=True):
        torch.testing.assert_close(b, a)
